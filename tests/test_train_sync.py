"""Between two logging steps the training loop reads no tensor back to the host.

A ``TorchDispatchMode`` records every aten op of a JaFR (double backward) run and flags host reads
(``aten._local_scalar_dense``, which ``.item()``, ``float()``, ``bool()`` and ``int()`` of a tensor go through,
plus ``aten.item`` / ``aten.is_nonzero`` / ``aten.equal``); ``Tensor.tolist``, ``.numpy`` and ``.cpu``, which on
CPU tensors read memory without dispatching, are wrapped to be counted too. Steps are told apart by the loop's
per-step generator seed. ``jk.freq_penalty`` is first replaced by the package's pure-torch reference penalty,
so the test measures the loop's own reads, then left as it is (the fused op of the default path).
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import jafr_kernels as jk
from jafr_kernels import reference
from jafr_kernels.train import TrainConfig, load_dataset, train_model
from jafr_kernels.train import loop

aten = torch.ops.aten
HOST_READS = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default, aten.equal.default}


class _Recorder(TorchDispatchMode):
    """Records (step, op) for every aten op and every wrapped host read."""

    def __init__(self):
        super().__init__()
        self.step = None
        self.ops, self.reads = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append((self.step, func))
        if func in HOST_READS:
            self.reads.append((self.step, str(func)))
        return func(*args, **(kwargs or {}))


def _sync_free_penalty(jac, cutoff=0.25, *, target="low", reduction="mean", formulation="ratio", **_):
    return reference.freq_penalty(jac, reference.as_band(cutoff), target=target, reduction=reduction)


def _run(tmp_path, monkeypatch, method="jafr", **kw):
    rec = _Recorder()
    generator = loop._step_generator

    def tagged_generator(seed, step, rank):
        rec.step = step  # 0-based index of the step being computed
        return generator(seed, step, rank)

    monkeypatch.setattr(loop, "_step_generator", tagged_generator)
    for name in ("tolist", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, _name=name, **k):
            rec.reads.append((rec.step, f"Tensor.{_name}"))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    fm = load_dataset("fashion_mnist")
    # 16 steps per epoch, logging at steps 4 and 8 (1-based): steps 5, 6, 7 lie between two logging steps
    cfg = TrainConfig(method=method, max_steps=8, batch_size=16, train_subset=256, log_every=4, ckpt_every=1000,
                      out_dir=str(tmp_path), progress=False, augment=False, **kw)
    with rec:
        result = train_model(cfg, train_set=fm)
    assert result.step == 8
    return rec


def _sync_free_penalty_and_grad(jac, cutoff=0.25, *, target="low", **_):
    leaf = jac.detach().requires_grad_(True)
    with torch.enable_grad():
        pen = _sync_free_penalty(leaf, cutoff, target=target)
    return pen.detach(), torch.autograd.grad(pen, leaf)[0]


@pytest.mark.parametrize("method,mode,kw", [
    ("jafr", "double_backward", {}), ("fgsm+jafr", "double_backward", {}), ("jafr", "finite_difference", {}),
    ("pgd+jafr", "finite_difference", {"pgd_steps": 2}), ("jafr", "finite_difference", {"jafr_every": 2}),
    ("fgsm+jafr", "finite_difference", {"jafr_fraction": 0.25}),
])
def test_no_host_read_between_logging_steps(tmp_path, monkeypatch, method, mode, kw):
    monkeypatch.setattr(jk, "freq_penalty", _sync_free_penalty)
    monkeypatch.setattr(jk, "freq_penalty_and_grad", _sync_free_penalty_and_grad)
    rec = _run(tmp_path, monkeypatch, method, jacobian_mode=mode, **kw)
    window = {4, 5, 6}  # 0-based steps 4..6 are the 1-based steps 5..7
    ops_in_window = [op for step, op in rec.ops if step in window]
    assert len(ops_in_window) > 100  # the steps were recorded
    assert aten._fft_r2c.default in ops_in_window  # ... penalty included
    assert [r for r in rec.reads if r[0] in window] == []
    # the logging steps (1-based 4 and 8) do read the metrics back, once each
    assert {step for step, _ in rec.reads if step is not None} >= {3, 7}


@pytest.mark.parametrize("mode", ["double_backward", "finite_difference"])
def test_no_host_read_between_logging_steps_with_the_real_penalty(tmp_path, monkeypatch, mode):
    """The same with the library's own default penalty (the fused op, no host read on its default path)."""
    rec = _run(tmp_path, monkeypatch, jacobian_mode=mode)
    assert [r for r in rec.reads if r[0] in {4, 5, 6}] == []
    assert len([op for step, op in rec.ops if step in {4, 5, 6}]) > 100


def test_the_recorder_sees_the_reads_a_step_would_make(tmp_path, monkeypatch):
    """The detector works: a loop that read its loss every step (as it used to) is caught."""
    monkeypatch.setattr(jk, "freq_penalty", _sync_free_penalty)
    objective = loop._objective

    def reading_objective(*a, **k):
        out = objective(*a, **k)
        float(out.loss.detach())  # a host read, as `.item()` per step did
        return out

    monkeypatch.setattr(loop, "_objective", reading_objective)
    rec = _run(tmp_path, monkeypatch)
    assert {step for step, _ in rec.reads} >= {4, 5, 6}
