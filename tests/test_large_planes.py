"""The band ratio on large planes (above the register-resident DFT kernels) against the float64 reference.

* Triton ``"gemm"`` path (``kernels/triton_large.py``): the band-limited DFT streamed in ``tl.dot`` tiles.
  Interpreter on CPU tensors here (compiled kernels with ``JAFR_TRITON_TEST_DEVICE=cuda``): planes just above
  64 x 64, one 224 x 224 case, forced at small odd sizes for gradcheck and the scale/zero/non-finite samples.
* C++ backend, unfused ratio (``csrc``): the stages split per (sample, chunk of rows); at 224 x 224 a sample
  is many chunks on both the partial (GEMM) and the full (FFT) path, and one Inf in the last chunk must
  still make the sample NaN.

Tolerance: normwise relative error <= 1e-5 in fp32 (``conftest.TOLERANCE``), as for the small planes: each
spectral coefficient is two chained fp32 products deep (the interpreter runs IEEE fp32 products; a GPU the
3-pass TF32 split, ~5e-7 per product) and the 224 x 224 sums of ~5e4 terms accumulate in fp32 tiles, a few
1e-7; a wrong Hermitian weight, band row or sign moves the ratio by >= 1e-3.
"""
import os

import pytest
import torch

from jafr_kernels import backends, reference
from jafr_kernels.reference import RadialBand

from conftest import CPU, TOLERANCE, TRITON_TEST_DEVICE, OpRecorder, _CountedKernel, rel_err, triton_tests_skip_reason

TOL = TOLERANCE[torch.float32]


def _input(shape, seed, dtype=torch.float32, device=CPU):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _reference(x, mask, complement, grad):
    """float64 (value, d(grad . value)/dx); value = rho, or 1 - rho (0 for an all-zero sample)."""
    xr = x.detach().cpu().double().requires_grad_(True)
    rho = reference.low_freq_ratio(xr, mask)
    nonzero = xr.flatten(1).ne(0).any(dim=1)
    value = torch.where(nonzero, 1.0 - rho, torch.zeros_like(rho)) if complement else rho
    (dx,) = torch.autograd.grad((value * grad.detach().cpu().double()).sum(), xr)
    return value.detach(), dx


# =========================================================================== Triton "gemm" path
def _triton():
    why = triton_tests_skip_reason()
    if why:
        pytest.skip(why)
    pytest.importorskip("triton")
    from jafr_kernels.kernels import triton_large, triton_ratio

    return triton_ratio, triton_large


DEVICE = torch.device(TRITON_TEST_DEVICE)


def _triton_case(x, mask, complement, path="auto", weight=None):
    tr, _ = _triton()
    h, w = x.shape[-2:]
    q_lo, q_hi = (0, reference.Q_MAX) if weight is not None else mask.q_limits(h, w)
    grad = torch.linspace(-1.5, 2.0, x.shape[0], device=x.device, dtype=torch.float64).to(
        torch.float64 if x.dtype == torch.float64 else torch.float32)
    value, stats = tr.ratio(x, weight, q_lo, q_hi, complement, path=path)
    dx = tr.ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats, path=path)
    return value, dx, grad


def _takes_gemm(h, w, mask, path="auto", has_weight=False):
    tr, _ = _triton()
    q_lo, q_hi = (0, reference.Q_MAX) if has_weight else mask.q_limits(h, w)
    return tr.ratio_path(h, w, tr.band_rect(h, w, q_lo, q_hi, has_weight)[1:3], path) == "gemm"


@pytest.mark.parametrize("h,w", [(67, 65), (66, 97)])
@pytest.mark.parametrize("mask", [RadialBand.low(0.25), RadialBand.high(0.25), RadialBand.between(0.1, 0.2)],
                         ids=["low", "high", "between"])
@pytest.mark.parametrize("complement", [False, True])
def test_triton_gemm_matches_reference_above_threshold(h, w, mask, complement):
    assert _takes_gemm(h, w, mask)
    x = _input((2, 3, h, w), seed=h + w, device=DEVICE)
    value, dx, grad = _triton_case(x, mask, complement)
    value_ref, dx_ref = _reference(x, mask, complement, grad)
    assert value.dtype == torch.float32 and dx.dtype == x.dtype and dx.shape == x.shape
    assert rel_err(value, value_ref) <= TOL
    assert rel_err(dx, dx_ref) <= TOL


def test_triton_gemm_at_224():
    """The ImageNet plane at cutoff 0.25: 57 band rows, 29 columns, through the tiled path."""
    tr, _ = _triton()
    mask = RadialBand.low(0.25)
    assert tr.band_rect(224, 224, *mask.q_limits(224, 224), False)[1:3] == (57, 29)
    assert _takes_gemm(224, 224, mask)
    x = _input((2, 2, 224, 224), seed=224, device=DEVICE)
    value, dx, grad = _triton_case(x, mask, True)
    value_ref, dx_ref = _reference(x, mask, True, grad)
    assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL


