"""Training-step benchmarks through the objective API of :mod:`jafr_kernels.train`, side by side.

One timed call is one optimiser step (zero_grad, objective, ``loss.backward()``, ``opt.step()``) on a
fixed random batch, model in train mode:

* ``standard``: ``CE(f(x), y)``;
* ``jafr_double``: ``jafr_objective(..., jacobian_mode="double_backward")`` (the paper's double backprop);
* ``jafr_fd``: ``jafr_objective(..., jacobian_mode="finite_difference")`` (two forwards, two backwards);
* ``jafr_fd_lazy``: finite differences every ``LAZY_EVERY``-th step (weighted accordingly); one timed call is
  ``LAZY_EVERY`` consecutive steps and is reported per step;
* ``jafr_fd_sub``: finite differences on a ``SUB_FRACTION`` of the batch (the CE term on all of it);
* ``gradalign``: ``gradalign_objective`` with the clean batch as the main input (no FGSM attack timed);
* ``penalty``: not a step: ``jk.freq_penalty`` forward+backward on the model's real J (same shape and
  backend as inside the JaFR step), to give the penalty's share of a step.

Every step is timed in rounds, each right after a standard step of the same model and batch
(:func:`benchmarks.calls.run_paired`), and its cost in standard steps is the median ratio of those pairs. The
``standard`` case is paired with a twin (a second model, same seed): its ratio, 1 within noise, is the
control that the pairing favours neither side. A case may add bf16 autocast, channels_last memory format and
``torch.compile`` of the model (GPU suite).
``test_step_profile`` splits one finite-difference step with ``torch.profiler``: the penalty's ops against
the rest, host (CPU) time against device busy time.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

import jafr_kernels as jk
from jafr_kernels import backends
from benchmarks.calls import run_paired, run_timed
from benchmarks.configs import LAZY_EVERY, SUB_FRACTION

LAMBDA = 0.1
CUTOFF = 0.25
GRADALIGN_EPS = 8 / 255
_PROFILE_STEPS = 3
_PENALTY_RANGE = "jafr_penalty"


def _batch(case, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(case.batch, case.channels, case.size, case.size, generator=gen)
    y = torch.randint(0, case.num_classes, (case.batch,), generator=gen)
    x = x.to(case.device)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(case.device)


def _sync(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def make_step(case, seed: int = 0):
    """``(callable, info)``: the zero-argument step to time and a description of how it runs."""
    from jafr_kernels.train import build_model
    from jafr_kernels.train.objective import ce_objective, gradalign_objective, jafr_objective

    torch.manual_seed(seed)  # parameter initialisation of build_model
    memory_format = torch.channels_last if case.channels_last else torch.preserve_format
    raw = build_model(case.model, in_channels=case.channels, num_classes=case.num_classes)
    raw = raw.to(case.device, memory_format=memory_format).train()
    model = torch.compile(raw) if case.compile else raw
    opt = torch.optim.SGD(raw.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = _batch(case, seed)
    sync = _sync(case.device)
    amp = torch.bfloat16 if case.bf16 else None
    info = {"backend": backends.choose("auto", x.device)}

    if case.method == "penalty":
        xc = x.clone().requires_grad_(True)
        (jac,) = torch.autograd.grad(F.cross_entropy(model(xc), y), xc)
        jac = jac.detach().requires_grad_(True)

        def penalty():
            (g,) = torch.autograd.grad(jk.freq_penalty(jac, CUTOFF), jac)
            sync()
            return g

        info["path"] = f"jk.freq_penalty fwd+bwd on J {tuple(jac.shape)}"
        return penalty, info

    fd = dict(jacobian_mode="finite_difference", cutoff=CUTOFF, autocast_dtype=amp)
    objectives = {
        "standard": ("CE backward", lambda k: ce_objective(model, x, y, amp)),
        "jafr_double": ("jafr_objective double_backward",
                        lambda k: jafr_objective(model, x, y, LAMBDA, cutoff=CUTOFF, autocast_dtype=amp)),
        "jafr_fd": ("jafr_objective finite_difference", lambda k: jafr_objective(model, x, y, LAMBDA, **fd)),
        "jafr_fd_lazy": (f"finite_difference every {LAZY_EVERY} steps (per step, over {LAZY_EVERY})",
                         lambda k: jafr_objective(model, x, y, LAMBDA, every=LAZY_EVERY, step=k, **fd)),
        "jafr_fd_sub": (f"finite_difference on {SUB_FRACTION:g} of the batch",
                        lambda k: jafr_objective(model, x, y, LAMBDA, fraction=SUB_FRACTION, **fd)),
        "gradalign": ("gradalign_objective", lambda k: gradalign_objective(
            model, x, y, x, GRADALIGN_EPS, generator=torch.Generator().manual_seed(seed), autocast_dtype=amp)),
    }
    if case.method not in objectives:
        raise ValueError(f"unknown training method {case.method!r}")
    path, objective = objectives[case.method]
    steps = LAZY_EVERY if case.method == "jafr_fd_lazy" else 1

    def step():
        for k in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = objective(k).loss
            loss.backward()
            opt.step()
        sync()
        return loss

    info["path"] = path + "".join(f", {flag}" for flag in ("bf16", "channels_last", "compile") if getattr(case, flag))
    info["steps_per_call"] = steps
    return step, info


@functools.lru_cache(maxsize=2)
def _standard_step(case):
    """The standard step the steps of one model, batch and variant are paired with (built, and compiled, once)."""
    return make_step(case)[0]


def test_train_step(benchmark, train_case, bench_rounds):
    """One step, timed in rounds paired with a standard step of its own model and batch (``x_baseline``: the
    median ratio of the pairs; for ``standard`` itself, paired with its twin, the control); ``penalty`` alone."""
    fn, info = make_step(train_case)
    info = {**train_case.as_dict(), **info}
    if train_case.method == "penalty":
        run_timed(benchmark, fn, bench_rounds, "train", info)
    else:
        standard = _standard_step(dataclasses.replace(train_case, method="standard"))
        budget = 1.5 if train_case.device == "cpu" else 0.5  # a GPU lease is short, and a GPU not shared
        run_paired(benchmark, fn, standard, bench_rounds, "train", info, per_call=info["steps_per_call"], budget_s=budget)


def step_profile(fn, device: str, steps: int = _PROFILE_STEPS) -> dict:
    """Where one step's time goes (ms per step), from ``torch.profiler``: host time of all ops, the penalty's
    share (everything inside ``jk.freq_penalty_and_grad`` / ``jk.freq_penalty``, marked by a profiler range
    for the measurement) and, on a GPU, device busy time, total and the penalty's."""
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    originals = {name: getattr(jk, name) for name in ("freq_penalty", "freq_penalty_and_grad")}

    def marked(original):
        def call(*args, **kwargs):
            with record_function(_PENALTY_RANGE):
                return original(*args, **kwargs)
        return call

    try:
        for name, original in originals.items():
            setattr(jk, name, marked(original))
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
    finally:
        for name, original in originals.items():
            setattr(jk, name, original)
    events = prof.key_averages()
    penalty = [e for e in events if e.key == _PENALTY_RANGE]
    out = {
        "host_ms": sum(e.self_cpu_time_total for e in events) / 1e3 / steps,
        "penalty_host_ms": sum(e.cpu_time_total for e in penalty) / 1e3 / steps,
        "aten_ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")) / steps,
    }
    if cuda:
        out["device_busy_ms"] = sum(e.self_device_time_total for e in events) / 1e3 / steps
        out["penalty_device_ms"] = sum(e.device_time_total for e in penalty) / 1e3 / steps
    return out


def test_step_profile(benchmark, profile_train_case, bench_rounds):
    fn, info = make_step(profile_train_case)
    for _ in range(bench_rounds.warmup_calls):
        fn()
    benchmark.extra_info["kind"] = "train_profile"
    benchmark.extra_info.update({**profile_train_case.as_dict(), **info})
    benchmark.extra_info["profile"] = step_profile(fn, profile_train_case.device)
    benchmark.pedantic(fn, rounds=1, iterations=1)
