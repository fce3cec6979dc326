"""The Triton fused ratio (``kernels/triton_ratio.py``) against the float64 reference, and its launch budget.

Runs the interpreter on CPU tensors here, the compiled kernels on a GPU (``JAFR_TRITON_TEST_DEVICE=cuda``).
Tolerance: normwise relative error <= 1e-5 in fp32 (``conftest.TOLERANCE``). The ratio is a quotient of two
fp32 sums whose terms are two chained products deep; its error is a few 1e-7 (interpreter: IEEE; GPU: the
3-pass TF32 split, ~5e-7 per product), while a wrong Hermitian weight, band bound or sign moves it by >= 1e-3.
"""
import pytest
import torch

pytest.importorskip("triton")

import jafr_kernels as jk  # noqa: E402
from jafr_kernels import reference  # noqa: E402
from jafr_kernels.reference import RadialBand  # noqa: E402

from conftest import TOLERANCE, TRITON_TEST_DEVICE, rel_err, triton_tests_skip_reason  # noqa: E402

if triton_tests_skip_reason():
    pytest.skip(triton_tests_skip_reason(), allow_module_level=True)

from jafr_kernels.kernels import triton_ratio as tr  # noqa: E402

DEVICE = torch.device(TRITON_TEST_DEVICE)
TOL = TOLERANCE[torch.float32]

# 17x33 and 31x17 sit just past a block boundary; 96x80 takes the FFT path.
SIZES = [(28, 28), (32, 32), (31, 17), (17, 33), (64, 64), (96, 80)]
MASKS = {
    "low": RadialBand.low(0.25),
    "high": RadialBand.high(0.25),
    "between": RadialBand.between(0.2, 0.6),
    "weight": None,  # a random non-negative map, not symmetric in u
}
CHANNELS = {"low": 1, "high": 3, "between": 3, "weight": 1}


