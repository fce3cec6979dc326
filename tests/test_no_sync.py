"""The default path reads nothing back from the device, and compiled code agrees with eager on NaN input.

A host read of a tensor (``item()``, ``bool()``, ``float()``, ``tolist()``, ``numpy()``) is a device
synchronisation on a GPU; the public functions' default paths must not make one, on any backend. Here every
backend that runs on this machine is checked with ``conftest.OpRecorder`` (the CUDA side, under
``torch.cuda.set_sync_debug_mode("error")``, is in ``tests/test_gpu.py``).
"""
import pytest
import torch

import jafr_kernels as jk
from jafr_kernels import backends
from jafr_kernels.reference import RadialBand

CPU = torch.device("cpu")
RUNNABLE = [b for b in ("cpu", "reference", "triton") if backends.unavailable_reason(b, CPU) is None]


def _jac(seed=0, nan_sample=None):
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    if nan_sample is not None:
        x[nan_sample, 1, 2, 3] = float("nan")
    return x.requires_grad_(True)


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("call", ["freq_penalty", "freq_penalty_high", "low_freq_ratio", "spectral_energy"])
def test_default_path_has_no_host_read(backend, call, record_ops):
    fn = {
        "freq_penalty": lambda j: jk.freq_penalty(j, 0.25, backend=backend),
        "freq_penalty_high": lambda j: jk.freq_penalty(j, 0.25, target="high", reduction="sum", backend=backend),
        "low_freq_ratio": lambda j: jk.low_freq_ratio(j, 0.25, backend=backend).sum(),
        "spectral_energy": lambda j: jk.spectral_energy(j, RadialBand.between(0.1, 0.5), backend=backend).sum(),
    }[call]
    jac = _jac(nan_sample=2)
    torch.autograd.grad(fn(jac), jac)  # warm-up (kernel compilation, cached tables)
    with record_ops() as rec:
        out = fn(jac)
        (grad,) = torch.autograd.grad(out, jac)
    assert rec.host_reads == [], rec.host_reads
    assert rec.ops, "the recorder saw no op at all"
    if call != "spectral_energy":
        assert torch.isnan(out)  # propagated, not raised


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_penalty_and_grad_has_no_host_read(backend, reduction, record_ops):
    jac = _jac(nan_sample=2).detach()
    jk.freq_penalty_and_grad(jac, 0.25, reduction=reduction, backend=backend)  # warm-up
    with record_ops() as rec:
        penalty, grad = jk.freq_penalty_and_grad(jac, 0.25, reduction=reduction, backend=backend)
    assert rec.host_reads == [], rec.host_reads
    assert rec.ops or rec.launches, "the recorder saw no op at all"
    assert torch.isnan(penalty).any() and torch.isnan(grad[2]).all()  # propagated, not raised


@pytest.mark.parametrize("backend", RUNNABLE)
def test_nonfinite_modes(backend):
    jac = _jac(nan_sample=1)
    clean = jac.detach().clone()
    clean[1] = 0.0
    per_sample = jk.freq_penalty(jac, reduction="none", backend=backend)
    assert torch.isnan(per_sample[1]) and torch.isfinite(per_sample[[0, 2, 3]]).all()
    expected = jk.freq_penalty(clean, reduction="none", backend=backend)
    ignored = jk.freq_penalty(jac, reduction="none", nonfinite="ignore", backend=backend)
    assert torch.equal(ignored, expected) and float(ignored[1]) == 0.0
    (grad,) = torch.autograd.grad(jk.freq_penalty(jac, nonfinite="ignore", backend=backend), jac)
    assert torch.isfinite(grad).all() and float(grad[1].abs().max()) == 0.0
    with pytest.raises(ValueError, match="1 non-finite .* in 1 of 4 samples"):
        jk.freq_penalty(jac, nonfinite="raise", backend=backend)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "reference") if b in RUNNABLE])
def test_compiled_equals_eager_on_a_nan_sample(backend):
    torch._dynamo.reset()
    jac = _jac(seed=3, nan_sample=0).detach()

    def penalty(j):
        return jk.freq_penalty(j, 0.25, reduction="none", backend=backend)

    eager = penalty(jac)
    compiled = torch.compile(penalty, fullgraph=True)(jac)
    assert torch.isnan(eager[0]) and torch.isnan(compiled[0])
    torch.testing.assert_close(compiled, eager, equal_nan=True, rtol=1e-6, atol=0)
    mean_eager = jk.freq_penalty(jac, backend=backend)
    mean_compiled = torch.compile(lambda j: jk.freq_penalty(j, backend=backend), fullgraph=True)(jac)
    assert torch.isnan(mean_eager) and torch.isnan(mean_compiled)


def test_raise_mode_is_refused_in_compiled_code():
    torch._dynamo.reset()
    fn = torch.compile(lambda j: jk.freq_penalty(j, nonfinite="raise", backend="reference"), fullgraph=True)
    with pytest.raises(Exception, match="nonfinite='raise'"):
        fn(_jac().detach())