@pytest.mark.parametrize("h,w,mask,path", [
    (224, 224, RadialBand.low(0.25), "gemm"),
    (67, 65, RadialBand.low(0.25), "gemm"),
    (224, 224, RadialBand.low(0.5), "fft"),  # 113 band rows: wider than the accumulators, cuFFT wins
    (512, 512, RadialBand.low(0.25), "fft"),
    (32, 32, RadialBand.low(0.25), "dft"),
    (64, 64, RadialBand.low(0.25), "dft"),
])
def test_triton_auto_path(h, w, mask, path):
    tr, _ = _triton()
    assert tr.ratio_path(h, w, tr.band_rect(h, w, *mask.q_limits(h, w), False)[1:3]) == path


def test_triton_forced_gemm_rejects_a_wide_band():
    tr, _ = _triton()
    rect = tr.band_rect(224, 224, *RadialBand.low(0.5).q_limits(224, 224), False)[1:3]
    with pytest.raises(ValueError, match="gemm"):
        tr.ratio_path(224, 224, rect, "gemm")


def test_triton_forced_gemm_small_odd_planes_and_weight_map():
    """Forced at sizes below the tiles (9 x 7: one partial tile each way) and with a weight map (every bin)."""
    _triton()
    for h, w, mask in [(9, 7, RadialBand.low(0.3)), (13, 20, RadialBand.high(0.4))]:
        assert _takes_gemm(h, w, mask, "gemm")
        x = _input((3, 2, h, w), seed=h * w, device=DEVICE)
        value, dx, grad = _triton_case(x, mask, False, path="gemm")
        value_ref, dx_ref = _reference(x, mask, False, grad)
        assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL
    weight = torch.rand(12, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(DEVICE)
    assert _takes_gemm(12, 10, None, "gemm", has_weight=True)
    x = _input((2, 1, 12, 10), seed=9, device=DEVICE)
    value, dx, grad = _triton_case(x, weight, True, path="gemm", weight=weight)
    value_ref, dx_ref = _reference(x, weight, True, grad)
    assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL


def test_triton_gemm_float64_is_tight():
    _triton()
    x = _input((2, 3, 11, 8), seed=3, dtype=torch.float64, device=DEVICE)
    mask = RadialBand.between(0.1, 0.7)
    value, dx, grad = _triton_case(x, mask, False, path="gemm")
    value_ref, dx_ref = _reference(x, mask, False, grad)
    assert value.dtype == torch.float64
    assert rel_err(value, value_ref) <= TOLERANCE[torch.float64] and rel_err(dx, dx_ref) <= TOLERANCE[torch.float64]


def test_triton_gemm_samples_of_any_magnitude():
    """Per-plane scales combined per sample: 1e30, subnormal, all-zero, one zero channel next to a 1e-20 one,
    and a sample holding Inf (NaN value and gradient, the others untouched)."""
    _triton()
    h, w = 10, 9
    base = _input((1, 3, h, w), seed=4, device=DEVICE)
    x = base.repeat(6, 1, 1, 1)
    x[0] *= 1e30
    x[1] *= 1e-40  # fp32 subnormals
    x[2] = 0
    x[3, 1] = 0
    x[3, 0] *= 1e-20
    x[5, 2, 1, 1] = float("inf")
    mask = RadialBand.low(0.3)
    value, dx, grad = _triton_case(x, mask, True, path="gemm")
    for i in (0, 1, 3, 4):  # per sample: their gradients differ by ~1e70
        value_ref, dx_ref = _reference(x[i : i + 1], mask, True, grad[i : i + 1])
        assert torch.isfinite(dx[i]).all(), i
        assert rel_err(value[i : i + 1], value_ref) <= TOL and rel_err(dx[i : i + 1], dx_ref) <= TOL, i
    assert value[2] == 0 and not dx[2].any()
    assert torch.isnan(value[5]) and torch.isnan(dx[5]).all()
    assert torch.isfinite(value[:5]).all()


def test_triton_gemm_gradcheck_through_the_public_api(monkeypatch):
    """float64 gradcheck of jk.low_freq_ratio on a small odd shape forced onto the tiled path."""
    _, tl_mod = _triton()
    import jafr_kernels as jk

    monkeypatch.setenv("JAFR_TRITON_PATH", "gemm")
    calls = []
    for name in ("ratio", "ratio_backward"):
        original = getattr(tl_mod, name)
        monkeypatch.setattr(tl_mod, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    x = _input((2, 1, 7, 5), seed=8, dtype=torch.float64, device=DEVICE).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: jk.low_freq_ratio(t, RadialBand.high(0.35), backend="triton"), (x,))
    assert "ratio" in calls and "ratio_backward" in calls


def test_triton_gemm_launches(monkeypatch):
    """Forward: one kernel over the planes and one per sample; backward: one over the planes and one over their
    row tiles; no host read."""
    tr, tl_mod = _triton()
    x = _input((2, 3, 67, 65), seed=1, device=DEVICE)
    q = RadialBand.low(0.25).q_limits(67, 65)
    value, stats = tr.ratio(x, None, *q, False)  # warm-up: factors cached, kernels compiled
    rec = OpRecorder()
    kernels = ("_large_ratio_kernel", "_large_finish_kernel", "_large_grad_spectrum_kernel", "_large_synthesis_kernel")
    for name in kernels:
        monkeypatch.setattr(tl_mod, name, _CountedKernel(getattr(tl_mod, name), rec))
    with rec:
        value, stats = tr.ratio(x, None, *q, False)
        tr.ratio_backward(torch.ones(2, device=DEVICE), x, None, *q, False, value, stats)
    assert rec.launches == list(kernels)
    assert rec.host_reads == []


# =========================================================================== C++ backend, unfused ratio
def _cpp():
    why = backends.unavailable_reason("cpu", CPU)
    if why is not None:
        if os.environ.get("JAFR_REQUIRE_EXTENSION") == "1":
            raise RuntimeError("the C++ extension is required but not built: " + why)
        pytest.skip("the C++ extension is not built")
    from jafr_kernels.kernels import cpp

    return cpp


def _cpp_case(x, mask, complement, grad):
    cpp = _cpp()
    q = mask.q_limits(*x.shape[-2:])
    value, stats = cpp.ratio(x, None, *q, complement)
    dx = cpp.ratio_backward(grad, x, None, *q, complement, value, stats)
    return value, dx


@pytest.mark.parametrize("path", ["partial", "full"])
def test_cpp_at_224_matches_reference(path, monkeypatch):
    """At 224 x 224 a sample is 19 chunks of x rows, and on the full path 10 chunks of spectrum rows."""
    monkeypatch.setenv("JAFR_CPP_PATH", path)
    x = _input((2, 3, 224, 224), seed=5)
    grad = torch.tensor([0.7, -1.2])
    for mask, complement in [(RadialBand.low(0.25), False), (RadialBand.high(0.25), True)]:
        value, dx = _cpp_case(x, mask, complement, grad)
        value_ref, dx_ref = _reference(x, mask, complement, grad)
        assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL


@pytest.mark.parametrize("path", ["partial", "full"])
def test_cpp_chunk_edges(path, monkeypatch):
    """Chunks that end inside a plane and a last, shorter chunk (1000 rows of 47 in runs of 174); an Inf in
    the very last value of one sample makes that sample NaN and leaves the other exact."""
    monkeypatch.setenv("JAFR_CPP_PATH", path)
    x = _input((2, 5, 200, 47), seed=6)
    mask = RadialBand.between(0.05, 0.3)
    grad = torch.tensor([1.0, -0.5])
    value, dx = _cpp_case(x, mask, False, grad)
    value_ref, dx_ref = _reference(x, mask, False, grad)
    assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL
    x[1, -1, -1, -1] = float("inf")
    value, dx = _cpp_case(x, mask, False, grad)
    assert torch.isnan(value[1]) and torch.isnan(dx[1]).all()
    assert rel_err(value[:1], value_ref[:1]) <= TOL and rel_err(dx[:1], dx_ref[:1]) <= TOL


def test_cpp_scale_spans_chunks(monkeypatch):
    """The sample's max sits in one chunk, the rest of the sample is ~1e-30 smaller: every chunk must use the
    sample's scale (a chunk's own scale would give a different, wrong E_all)."""
    monkeypatch.setenv("JAFR_CPP_PATH", "partial")
    x = _input((1, 3, 96, 96), seed=7) * 1e-25
    x[0, 2, 90, 5] = 3e5
    mask = RadialBand.low(0.25)
    grad = torch.ones(1)
    value, dx = _cpp_case(x, mask, False, grad)
    value_ref, dx_ref = _reference(x, mask, False, grad)
    assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL


# =========================================================================== benchmark calls of the forced paths
@pytest.mark.parametrize("impl", ["cpu_kernels@partial", "cpu_kernels@full", "triton_kernels@gemm", "triton_kernels@fft"])
def test_forced_path_benchmark_calls_give_the_penalty_gradient(impl):
    """The quick benchmark's ``<backend>_kernels@<path>`` calls compute the gradient of the mean complement ratio."""
    from benchmarks import configs
    from benchmarks.calls import build_quick_call, make_input

    if impl.startswith("triton"):
        _triton()
    else:
        _cpp()
    device = DEVICE.type if impl.startswith("triton") else "cpu"
    case = configs.KernelCase("freq_penalty", "fwd+bwd", impl, (2, 1, 67, 65), 0.25, "fp32", device)
    dx = build_quick_call(case, {})()
    x = make_input(case.shape, "fp32", device, seed=0)
    grad = torch.full((2,), 0.5)
    _, dx_ref = _reference(x, RadialBand.low(0.25), True, grad)
    assert rel_err(dx, dx_ref) <= TOL
