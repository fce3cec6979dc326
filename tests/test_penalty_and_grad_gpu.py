"""GPU checks of ``freq_penalty_and_grad`` (skipped without CUDA; marked ``gpu``): the compiled Triton kernel and
the C++ extension's CUDA routine against the float64 reference and autograd, their launch counts, and no host
synchronisation. Tolerances as in ``tests/test_gpu.py``: 1e-5 normwise for fp32 maths, 2^-8 for a bf16 gradient.
"""
import os

import pytest
import torch

import jafr_kernels as jk
from jafr_kernels import backends, reference
from jafr_kernels.reference import RadialBand

from conftest import TOLERANCE, count_device_ops, rel_err, run_without_sync

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

F32 = TOLERANCE[torch.float32]
CUDA = torch.device("cuda") if torch.cuda.is_available() else None
SHAPES = [(4096, 3, 32, 32), (8, 3, 31, 17), (4, 1, 64, 64), (2, 3, 224, 224)]


@pytest.fixture(params=[("triton", None), ("cuda", "auto"), ("cuda", "fused"), ("cuda", "partial"), ("cuda", "full")],
                ids=lambda p: p[0] if p[1] is None else f"{p[0]}-{p[1]}")
def route(request, monkeypatch):
    backend, path = request.param
    why = backends.unavailable_reason(backend, CUDA)
    if why is not None:
        pytest.skip(f"backend {backend!r} unavailable: {why}")
    if path is not None:
        monkeypatch.setenv("JAFR_CPP_PATH", path)
    return backend


def _jac(shape, seed=0, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=g, device="cuda", dtype=torch.float64).to(dtype)


def _expected(jac, mask, target, reduction):
    leaf = jac.detach().double().requires_grad_(True)
    penalty = reference.freq_penalty(leaf, mask, target=target, reduction=reduction)
    (grad,) = torch.autograd.grad(penalty.sum(), leaf)
    return penalty.detach(), grad


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(route, shape):
    if os.environ.get("JAFR_CPP_PATH") == "fused" and max(shape[-2:]) > 64:
        pytest.skip("the fused CUDA kernel serves planes up to 64x64")
    jac = _jac(shape, seed=shape[-1])
    for target, reduction, mask in (("low", "mean", RadialBand.low(0.25)), ("high", "none", RadialBand.high(0.3))):
        penalty, grad = jk.freq_penalty_and_grad(jac, mask, target=target, reduction=reduction, backend=route)
        want_p, want_g = _expected(jac, mask, target, reduction)
        assert grad.dtype == torch.float32 and grad.shape == jac.shape
        assert rel_err(penalty, want_p) <= F32, (target, reduction)
        assert rel_err(grad, want_g) <= F32, (target, reduction)


def test_bf16_zero_and_nan_samples(route):
    jac = _jac((16, 3, 32, 32), seed=1, dtype=torch.bfloat16)
    jac[3] = 0
    clean = jac.clone()
    jac[7, 1, 2, 3] = float("nan")
    clean[7] = 0
    penalty, grad = jk.freq_penalty_and_grad(jac, 0.25, reduction="none", backend=route)
    want_p, want_g = _expected(clean, RadialBand.low(0.25), "low", "none")
    keep = torch.ones(16, dtype=torch.bool, device="cuda")
    keep[7] = False
    assert grad.dtype == torch.bfloat16
    assert torch.isnan(penalty[7]) and torch.isnan(grad[7]).all()
    assert float(penalty[3]) == 0.0 and float(grad[3].abs().max()) == 0.0
    assert rel_err(penalty[keep], want_p[keep]) <= F32
    assert rel_err(grad[keep], want_g[keep]) <= 2.0**-8


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_one_launch_and_no_host_sync(backend):
    """(4096, 3, 32, 32): the fused value-and-gradient kernel plus the mean, and no synchronisation."""
    why = backends.unavailable_reason(backend, CUDA)
    if why is not None:
        pytest.skip(why)
    jac = _jac((4096, 3, 32, 32), seed=2)
    count, names = count_device_ops(lambda: jk.freq_penalty_and_grad(jac, 0.25, backend=backend))
    assert count <= 2, (count, names)
    run_without_sync(lambda: jk.freq_penalty_and_grad(jac, 0.25, backend=backend), warm_up=False)


def test_cpp_op_registered_for_cuda():
    why = backends.unavailable_reason("cuda", CUDA)
    if why is not None:
        pytest.skip(why)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("jafr_cpp::band_ratio_and_grad", "CUDA")
