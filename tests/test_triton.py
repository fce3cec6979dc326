"""The Triton backend against the float64 reference (``jafr_kernels.reference``).

Without a GPU these tests run the kernels with the Triton interpreter on CPU tensors; on a CUDA machine
(or with ``JAFR_TRITON_TEST_DEVICE=cuda``, as ``scripts/device_check.sh`` does) the same tests run the
compiled kernels on the GPU, plus the ``gpu``-marked ones. ``JAFR_TRITON_TEST_DEVICE=cpu`` forces the
interpreter.

TRITON_INTERPRET must be set before ``triton`` is first imported (its standard library is ``@jit``-decorated
at import time, and ``triton.jit`` picks interpreter or compiler when it decorates), so ``tests/conftest.py``
sets it on GPU-less machines; if triton was already imported in compiled mode, the interpreter tests are
skipped with that reason (run this file on its own).

Tolerances (one table, ``TOL``): the kernels compute in fp32 (two chained DFT matrix products, or cuFFT,
then a sum over bins), whose normwise error is a few 1e-7 for these sizes (unit roundoff 6e-8 times a
small multiple of log2(N)); 1e-4 relative leaves two orders of margin yet catches any wrong weight,
mask bin or sign, which changes results by >= 1e-2. fp64 runs must match to 1e-10.
"""
import pytest
import torch

pytest.importorskip("triton")

import jafr_kernels as jk  # noqa: E402
from jafr_kernels import backends, reference  # noqa: E402
from jafr_kernels.reference import RadialBand  # noqa: E402

from conftest import TRITON_TEST_DEVICE, rel_err as _rel_err, triton_tests_skip_reason  # noqa: E402

if triton_tests_skip_reason():
    pytest.skip(triton_tests_skip_reason(), allow_module_level=True)

INTERPRETED = TRITON_TEST_DEVICE == "cpu"
DEVICE = torch.device(TRITON_TEST_DEVICE)
TOL = {torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4, torch.float64: 1e-10}

from jafr_kernels.kernels import triton_spectral as ts  # noqa: E402

# (H, W, path): every plane size on each path that serves it; 17x33 sits just past a block boundary.
SHAPES = [
    (28, 28, "dft"), (32, 32, "dft"), (31, 17, "dft"), (17, 33, "dft"), (64, 64, "dft"), (6, 5, "dft"),
    (28, 28, "fft"), (31, 17, "fft"), (64, 64, "fft"), (96, 96, "fft"),
]
BANDS = {
    "low": RadialBand.low(0.25),
    "high": RadialBand.high(0.25),
    "between": RadialBand.between(0.2, 0.6),
    "all": RadialBand.all(),
}