def _planes(b, c, h, w, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(device=DEVICE, dtype=dtype)


def _mask(name, h, w):
    if name == "weight":
        g = torch.Generator().manual_seed(3)
        weight = torch.rand(h, w // 2 + 1, generator=g, dtype=torch.float64).to(DEVICE)
        return weight, weight, 0, reference.Q_MAX
    band = MASKS[name]
    return band, None, *band.q_limits(h, w)


def _reference(x, mask, complement, grad):
    """(value, d(grad . value)/dx) of the float64 reference."""
    xr = x.detach().double().requires_grad_(True)
    rho = reference.low_freq_ratio(xr, mask)
    nonzero = xr.flatten(1).ne(0).any(dim=1)
    value = torch.where(nonzero, 1.0 - rho, torch.zeros_like(rho)) if complement else rho
    (dx,) = torch.autograd.grad((value * grad.double()).sum(), xr)
    return value.detach(), dx


def _kernels(x, weight, q_lo, q_hi, complement, grad, path="auto"):
    value, stats = tr.ratio(x, weight, q_lo, q_hi, complement, path=path)
    dx = tr.ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats, path=path)
    return value, dx


# --------------------------------------------------------------------------- 1. values and gradients
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("complement", [False, True])
def test_matches_reference(h, w, mask, complement):
    x = _planes(3, CHANNELS[mask], h, w, seed=h * w)
    ref_mask, weight, q_lo, q_hi = _mask(mask, h, w)
    grad = torch.tensor([0.7, -1.3, 2.0], device=DEVICE)
    value, dx = _kernels(x, weight, q_lo, q_hi, complement, grad)
    value_ref, dx_ref = _reference(x, ref_mask, complement, grad)
    assert value.dtype == torch.float32 and dx.dtype == x.dtype and dx.shape == x.shape
    assert rel_err(value, value_ref) <= TOL
    assert rel_err(dx, dx_ref) <= TOL


@pytest.mark.parametrize("h,w", [s for s in SIZES if max(s) <= tr.MAX_RATIO_DFT_SIZE] + [(6, 5)])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("samples", [1, 2, 4, 8])
def test_packed_path_matches_reference(h, w, mask, samples, monkeypatch):
    """The packed small-plane path (several samples per program) at every size and mask, with batches that do
    not fill the last program (5 samples), value and gradient of ratio/ratio_backward and ratio_and_grad."""
    monkeypatch.setenv("JAFR_TRITON_SAMPLES", str(samples))
    x = _planes(5, CHANNELS[mask], h, w, seed=h * w + samples)
    ref_mask, weight, q_lo, q_hi = _mask(mask, h, w)
    grad = torch.tensor([0.7, -1.3, 2.0, 0.1, -0.4], device=DEVICE)
    value, dx = _kernels(x, weight, q_lo, q_hi, True, grad, path="packed")
    value_ref, dx_ref = _reference(x, ref_mask, True, grad)
    assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL
    value_vg, dx_vg = tr.ratio_and_grad(x, weight, q_lo, q_hi, True, -0.3, path="packed")
    _, dx_vg_ref = _reference(x, ref_mask, True, torch.full((5,), -0.3, device=DEVICE))
    assert rel_err(value_vg, value_ref) <= TOL and rel_err(dx_vg, dx_vg_ref) <= TOL


def test_packed_path_is_for_small_planes():
    with pytest.raises(ValueError, match="64x64"):
        tr.ratio(_planes(1, 1, 65, 8), None, 0, 10, False, path="packed")


@pytest.mark.parametrize("path", ["dft", "packed", "fft"])
@pytest.mark.parametrize("channels", [1, 3])
def test_both_paths_at_one_size(path, channels):
    x = _planes(2, channels, 28, 28, seed=11)
    band = RadialBand.low(0.4)
    grad = torch.tensor([1.0, -0.5], device=DEVICE)
    value, dx = _kernels(x, None, *band.q_limits(28, 28), True, grad, path=path)
    value_ref, dx_ref = _reference(x, band, True, grad)
    assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL


@pytest.mark.parametrize("path", ["dft", "packed", "fft"])
def test_float64_is_tight(path):
    x = _planes(2, 3, 17, 12, dtype=torch.float64, seed=12)
    band = RadialBand.between(0.1, 0.7)
    grad = torch.tensor([1.0, 2.0], device=DEVICE, dtype=torch.float64)
    value, dx = _kernels(x, None, *band.q_limits(17, 12), False, grad, path=path)
    value_ref, dx_ref = _reference(x, band, False, grad)
    assert value.dtype == torch.float64
    assert rel_err(value, value_ref) <= TOLERANCE[torch.float64] and rel_err(dx, dx_ref) <= TOLERANCE[torch.float64]


def test_all_pass_band_is_one_with_zero_gradient():
    x = _planes(2, 3, 16, 16, seed=13)
    grad = torch.ones(2, device=DEVICE)
    value, dx = _kernels(x, None, *RadialBand.all().q_limits(16, 16), False, grad)
    assert torch.allclose(value, torch.ones_like(value))
    assert float(dx.abs().max()) <= 1e-6 * float(x.abs().max())


# --------------------------------------------------------------------------- 2. scale, zero and non-finite samples
@pytest.mark.parametrize("path", ["dft", "packed", "fft"])
def test_scale_invariance_1e30(path):
    """Each sample scaled by 1e-30 .. 1e30 gives the unscaled value, and a gradient scaled by the inverse."""
    base = _planes(1, 3, 32, 32, seed=14)
    scales = torch.tensor([1e-30, 1e-15, 1.0, 1e15, 1e30], device=DEVICE)
    x = base * scales[:, None, None, None]
    band = RadialBand.low(0.25)
    grad = torch.ones(5, device=DEVICE)
    value, dx = _kernels(x, None, *band.q_limits(32, 32), True, grad, path=path)
    value_ref, dx_ref = _reference(base, band, True, torch.ones(1, device=DEVICE))
    assert torch.isfinite(value).all() and torch.isfinite(dx).all()
    assert rel_err(value, value_ref.expand(5)) <= TOL
    for i, s in enumerate(scales.tolist()):
        assert rel_err(dx[i : i + 1].double() * s, dx_ref) <= TOL


@pytest.mark.parametrize("path", ["dft", "packed", "fft"])
@pytest.mark.parametrize("complement", [False, True])
def test_zero_sample_gives_zero_with_zero_gradient(path, complement):
    x = _planes(3, 3, 20, 20, seed=15)
    x[1] = 0.0
    band = RadialBand.low(0.3)
    grad = torch.ones(3, device=DEVICE)
    value, dx = _kernels(x, None, *band.q_limits(20, 20), complement, grad, path=path)
    value_ref, dx_ref = _reference(x, band, complement, grad)
    assert float(value[1]) == 0.0 and float(dx[1].abs().max()) == 0.0
    assert rel_err(value, value_ref) <= TOL and rel_err(dx, dx_ref) <= TOL


@pytest.mark.parametrize("path", ["dft", "packed", "fft"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_sample_is_nan_and_alone(path, bad):
    x = _planes(3, 3, 20, 20, seed=16)
    clean = x.clone()
    x[2, 1, 4, 7] = bad
    band = RadialBand.low(0.3)
    value, _ = tr.ratio(x, None, *band.q_limits(20, 20), True, path=path)
    value_ref, _ = _reference(clean, band, True, torch.ones(3, device=DEVICE))
    assert torch.isnan(value[2])
    assert rel_err(value[:2], value_ref[:2]) <= TOL


def _subnormal_samples(h, w, seed):
    """Three fp32 samples of two planes whose values are all subnormal (|x| < 1.2e-38): 1e-42 * randn (about 10
    significant bits), 1e-39 * randn, and three multiples of 2^-149 (the smallest subnormal) among zeros."""
    x = _planes(3, 2, h, w, dtype=torch.float64, seed=seed)
    x[0] *= 1e-42
    x[1] *= 1e-39
    x[2] = 0.0
    x[2, 0, 0, 0], x[2, 0, 1, 2], x[2, 1, 3, 1] = 2.0**-149, 3 * 2.0**-149, -5 * 2.0**-149
    x = x.float()
    assert (x.abs() < torch.finfo(torch.float32).tiny).all()
    return x


@pytest.mark.parametrize("path,h,w", [("dft", 16, 16), ("dft", 17, 12), ("packed", 16, 16), ("packed", 17, 12),
                                    ("fft", 4, 4)])
@pytest.mark.parametrize("mask", ["low", "high"])
@pytest.mark.parametrize("complement", [False, True])
def test_subnormal_samples_match_reference(path, h, w, mask, complement):
    """Subnormal fp32 samples: value and gradient (ratio_backward and ratio_and_grad) match the float64 reference
    on the same values, sample by sample.

    Their scale is s_b = 2^127, so 2 s_b overflows fp32: it must multiply the gradient last. The gradients
    (~1 / sum|x_b|: per unit of grad 3e39, 4e36 and 1e43 at 16 x 16) are kept within fp32 by small grads. The
    DFT path transforms s_b x_b, exact, so the fp32 tolerance holds. The FFT path transforms x itself, rounding
    to the subnormal grid; at 4 x 4 its twiddles are +-1 and +-i, so that transform is exact too.
    """
    x = _subnormal_samples(h, w, seed=h * w)
    ref_mask, weight, q_lo, q_hi = _mask(mask, h, w)
    grad = torch.tensor([1e-4, -1.0, 1e-9], device=DEVICE)
    value, dx = _kernels(x, weight, q_lo, q_hi, complement, grad, path=path)
    value_ref, dx_ref = _reference(x, ref_mask, complement, grad)
    scale = 1e-9
    value_vg, dx_vg = tr.ratio_and_grad(x, weight, q_lo, q_hi, complement, scale, path=path)
    _, dx_vg_ref = _reference(x, ref_mask, complement, torch.full((3,), scale, device=DEVICE))
    assert max(dx_ref.abs().max(), dx_vg_ref.abs().max()) < torch.finfo(torch.float32).max  # representable
    for i in range(3):  # per sample: their gradients differ by up to 1e8
        assert torch.isfinite(dx[i]).all() and torch.isfinite(dx_vg[i]).all(), i
        assert rel_err(value[i], value_ref[i]) <= TOL and rel_err(value_vg[i], value_ref[i]) <= TOL, i
        assert rel_err(dx[i], dx_ref[i]) <= TOL, i
        assert rel_err(dx_vg[i], dx_vg_ref[i]) <= TOL, i


def test_half_precision_input():
    x = _planes(2, 3, 28, 28, seed=17).to(torch.float16)
    band = RadialBand.low(0.25)
    grad = torch.ones(2, device=DEVICE)
    value, dx = _kernels(x, None, *band.q_limits(28, 28), True, grad)
    value_ref, dx_ref = _reference(x, band, True, grad)  # fp16 input is exact once upcast
    assert value.dtype == torch.float32 and dx.dtype == torch.float16
    assert rel_err(value, value_ref) <= TOL
    assert rel_err(dx, dx_ref) <= 2.0**-10  # dx is rounded to fp16 on the store


def test_expanded_grad_is_read_through_its_stride():
    x = _planes(4, 1, 16, 16, seed=18)
    band = RadialBand.low(0.25)
    value, stats = tr.ratio(x, None, *band.q_limits(16, 16), False)
    g = torch.tensor(0.25, device=DEVICE).expand(4)
    dx = tr.ratio_backward(g, x, None, *band.q_limits(16, 16), False, value, stats)
    dx_dense = tr.ratio_backward(g.contiguous(), x, None, *band.q_limits(16, 16), False, value, stats)
    assert torch.equal(dx, dx_dense)


# --------------------------------------------------------------------------- 3. gradcheck (float64)
class _Ratio(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, q_lo, q_hi, complement, path):
        value, stats = tr.ratio(x, weight, q_lo, q_hi, complement, path=path)
        ctx.save_for_backward(x, value, stats)
        ctx.args = (weight, q_lo, q_hi, complement, path)
        return value

    @staticmethod
    def backward(ctx, grad):
        x, value, stats = ctx.saved_tensors
        weight, q_lo, q_hi, complement, path = ctx.args
        dx = tr.ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats, path=path)
        return dx, None, None, None, None, None


@pytest.mark.parametrize("path", ["dft", "packed", "fft"])
@pytest.mark.parametrize("h,w", [(6, 5), (5, 6)])
def test_gradcheck(path, h, w):
    x = _planes(2, 2, h, w, dtype=torch.float64, seed=19).requires_grad_(True)
    q_lo, q_hi = RadialBand.high(0.4).q_limits(h, w)
    assert torch.autograd.gradcheck(lambda t: _Ratio.apply(t, None, q_lo, q_hi, True, path), (x,))
    weight = torch.rand(h, w // 2 + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    assert torch.autograd.gradcheck(lambda t: _Ratio.apply(t, weight, 0, reference.Q_MAX, False, path), (x,),
                                    fast_mode=True)


# --------------------------------------------------------------------------- 4. band geometry
def test_band_rectangle_covers_exactly_the_band():
    """Every bin of the band lies in the transformed rectangle (rows min(u, H-u) <= UR, columns v < VB)."""
    for h, w in [(32, 32), (28, 28), (31, 17), (17, 33), (64, 64), (7, 5)]:
        for band in (RadialBand.low(0.25), RadialBand.low(0.9), RadialBand.high(0.3), RadialBand.between(0.2, 0.5)):
            q_lo, q_hi = band.q_limits(h, w)
            ur, nu, vb, band_cmp, lo, hi = tr.band_rect(h, w, q_lo, q_hi, False)
            q = reference.squared_radius_index(h, w)
            inside = (q >= lo) & (q <= hi)
            rows = torch.arange(h)
            in_rect = (torch.minimum(rows, h - rows) <= ur)[:, None] & (torch.arange(w // 2 + 1) < vb)[None, :]
            assert not (inside & ~in_rect).any(), (h, w, band)
            assert nu == min(h, 2 * ur + 1) or nu == h
            expected = reference.band_mask(band, h, w).bool()
            assert torch.equal(~inside if band_cmp else inside, expected), (h, w, band)
    assert tr.band_rect(32, 32, *RadialBand.low(0.25).q_limits(32, 32), False)[:3] == (4, 9, 5)


# --------------------------------------------------------------------------- 5. launch budget
def test_channel_count_is_a_runtime_argument():
    """One compiled DFT kernel serves every channel count. With C a compile-time constant, C = 1 removed the
    channel loop and Triton 3.6 emitted a different kernel that faulted on an H100 at 64 x 64 (illegal memory
    access; benchmarks/README.md, "What an H100 measured"): C must stay a run-time loop bound, unspecialised."""
    import inspect

    from jafr_kernels.kernels import triton_packed as tp

    for kernel in (tr._ratio_dft_kernel, tr._ratio_bwd_dft_kernel, tr._ratio_and_grad_dft_kernel,
                   tp._ratio_packed_kernel, tp._ratio_bwd_packed_kernel, tp._ratio_and_grad_packed_kernel):
        fn = getattr(kernel, "fn", kernel)
        assert "constexpr" not in str(inspect.signature(fn).parameters["C"].annotation), kernel
        unspecialised = getattr(kernel, "do_not_specialize", None) or kernel.kwargs["do_not_specialize"]  # jit / interpreter
        assert "C" in unspecialised, kernel


@pytest.mark.parametrize("path", ["dft", "packed"])
def test_launch_budget_of_a_penalty_call(record_ops, path, monkeypatch):
    """freq_penalty forward+backward (ratio, power 2, radial band) on Triton: <= 2 launches, <= 4 other ops."""
    monkeypatch.setenv("JAFR_TRITON_PATH", path)
    x = _planes(8, 3, 32, 32, seed=20).requires_grad_(True)
    loss = jk.freq_penalty(x, 0.25, backend="triton")  # warm-up: DFT factors cached, kernels compiled
    torch.autograd.grad(loss, x)
    with record_ops() as rec:
        loss = jk.freq_penalty(x, 0.25, backend="triton")
        (dx,) = torch.autograd.grad(loss, x)
    assert rec.launches == [f"_ratio_{path}_kernel", f"_ratio_bwd_{path}_kernel"], rec.launches
    assert len(rec.ops) <= 4, rec.ops  # mean, its backward's div, autograd's ones_like
    assert rec.host_reads == []
    assert torch.isfinite(dx).all()


@pytest.mark.parametrize("path", ["dft", "packed"])
def test_launch_budget_of_a_value_and_grad_call(record_ops, path, monkeypatch):
    """freq_penalty_and_grad (small planes): exactly one launch, value and gradient from the same spectrum."""
    monkeypatch.setenv("JAFR_TRITON_PATH", path)
    x = _planes(8, 3, 32, 32, seed=21)
    jk.freq_penalty_and_grad(x, 0.25, backend="triton")  # warm-up: DFT factors cached, kernel compiled
    with record_ops() as rec:
        penalty, grad = jk.freq_penalty_and_grad(x, 0.25, backend="triton")
    assert rec.launches == [f"_ratio_and_grad_{path}_kernel"], rec.launches
    assert len(rec.ops) <= 2, rec.ops  # the mean of the per-sample values
    assert rec.host_reads == []
    assert torch.isfinite(penalty) and torch.isfinite(grad).all()


@pytest.mark.parametrize("path", ["dft", "packed", "fft"])
@pytest.mark.parametrize("mask", ["high", "weight"])
def test_ratio_and_grad_matches_forward_and_backward(path, mask):
    """ratio_and_grad on both paths equals the reference's value and scale * gradient (fp32 and fp16 x)."""
    for dtype in (torch.float32, torch.float16):
        x = _planes(3, 2, 20, 14, dtype=dtype, seed=22)
        ref_mask, weight, q_lo, q_hi = _mask(mask, 20, 14)
        value, dx = tr.ratio_and_grad(x, weight, q_lo, q_hi, True, 0.25, path=path)
        value_ref, dx_ref = _reference(x, ref_mask, True, torch.full((3,), 0.25, device=DEVICE))
        assert value.dtype == torch.float32 and dx.dtype == dtype and dx.shape == x.shape
        assert rel_err(value, value_ref) <= TOL
        assert rel_err(dx, dx_ref) <= (TOL if dtype == torch.float32 else 2.0**-10)
