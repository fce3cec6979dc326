"""GPU checks of the fused ratio penalty (run by scripts/device_check.sh on an H100/H200; skipped without CUDA).

Two groups, every test marked ``gpu``:

* the public API (``jk.freq_penalty``, ``jk.low_freq_ratio``) on the ``cuda`` and ``triton`` backends against the
  float64 reference: headline and awkward shapes, bf16 input, extreme scales, zero and NaN samples, no host
  synchronisation on the default path, and the ``cuda`` backend's launch budget;
* the C++ extension's ops on CUDA tensors directly (``jafr_kernels.kernels.cpp``), on every transform path,
  with their own launch count and sync check, so the CUDA kernels are checked whatever the API layer does.

Tolerances: normwise relative error (conftest.rel_err) <= 1e-5 for fp32 maths. A bf16 input is exact once
upcast, so values are compared at that fp32 tolerance against the reference on the upcast input; the gradient
w.r.t. a bf16 input is itself bf16 (autograd returns the input's dtype), so it carries one bf16 rounding
(relative 2^-9 per element): compared at 2^-8.
"""
import pytest
import torch

import jafr_kernels as jk
from jafr_kernels import backends, reference
from jafr_kernels.reference import RadialBand

from conftest import TOLERANCE, count_device_ops, rel_err, run_without_sync

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

F32 = TOLERANCE[torch.float32]
BF16_GRAD = 2.0**-8
SHAPES = [(4096, 3, 32, 32), (256, 1, 28, 28), (8, 3, 31, 17), (4, 3, 64, 64), (2, 3, 224, 224)]
HEADLINE = (4096, 3, 32, 32)
CUTOFF = 0.25


@pytest.fixture(params=["cuda", "triton"])
def backend(request):
    why = backends.unavailable_reason(request.param, torch.device("cuda"))
    if why is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {why}")
    return request.param