def _planes(b, c, h, w, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(device=DEVICE, dtype=dtype)


def _weight_map(h, w, seed=1):
    """A non-negative map that is not symmetric in u, so the FFT path's edge-column symmetrisation matters."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(h, w // 2 + 1, generator=g, dtype=torch.float64).to(DEVICE)


def _reference_energy(x, mask, power, grad):
    """(E, dE/dx contracted with grad) by autograd of the float64 reference."""
    xr = x.detach().to(torch.float64).requires_grad_(True)
    e = reference.spectral_energy(xr, mask, power)
    (dx,) = torch.autograd.grad((e * grad.to(torch.float64)).sum(), xr)
    return e.detach(), dx


def _reference_magnitude(x, grad):
    xr = x.detach().to(torch.float64).requires_grad_(True)
    m = reference.mean_magnitude(xr)
    (dx,) = torch.autograd.grad((m * grad.to(torch.float64)).sum(), xr)
    return m.detach(), dx


# --------------------------------------------------------------------------- 1. primitives vs reference
# Each mask once with C = 1 or C = 3 (both counts still meet every shape, path and power).
MASK_CHANNELS = [("low", 1), ("high", 3), ("between", 3), ("all", 1), ("weight", 3)]


@pytest.mark.parametrize("h,w,path", SHAPES)
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("mask,channels", MASK_CHANNELS)
def test_energy_forward_backward(h, w, path, power, mask, channels):
    x = _planes(2, channels, h, w)
    grad = _planes(2, channels, 1, 1, seed=2)[..., 0, 0]
    if mask == "weight":
        weight, q_lo, q_hi, ref_mask = _weight_map(h, w).float(), 0, 0, _weight_map(h, w)
    else:
        band = BANDS[mask]
        weight, (q_lo, q_hi), ref_mask = None, band.q_limits(h, w), band
    e_ref, dx_ref = _reference_energy(x, ref_mask, power, grad)

    e = ts.energy(x, weight, q_lo, q_hi, power, path=path)
    assert e.shape == (2, channels) and e.dtype == torch.float32
    assert _rel_err(e, e_ref) <= TOL[torch.float32]

    dx = ts.energy_backward(grad, x, weight, q_lo, q_hi, power, path=path)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert _rel_err(dx, dx_ref) <= TOL[torch.float32]


@pytest.mark.parametrize("h,w,path", SHAPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_mean_magnitude_forward_backward(h, w, path, channels):
    x = _planes(3, channels, h, w)
    grad = _planes(1, 1, h, w // 2 + 1, seed=3)[0, 0]
    m_ref, dx_ref = _reference_magnitude(x, grad)

    m = ts.mean_magnitude(x, path=path)
    assert m.shape == (h, w // 2 + 1) and m.dtype == torch.float32
    assert _rel_err(m, m_ref) <= TOL[torch.float32]

    dx = ts.mean_magnitude_backward(grad, x, path=path)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert _rel_err(dx, dx_ref) <= TOL[torch.float32]


@pytest.mark.parametrize("h,w", [(6, 8), (7, 5)])
@pytest.mark.parametrize("kind", ["energy", "magnitude"])
def test_gradient_spectrum_edge_columns_are_hermitian(h, w, kind):
    """The FFT path's gradient spectrum has Hermitian columns 0 and W/2, as cuFFT's c2r assumes.

    The CPU c2r happens to give the right answer without this, so the end-to-end tests here cannot see a
    missing symmetrisation; this checks the kernel's output directly (non-symmetric weight / gradient maps).
    """
    x = _planes(2, 1, h, w)
    spec = ts._spectrum(x, torch.float32)
    if kind == "energy":
        g = ts.gradient_spectrum(spec, torch.ones(2, device=DEVICE), _weight_map(h, w).float(), 0, 0, 2, w)
    else:
        g = ts.gradient_spectrum(spec, _planes(1, 1, h, w // 2 + 1, seed=4)[0, 0], None, 0, 0, None, w)
    spectrum = torch.view_as_complex(g)
    mirror = (-torch.arange(h, device=DEVICE)) % h
    for col in [0] + ([w // 2] if w % 2 == 0 else []):
        column = spectrum[:, :, col]
        assert column.abs().max() > 0
        torch.testing.assert_close(column, column[:, mirror].conj(), rtol=0, atol=1e-6 * float(column.abs().max()))


@pytest.mark.parametrize("path", ["dft", "fft"])
@pytest.mark.parametrize("power", [1, 2])
def test_float64_matches_reference_tightly(path, power):
    x = _planes(2, 3, 31, 17, dtype=torch.float64)
    grad = _planes(2, 3, 1, 1, dtype=torch.float64, seed=2)[..., 0, 0]
    band = RadialBand.low(0.4)
    e_ref, dx_ref = _reference_energy(x, band, power, grad)
    e = ts.energy(x, None, *band.q_limits(31, 17), power, path=path)
    dx = ts.energy_backward(grad, x, None, *band.q_limits(31, 17), power, path=path)
    assert e.dtype == torch.float64 and dx.dtype == torch.float64
    assert _rel_err(e, e_ref) <= TOL[torch.float64]
    assert _rel_err(dx, dx_ref) <= TOL[torch.float64]


@pytest.mark.parametrize("path", ["dft", "fft"])
@pytest.mark.parametrize(
    "dtype,out_rounding",
    [
        (torch.float16, 2.0**-10),  # dx is rounded to fp16 on the way out (11-bit significand)
        pytest.param(torch.bfloat16, 2.0**-7, marks=[pytest.mark.gpu, pytest.mark.skipif(INTERPRETED, reason="bf16 is not supported by the Triton interpreter; GPU run only")]),
    ],
)
def test_half_precision_input_is_upcast(path, dtype, out_rounding):
    """Half input: compared with the reference on the same half values, so only fp32 maths error remains."""
    x = _planes(2, 3, 32, 32, dtype=dtype)
    grad = torch.ones(2, 3, device=DEVICE)
    band = RadialBand.low(0.3)
    e_ref, dx_ref = _reference_energy(x, band, 2, grad)
    e = ts.energy(x, None, *band.q_limits(32, 32), 2, path=path)
    dx = ts.energy_backward(grad, x, None, *band.q_limits(32, 32), 2, path=path)
    assert e.dtype == torch.float32 and dx.dtype == dtype
    assert _rel_err(e, e_ref) <= TOL[dtype]
    assert _rel_err(dx, dx_ref) <= out_rounding


@pytest.mark.parametrize("path", ["dft", "fft"])
def test_zero_planes_give_zero_not_nan(path):
    """|X| = 0 everywhere: power-1 and magnitude gradients are defined as 0 there."""
    x = torch.zeros(1, 2, 28, 28, device=DEVICE)
    assert torch.equal(ts.energy(x, None, 0, reference.Q_MAX, 1, path=path), torch.zeros(1, 2, device=DEVICE))
    dx = ts.energy_backward(torch.ones(1, 2, device=DEVICE), x, None, 0, reference.Q_MAX, 1, path=path)
    assert torch.equal(dx, torch.zeros_like(x))
    dm = ts.mean_magnitude_backward(torch.ones(28, 15, device=DEVICE), x, path=path)
    assert torch.equal(dm, torch.zeros_like(x))


def test_non_contiguous_input():
    wide = _planes(2, 6, 28, 28)
    x = wide[:, ::2]
    assert not x.is_contiguous()
    band = RadialBand.low(0.25)
    e_ref, _ = _reference_energy(x, band, 2, torch.ones(2, 3, device=DEVICE))
    assert _rel_err(ts.energy(x, None, *band.q_limits(28, 28), 2), e_ref) <= TOL[torch.float32]


def test_path_selection_and_errors():
    assert ts.plane_path(32, 32) == "dft" and ts.plane_path(31, 17) == "dft"
    assert ts.plane_path(64, 64) == "fft" and ts.plane_path(96, 96) == "fft"
    assert ts.plane_path(64, 64, "dft") == "dft"
    with pytest.raises(ValueError, match="path='dft' serves planes up to"):
        ts.plane_path(96, 96, "dft")
    with pytest.raises(ValueError, match="path must be"):
        ts.plane_path(8, 8, "fast")
    with pytest.raises(ValueError, match="grad must have shape"):
        ts.energy_backward(torch.ones(3, device=DEVICE), _planes(1, 3, 8, 8), None, 0, 1, 2)


@pytest.mark.parametrize("ratio_only", ["gemm", "packed"])
def test_ratio_only_paths_in_the_environment_leave_these_kernels_their_own(ratio_only, monkeypatch):
    """JAFR_TRITON_PATH naming one of the band ratio's own paths forces the ratio, not the energy kernels."""
    monkeypatch.setenv("JAFR_TRITON_PATH", ratio_only)
    assert ts.plane_path(32, 32) == "dft" and ts.plane_path(96, 96) == "fft"


# --------------------------------------------------------------------------- 1b. through the public API
@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("target", ["low", "high"])
@pytest.mark.parametrize("formulation", ["ratio", "official"])
def test_freq_penalty_matches_reference_backend(size, target, formulation):
    jac = _planes(3, 3, size, size, seed=5)

    def value_and_grad(backend):
        j = jac.clone().requires_grad_(True)
        p = jk.freq_penalty(j, 0.25, target=target, formulation=formulation, backend=backend)
        (g,) = torch.autograd.grad(p, j)
        return p.detach(), g

    p_ref, g_ref = value_and_grad("reference")
    p_tri, g_tri = value_and_grad("triton")
    assert abs(float(p_tri) - float(p_ref)) <= TOL[torch.float32] * max(1.0, abs(float(p_ref)))
    assert _rel_err(g_tri, g_ref) <= TOL[torch.float32]


@pytest.mark.parametrize("power", [1, 2])
def test_low_freq_ratio_matches_reference_backend(power):
    x = _planes(4, 3, 31, 17, seed=6)
    xt = x.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    r_t = jk.low_freq_ratio(xt, 0.3, power=power, backend="triton")
    r_r = jk.low_freq_ratio(xr, 0.3, power=power, backend="reference")
    assert _rel_err(r_t, r_r) <= TOL[torch.float32]
    weights = torch.arange(1.0, 5.0, device=DEVICE)
    (g_t,) = torch.autograd.grad((r_t * weights).sum(), xt)
    (g_r,) = torch.autograd.grad((r_r * weights).sum(), xr)
    assert _rel_err(g_t, g_r) <= TOL[torch.float32]


# --------------------------------------------------------------------------- 2. gradcheck (float64)
class _Energy(torch.autograd.Function):
    """The launcher pair of one path as an autograd function, so gradcheck sees exactly those kernels."""

    @staticmethod
    def forward(ctx, x, weight, q_lo, q_hi, power, path):
        ctx.save_for_backward(x)
        ctx.args = (weight, q_lo, q_hi, power, path)
        return ts.energy(x, weight, q_lo, q_hi, power, path=path)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        weight, q_lo, q_hi, power, path = ctx.args
        return ts.energy_backward(grad.contiguous(), x, weight, q_lo, q_hi, power, path=path), *[None] * 5


class _Magnitude(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, path):
        ctx.save_for_backward(x)
        ctx.path = path
        return ts.mean_magnitude(x, path=path)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ts.mean_magnitude_backward(grad.contiguous(), x, path=ctx.path), None


# Full gradcheck perturbs every input element (one interpreted launch each), so these use gradcheck's
# fast mode (a random projection v^T J u against finite differences: a handful of launches); one full
# gradcheck per path keeps the element-wise check. Planes tiny, odd and even W.
GRADCHECK_SHAPES = [(6, 5, "dft"), (6, 5, "fft"), (5, 6, "dft"), (5, 6, "fft")]


@pytest.mark.parametrize("h,w,path", GRADCHECK_SHAPES)
@pytest.mark.parametrize("power", [1, 2])
def test_gradcheck_energy(h, w, path, power):
    x = _planes(1, 2, h, w, dtype=torch.float64, seed=7).requires_grad_(True)
    weight = _weight_map(h, w)
    assert torch.autograd.gradcheck(lambda t: _Energy.apply(t, weight, 0, 0, power, path), (x,), fast_mode=True)
    q_lo, q_hi = RadialBand.low(0.6).q_limits(h, w)
    assert torch.autograd.gradcheck(lambda t: _Energy.apply(t, None, q_lo, q_hi, power, path), (x,), fast_mode=True)


@pytest.mark.parametrize("h,w,path", GRADCHECK_SHAPES)
def test_gradcheck_mean_magnitude(h, w, path):
    x = _planes(1, 2, h, w, dtype=torch.float64, seed=8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _Magnitude.apply(t, path), (x,), fast_mode=True)


@pytest.mark.parametrize("path", ["dft", "fft"])
def test_gradcheck_full(path):
    """Element-wise gradcheck (every input perturbed) of the power-1 energy with a weight map."""
    x = _planes(1, 1, 5, 6, dtype=torch.float64, seed=10).requires_grad_(True)
    weight = _weight_map(5, 6)
    assert torch.autograd.gradcheck(lambda t: _Energy.apply(t, weight, 0, 0, 1, path), (x,))


def test_gradcheck_public_api():
    """Through the registered custom ops (auto path) as users call them."""
    x = _planes(1, 2, 6, 6, dtype=torch.float64, seed=9).requires_grad_(True)
    check = lambda f: torch.autograd.gradcheck(f, (x,), fast_mode=True)  # noqa: E731
    assert check(lambda t: jk.spectral_energy(t, 0.5, power=2, backend="triton"))
    assert check(lambda t: jk.freq_penalty(t, 0.5, power=1, backend="triton"))
    assert check(lambda t: jk.mean_magnitude(t, backend="triton"))


def test_opcheck_custom_ops_with_triton():
    """The registered ops (schema, fake kernels, autograd registration) served by the Triton backend."""
    from jafr_kernels import ops

    x = _planes(1, 2, 6, 5, dtype=torch.float64, seed=11).requires_grad_(True)
    q_lo, q_hi = RadialBand.low(0.5).q_limits(6, 5)
    torch.library.opcheck(ops.spectral_energy, (x, None, q_lo, q_hi, 2, "triton"))
    torch.library.opcheck(ops.mean_magnitude, (x, "triton"))


# --------------------------------------------------------------------------- 3. dispatch
def _fake(available):
    def reason(name, device):
        return None if name in available else f"{name} is off in this test"

    return reason


@pytest.mark.parametrize(
    "available,expected",
    [({"triton", "cuda", "reference"}, "triton"), ({"cuda", "reference"}, "cuda"), ({"reference"}, "reference")],
)
def test_auto_dispatch_order_on_cuda(available, expected, monkeypatch):
    monkeypatch.delenv("JAFR_BACKEND", raising=False)
    assert backends.choose("auto", torch.device("cuda"), reason=_fake(available)) == expected


def test_explicit_triton_request_reports_why_not(monkeypatch):
    monkeypatch.delenv("JAFR_BACKEND", raising=False)
    with pytest.raises(backends.BackendUnavailableError, match="triton is off"):
        backends.choose("triton", torch.device("cuda"), reason=_fake({"reference"}))


def test_real_availability_matches_mode():
    """Under the interpreter, triton serves CPU tensors; compiled, it serves CUDA ones."""
    assert backends.unavailable_reason("triton", DEVICE) is None


# --------------------------------------------------------------------------- GPU-only checks


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="TF32 exists only on the GPU")
def test_tf32_opt_in_error_bound_gpu(monkeypatch):
    """JAFR_TRITON_DOT=tf32: relative error within the documented ~8 * 2^-11 bound."""
    monkeypatch.setenv("JAFR_TRITON_DOT", "tf32")
    x = _planes(8, 3, 32, 32)
    band = RadialBand.low(0.25)
    e_ref, _ = _reference_energy(x, band, 2, torch.ones(8, 3, device=DEVICE))
    assert _rel_err(ts.energy(x, None, *band.q_limits(32, 32), 2, path="dft"), e_ref) <= 8 * 2.0**-11


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="batch-size sweep is for the compiled kernels")
@pytest.mark.parametrize("h,w", [(32, 32), (64, 64), (224, 224)])
def test_large_batch_gpu(h, w):
    x = _planes(128, 3, h, w)
    band = RadialBand.low(0.25)
    e_ref, dx_ref = _reference_energy(x, band, 2, torch.ones(128, 3, device=DEVICE))
    assert _rel_err(ts.energy(x, None, *band.q_limits(h, w), 2), e_ref) <= TOL[torch.float32]
    dx = ts.energy_backward(torch.ones(128, 3, device=DEVICE), x, None, *band.q_limits(h, w), 2)
    assert _rel_err(dx, dx_ref) <= TOL[torch.float32]
    m_ref, _ = _reference_magnitude(x, torch.ones(h, w // 2 + 1, device=DEVICE))
    assert _rel_err(ts.mean_magnitude(x), m_ref) <= TOL[torch.float32]
