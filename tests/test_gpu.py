"""GPU checks of the fused default path, for every GPU backend (run by ``scripts/device_check.sh``).

Through the public API, on CUDA tensors: values and gradients against the float64 reference, bf16 input,
scales 1e-30 .. 1e30, zero and NaN samples, no host synchronisation on the default path
(``torch.cuda.set_sync_debug_mode("error")``), and the device launches of one forward+backward. Skipped
without a GPU. Tolerance: fp32 normwise relative 1e-5 (``conftest.TOLERANCE``); Triton's 3-pass TF32
products carry ~5e-7 relative error per product, far inside it. bf16 input is exact once upcast, so it is
compared with the reference on the upcast input at the fp32 tolerance.
"""
import pytest
import torch

import jafr_kernels as jk
from jafr_kernels import backends, reference
from jafr_kernels.reference import RadialBand

from conftest import TOLERANCE, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GPU_BACKENDS = ["triton", "cuda"]
SHAPES = [(4096, 3, 32, 32), (256, 1, 28, 28), (8, 3, 31, 17), (4, 3, 64, 64), (2, 3, 224, 224)]
TOL = TOLERANCE[torch.float32]


def _serve(backend):
    why = backends.unavailable_reason(backend, torch.device("cuda")) if torch.cuda.is_available() else "no GPU"
    if why is not None:
        pytest.skip(f"{backend}: {why}")


def _jac(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device="cuda", dtype=dtype)


def _reference(jac, cutoff, target, weights):
    xr = jac.detach().double().requires_grad_(True)
    p = reference.freq_penalty(xr, RadialBand.low(cutoff), target=target, reduction="none")
    (g,) = torch.autograd.grad((p * weights.double()).sum(), xr)
    return p.detach(), g


def _ours(jac, cutoff, target, weights, backend):
    x = jac.detach().clone().requires_grad_(True)
    p = jk.freq_penalty(x, cutoff, target=target, reduction="none", backend=backend)
    (g,) = torch.autograd.grad((p * weights).sum(), x)
    return p.detach(), g


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("target", ["low", "high"])
def test_penalty_matches_reference(backend, shape, target):
    _serve(backend)
    jac = _jac(shape, seed=shape[-1])
    weights = torch.rand(shape[0], device="cuda")
    p, g = _ours(jac, 0.25, target, weights, backend)
    p_ref, g_ref = _reference(jac, 0.25, target, weights)
    assert rel_err(p, p_ref) <= TOL and rel_err(g, g_ref) <= TOL


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_low_freq_ratio_and_band(backend):
    _serve(backend)
    jac = _jac((64, 3, 32, 32), seed=1)
    for mask in (0.4, RadialBand.between(0.2, 0.6)):
        r = jk.low_freq_ratio(jac, mask, backend=backend)
        r_ref = reference.low_freq_ratio(jac.double(), mask if isinstance(mask, RadialBand) else RadialBand.low(mask))
        assert rel_err(r, r_ref) <= TOL


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bf16_input(backend):
    _serve(backend)
    jac = _jac((512, 3, 32, 32), seed=2, dtype=torch.bfloat16)
    weights = torch.rand(512, device="cuda")
    p, g = _ours(jac, 0.25, "low", weights, backend)
    p_ref, g_ref = _reference(jac, 0.25, "low", weights)
    assert p.dtype == torch.float32 and g.dtype == torch.bfloat16
    assert rel_err(p, p_ref) <= TOL
    assert rel_err(g, g_ref) <= 2.0**-7  # the gradient is rounded to bf16 (8 significant bits) on the store


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", [(6, 3, 32, 32), (6, 3, 224, 224)], ids=["dft", "fft"])
def test_scales_zero_and_nan_samples(backend, shape):
    _serve(backend)
    base = _jac((1,) + shape[1:], seed=3)
    scales = torch.tensor([1e-30, 1.0, 1e30, 0.0, 1.0, 1e15], device="cuda")
    jac = base * scales[:, None, None, None]
    jac[4, 0, 1, 1] = float("nan")
    weights = torch.ones(6, device="cuda")
    p, g = _ours(jac, 0.25, "low", weights, backend)
    p_ref, g_ref = _reference(base, 0.25, "low", torch.ones(1, device="cuda"))
    finite = [0, 1, 2, 5]
    assert rel_err(p[finite], p_ref.expand(4)) <= TOL
    for i in finite:
        assert rel_err(g[i : i + 1].double() * float(scales[i]), g_ref) <= TOL
    assert float(p[3]) == 0.0 and float(g[3].abs().max()) == 0.0  # zero sample: 0, zero gradient
    assert torch.isnan(p[4])  # NaN propagates to that sample only


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", [(256, 3, 32, 32), (8, 3, 224, 224)], ids=["dft", "fft"])
def test_default_path_never_synchronises(backend, shape):
    _serve(backend)
    x = _jac(shape, seed=4).requires_grad_(True)
    for _ in range(2):  # compilation, autotuning and cached tables first
        torch.autograd.grad(jk.freq_penalty(x, backend=backend), x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = jk.freq_penalty(x, backend=backend)
        (g,) = torch.autograd.grad(loss, x)
        ratio = jk.low_freq_ratio(x.detach(), backend=backend)
        energy = jk.spectral_energy(x.detach(), RadialBand.low(0.3), backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(g).all() and torch.isfinite(ratio).all() and torch.isfinite(energy).all()


def _device_launches(fn, calls=3):
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return len(events) / calls, sorted({e.name for e in events})


@pytest.mark.parametrize("backend,budget", [("triton", 5), ("cuda", 8)])
def test_launches_per_forward_backward(backend, budget):
    """Device launches of one freq_penalty forward+backward at (4096, 3, 32, 32): the fused kernels, the mean
    and its backward, autograd's seed; triton: 2 kernels + <= 3 small ones, cuda: <= 8 in all."""
    _serve(backend)
    x = _jac((4096, 3, 32, 32), seed=5).requires_grad_(True)
    launches, names = _device_launches(lambda: torch.autograd.grad(jk.freq_penalty(x, backend=backend), x))
    print(f"{backend}: {launches:.0f} device launches per call: {names}")
    assert launches <= budget, names
