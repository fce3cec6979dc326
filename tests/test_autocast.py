"""Every op inside an autocast region gives what it gives outside: the spectral maths stay in fp32.

A training step under ``torch.autocast`` calls the penalty on an fp32 Jacobian with autocast still on; the C++
ops exclude autocast around their bodies (their inner GEMMs would otherwise run in bf16 and fail, or lose
precision), Triton kernels and the reference upcast by themselves.
"""
import pytest
import torch

import jafr_kernels as jk
from jafr_kernels import backends
from jafr_kernels.reference import RadialBand

from conftest import CPU

ROUTES = [r for r in (("reference", None), ("cpu", "partial"), ("cpu", "full"), ("cpu", "fused"), ("triton", None))
          if backends.unavailable_reason(r[0], CPU) is None]

CALLS = {
    "freq_penalty": lambda j, b: jk.freq_penalty(j, 0.25, backend=b),
    "freq_penalty_high_sum": lambda j, b: jk.freq_penalty(j, RadialBand.high(0.3), target="high", reduction="sum",
                                                          backend=b),
    "freq_penalty_power1": lambda j, b: jk.freq_penalty(j, 0.3, power=1, backend=b),
    "freq_penalty_official": lambda j, b: jk.freq_penalty(j, formulation="official", backend=b),
    "low_freq_ratio": lambda j, b: jk.low_freq_ratio(j, 0.4, backend=b).sum(),
    "spectral_energy": lambda j, b: jk.spectral_energy(j, RadialBand.between(0.1, 0.6), backend=b).sum(),
    "mean_magnitude": lambda j, b: jk.mean_magnitude(j, backend=b).sum(),
}


@pytest.fixture(params=ROUTES, ids=[b if p is None else f"{b}-{p}" for b, p in ROUTES])
def route(request, monkeypatch):
    backend, path = request.param
    if path is not None:
        monkeypatch.setenv("JAFR_CPP_PATH", path)
    return backend


def _jac():
    return torch.randn(3, 2, 12, 12, generator=torch.Generator().manual_seed(0)).requires_grad_(True)


@pytest.mark.parametrize("call", list(CALLS))
def test_autocast_changes_nothing(route, call):
    fn = CALLS[call]
    jac = _jac()
    want = fn(jac, route)
    (want_grad,) = torch.autograd.grad(want, jac)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(jac, route)
        (got_grad,) = torch.autograd.grad(got, jac)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-9)


def test_autocast_penalty_and_grad(route):
    jac = _jac().detach()
    want = jk.freq_penalty_and_grad(jac, 0.25, backend=route)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = jk.freq_penalty_and_grad(jac, 0.25, backend=route)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-9)