def make_input(shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda", dtype=torch.float64) * scale).to(dtype)


def value_and_grad(fn, x, cotangent):
    x = x.detach().requires_grad_(True)
    out = fn(x)
    (dx,) = torch.autograd.grad((out * cotangent.to(out.dtype)).sum(), x)
    return out.detach(), dx


def cotangent(b, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed + 7)
    return torch.randn(b, generator=g, device="cuda", dtype=torch.float64)


def penalty(backend, target):
    return lambda t: jk.freq_penalty(t, CUTOFF, target=target, reduction="none", backend=backend)


def reference_penalty(target):
    return lambda t: reference.freq_penalty(t, RadialBand.low(CUTOFF), target, 2, "none")


def check_against_reference(backend, x, value_tol=F32, grad_tol=F32, targets=("low", "high")):
    r = cotangent(x.shape[0])
    for target in targets:
        val, dx = value_and_grad(penalty(backend, target), x, r)
        ref, ref_dx = value_and_grad(reference_penalty(target), x.double(), r)
        assert val.dtype == torch.float32 and dx.dtype == x.dtype, target
        assert rel_err(val, ref) <= value_tol, target
        assert rel_err(dx, ref_dx) <= grad_tol, target
    val, dx = value_and_grad(lambda t: jk.low_freq_ratio(t, CUTOFF, backend=backend), x, r)
    ref, ref_dx = value_and_grad(lambda t: reference.low_freq_ratio(t, RadialBand.low(CUTOFF)), x.double(), r)
    assert rel_err(val, ref) <= value_tol and rel_err(dx, ref_dx) <= grad_tol, "low_freq_ratio"


# ------------------------------------------------------------------------------------------------ public API
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(backend, shape):
    check_against_reference(backend, make_input(shape, seed=shape[-1]))


def test_mean_reduction_matches_reference(backend):
    """The default reduction: the backward receives an expanded gradient."""
    x = make_input(HEADLINE, seed=1)
    val, dx = value_and_grad(lambda t: jk.freq_penalty(t, CUTOFF, backend=backend), x, torch.ones((), device="cuda"))
    ref, ref_dx = value_and_grad(
        lambda t: reference.freq_penalty(t, RadialBand.low(CUTOFF), "low", 2, "mean"), x.double(), torch.ones((), device="cuda")
    )
    assert rel_err(val, ref) <= F32 and rel_err(dx, ref_dx) <= F32


@pytest.mark.parametrize("shape", [HEADLINE, (4, 3, 64, 64)], ids=lambda s: "x".join(map(str, s)))
def test_bf16_input(backend, shape):
    x = make_input(shape, seed=2, dtype=torch.bfloat16)
    check_against_reference(backend, x, value_tol=F32, grad_tol=BF16_GRAD)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales(backend, scale):
    """fp32 holds |J| from 1e-30 to 1e30: the per-sample scale is taken inside the op."""
    check_against_reference(backend, make_input((64, 3, 32, 32), seed=3, scale=scale))


def test_zero_samples(backend):
    x = make_input((16, 3, 32, 32), seed=4)
    x[[3, 9]] = 0
    r = cotangent(16)
    for target in ("low", "high"):
        val, dx = value_and_grad(penalty(backend, target), x, r)
        ref, ref_dx = value_and_grad(reference_penalty(target), x.double(), r)
        assert bool((val[[3, 9]] == 0).all()) and bool((dx[[3, 9]] == 0).all()), target
        assert rel_err(val, ref) <= F32 and rel_err(dx, ref_dx) <= F32, target


def test_nan_sample_propagates(backend):
    """A NaN in one sample gives that sample a NaN penalty (reduction='none'); the others are unaffected."""
    x = make_input((16, 3, 32, 32), seed=5)
    x[7, 2, 3, 4] = float("nan")
    keep = [i for i in range(16) if i != 7]
    for target in ("low", "high"):
        val = jk.freq_penalty(x, CUTOFF, target=target, reduction="none", backend=backend)
        ref = reference_penalty(target)(x[keep].double())
        assert torch.isnan(val[7]), target
        assert rel_err(val[keep], ref) <= F32, target


def _sync_free(fn, x):
    x = x.detach().requires_grad_(True)
    run_without_sync(lambda: torch.autograd.grad(fn(x), x))


def test_default_path_has_no_host_sync(backend):
    x = make_input(HEADLINE, seed=6)
    _sync_free(lambda t: jk.freq_penalty(t, CUTOFF, backend=backend), x)
    _sync_free(lambda t: jk.low_freq_ratio(t, CUTOFF, backend=backend).sum(), x)


def test_cuda_backend_launch_budget():
    """One freq_penalty forward+backward at (4096, 3, 32, 32) issues at most 8 device operations."""
    why = backends.unavailable_reason("cuda", torch.device("cuda"))
    if why is not None:
        pytest.skip(why)
    x = make_input(HEADLINE, seed=7).requires_grad_(True)

    def step():
        torch.autograd.grad(jk.freq_penalty(x, CUTOFF, backend="cuda"), x)

    count, names = count_device_ops(step)
    assert count <= 8, (count, names)


# ------------------------------------------------------------------------------------------------ extension ops on CUDA
@pytest.fixture
def cpp_cuda():
    why = backends.unavailable_reason("cuda", torch.device("cuda"))
    if why is not None:
        pytest.skip(why)
    from jafr_kernels.kernels import cpp

    return cpp


CPP_MASKS = {"low": RadialBand.low(CUTOFF), "high": RadialBand.high(0.3), "between": RadialBand.between(0.2, 0.7), "weights": None}


@pytest.mark.parametrize("path", ["fused", "partial", "full", "auto"])
@pytest.mark.parametrize("shape", [HEADLINE, (8, 3, 31, 17), (4, 1, 64, 64), (2, 3, 224, 224)], ids=lambda s: "x".join(map(str, s)))
def test_cpp_ops_match_reference(cpp_cuda, monkeypatch, path, shape):
    if path == "fused" and max(shape[-2:]) > 64:
        pytest.skip("the fused CUDA kernel serves planes up to 64x64")
    monkeypatch.setenv("JAFR_CPP_PATH", path)
    b, _, h, w = shape
    x = make_input(shape, seed=h + w)
    grad = cotangent(b).float()
    for name, band in CPP_MASKS.items():
        if band is None:
            g = torch.Generator(device="cuda").manual_seed(1)
            weight = torch.rand(h, w // 2 + 1, generator=g, device="cuda")
            weight = weight.masked_fill(weight < 0.3, 0.0)
            q, mask = (0, reference.Q_MAX), weight.double()
        else:
            weight, q, mask = None, band.q_limits(h, w), band
        for complement in (False, True):
            value, stats = cpp_cuda.ratio(x, weight, *q, complement)
            dx = cpp_cuda.ratio_backward(grad, x, weight, *q, complement, value, stats)
            x64 = x.double().requires_grad_(True)
            rho = reference.low_freq_ratio(x64, mask)
            ref = 1.0 - rho if complement else rho
            (ref_dx,) = torch.autograd.grad((ref * grad.double()).sum(), x64)
            case = (name, complement)
            assert rel_err(value, ref) <= F32 and rel_err(dx, ref_dx) <= F32, case


@pytest.mark.parametrize("path", ["fused", "partial", "full"])
def test_cpp_ops_special_samples(cpp_cuda, monkeypatch, path):
    """Zero sample: 0 and zero gradient; NaN/Inf sample: NaN for it alone; 1e-30, 1e30 and subnormal samples."""
    monkeypatch.setenv("JAFR_CPP_PATH", path)
    x = make_input((6, 3, 32, 32), seed=9)
    x[0] *= 1e-30
    x[1] *= 1e30
    x[2] = 0
    x[3, 0, 1, 2] = float("nan")
    x[4, 2, 0, 0] = float("inf")
    x[5] *= 1e-39  # fp32 subnormals
    q = RadialBand.low(CUTOFF).q_limits(32, 32)
    grad = cotangent(6).float()
    value, stats = cpp_cuda.ratio(x, None, *q, True)
    dx = cpp_cuda.ratio_backward(grad, x, None, *q, True, value, stats)
    assert value[2] == 0 and bool((dx[2] == 0).all())
    assert bool(torch.isnan(value[3:5]).all())
    finite = [0, 1, 5]
    x64 = x[finite].double().requires_grad_(True)
    ref = 1.0 - reference.low_freq_ratio(x64, RadialBand.low(CUTOFF))
    (ref_dx,) = torch.autograd.grad((ref * grad[finite].double()).sum(), x64)
    assert rel_err(value[finite], ref) <= F32
    for i, j in enumerate(finite):  # per sample: their gradients differ by ~70 orders of magnitude
        assert rel_err(dx[j], ref_dx[i]) <= F32, j


def test_cpp_fused_launches_and_syncs(cpp_cuda, monkeypatch):
    """The default (fused) path: one kernel forward, one backward, no host synchronisation."""
    monkeypatch.setenv("JAFR_CPP_PATH", "auto")
    x = make_input(HEADLINE, seed=10)
    q = RadialBand.low(CUTOFF).q_limits(32, 32)
    grad = torch.full((HEADLINE[0],), 1.0 / HEADLINE[0], device="cuda")

    def step():
        value, stats = cpp_cuda.ratio(x, None, *q, True)
        return cpp_cuda.ratio_backward(grad, x, None, *q, True, value, stats)

    count, names = count_device_ops(step)
    assert count == 2, (count, names)
    run_without_sync(step, warm_up=False)


def test_cpp_ops_registered_for_cuda(cpp_cuda):
    for op in ("energy", "energy_backward", "mean_magnitude", "mean_magnitude_backward", "band_ratio", "band_ratio_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"jafr_cpp::{op}", "CUDA"), op


def test_triton_launch_budget():
    """Triton at (4096, 3, 32, 32): the two fused kernels, plus the mean, its backward and autograd's seed."""
    why = backends.unavailable_reason("triton", torch.device("cuda"))
    if why is not None:
        pytest.skip(why)
    x = make_input(HEADLINE, seed=11).requires_grad_(True)
    count, names = count_device_ops(lambda: torch.autograd.grad(jk.freq_penalty(x, CUTOFF, backend="triton"), x))
    assert count <= 5, (count, names)
    assert sum("_ratio" in n for n in names) == 2, names


def test_large_planes_have_no_host_sync(backend):
    """The FFT path (planes above 64x64) is sync-free too."""
    _sync_free(lambda t: jk.freq_penalty(t, CUTOFF, backend=backend), make_input((8, 3, 224, 224), seed=12))


@pytest.mark.parametrize("method", ["fgsm+jafr", "pgd+jafr"])
@pytest.mark.parametrize("mode", ["finite_difference", "double_backward"])
def test_adversarial_jafr_step_has_no_host_sync(method, mode):
    """A whole adversarial JaFR step (attack, objective, backward, optimizer) never waits for the GPU."""
    from jafr_kernels.train import TrainConfig, build_model
    from jafr_kernels.train.loop import _objective

    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 10).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    cfg = TrainConfig(method=method, jacobian_mode=mode, jafr_every=1, pgd_steps=2).resolved()
    x, y = torch.rand(32, 1, 28, 28, device="cuda"), torch.randint(0, 10, (32,), device="cuda")

    def step():
        out = _objective(cfg, model, model, x, y, torch.Generator().manual_seed(0), None)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    run_without_sync(step)


def test_pgd_restart_selection_has_no_host_sync():
    from jafr_kernels import attacks

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).cuda()
    x, y = torch.rand(16, 1, 28, 28, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    run_without_sync(lambda: attacks.pgd(model, x, y, 0.1, 0.025, 2, restarts=3))
