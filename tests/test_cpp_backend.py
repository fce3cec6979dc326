"""The C++ backend's ops (``jafr_kernels.kernels.cpp`` -> ``torch.ops.jafr_cpp``) against the float64 reference.

Every transform path is forced in turn (``JAFR_CPP_PATH``): ``partial`` and ``full`` (the CPU default picks
one by cost), and ``fused``, which runs on the CPU the very routine that the CUDA backend launches as one
kernel per direction (``FusedRatioForward`` / ``FusedRatioBackward`` in ``csrc/spectral_math.h``), so these
tests execute the CUDA kernels' arithmetic here.

Contract of the fused power-2 ratio: ``ratio(x, weight, q_lo, q_hi, complement) -> (value (B,), stats (B, 2))``
with ``value_b = rho_b`` or ``1 - rho_b``, 0 for an all-zero sample, NaN for a sample holding NaN/Inf;
``ratio_backward(grad, ...) -> d(sum grad * value)/dx``.
"""
import itertools
import os

import pytest
import torch

from jafr_kernels import backends, reference
from jafr_kernels.reference import RadialBand

from conftest import CPU, TOLERANCE, rel_err

if backends.unavailable_reason("cpu", CPU) is not None:
    if os.environ.get("JAFR_REQUIRE_EXTENSION") == "1":
        raise RuntimeError("the C++ extension is required but not built: " + backends.unavailable_reason("cpu", CPU))
    pytest.skip("the C++ extension is not built", allow_module_level=True)

from jafr_kernels import _C  # noqa: E402
from jafr_kernels.kernels import cpp  # noqa: E402

PATHS = ["partial", "full", "fused", "auto"]
MASKS = {
    "low": RadialBand.low(0.25),
    "high": RadialBand.high(0.3),
    "between": RadialBand.between(0.2, 0.7),
    "weights": "weights",
}
# (B, H, W): the headline sizes, odd and non-square planes, the smallest plane, and a plane large enough
# that `auto` takes the FFT path.
PLANES = [(3, 28, 28), (3, 32, 32), (2, 31, 17), (2, 17, 33), (2, 64, 64), (2, 2, 2), (2, 96, 80)]
F32 = TOLERANCE[torch.float32]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setenv("JAFR_CPP_PATH", request.param)
    return request.param


def mask_args(name, h, w, dtype=torch.float32, seed=0):
    """(weight, q_lo, q_hi) for the op and the mask for the reference."""
    if MASKS[name] == "weights":
        g = torch.Generator().manual_seed(seed + 1)
        weights = torch.rand(h, w // 2 + 1, generator=g, dtype=torch.float64)
        weights = weights.masked_fill(weights < 0.3, 0.0)  # zeros exercise the support computation
        return weights.to(dtype), 0, reference.Q_MAX, weights
    band = MASKS[name]
    return None, *band.q_limits(h, w), band


def reference_value(x, mask, complement):
    """float64 value_b: rho_b, or 1 - rho_b with 0 for an all-zero sample (NaN propagates from x)."""
    x64 = x.double()
    rho = reference.low_freq_ratio(x64, mask)
    if not complement:
        return rho
    nonzero = x64.flatten(1).ne(0).any(dim=1)
    return torch.where(nonzero, 1.0 - rho, torch.zeros_like(rho))


def reference_value_and_grad(x, mask, complement, grad):
    x64 = x.detach().double().requires_grad_(True)
    value = reference_value(x64, mask, complement)
    (dx,) = torch.autograd.grad((value * grad.double()).sum(), x64)
    return value.detach(), dx


class Ratio(torch.autograd.Function):
    """value = cpp.ratio(...)[0] with cpp.ratio_backward as its gradient (for gradcheck)."""

    @staticmethod
    def forward(ctx, x, weight, q_lo, q_hi, complement):
        value, stats = cpp.ratio(x, weight, q_lo, q_hi, complement)
        ctx.save_for_backward(x, value, stats)
        ctx.args = (weight, q_lo, q_hi, complement)
        return value

    @staticmethod
    def backward(ctx, grad):
        x, value, stats = ctx.saved_tensors
        weight, q_lo, q_hi, complement = ctx.args
        return cpp.ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats), None, None, None, None


def random_input(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def cotangent(b, seed):
    return torch.randn(b, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64).float()


# ------------------------------------------------------------------------------------------------ values, gradients
@pytest.mark.parametrize("plane", PLANES, ids=lambda p: f"{p[1]}x{p[2]}")
def test_ratio_matches_reference(plane, path):
    """Values and gradients, fp32, every mask kind, C in {1, 3}, complement on and off, each path."""
    b, h, w = plane
    for c in (1, 3):
        x = random_input((b, c, h, w), seed=h * w + c)
        grad = cotangent(b, seed=c)
        for name in MASKS:
            weight, q_lo, q_hi, mask = mask_args(name, h, w, seed=c)
            for complement in (False, True):
                value, stats = cpp.ratio(x, weight, q_lo, q_hi, complement)
                dx = cpp.ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats)
                ref, ref_dx = reference_value_and_grad(x, mask, complement, grad)
                case = (c, name, complement)
                assert value.dtype == torch.float32 and value.shape == (b,), case
                assert stats.dtype == torch.float32 and stats.shape == (b, 2), case
                assert dx.dtype == x.dtype and dx.shape == x.shape, case
                if ref.abs().max() == 0:  # an empty band (e.g. `between` on a 2x2 plane)
                    assert torch.equal(value, ref.float()) and dx.abs().max() == 0, case
                    continue
                assert rel_err(value, ref) <= F32, case
                assert rel_err(dx, ref_dx) <= F32, case


def test_fp64_input_computes_in_fp64(path):
    x = random_input((2, 3, 15, 12), seed=3, dtype=torch.float64)
    grad = cotangent(2, 0).double()
    for name in MASKS:
        weight, q_lo, q_hi, mask = mask_args(name, 15, 12, torch.float64)
        value, stats = cpp.ratio(x, weight, q_lo, q_hi, True)
        dx = cpp.ratio_backward(grad, x, weight, q_lo, q_hi, True, value, stats)
        ref, ref_dx = reference_value_and_grad(x, mask, True, grad)
        assert value.dtype == stats.dtype == dx.dtype == torch.float64
        assert rel_err(value, ref) <= 1e-12 and rel_err(dx, ref_dx) <= 1e-12, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(dtype, path):
    """Half inputs are read as they are (exact once upcast): compare with the reference on the upcast input."""
    x = random_input((3, 3, 32, 32), seed=5, dtype=dtype)
    grad = cotangent(3, 1)
    value, stats = cpp.ratio(x, None, *RadialBand.low(0.25).q_limits(32, 32), True)
    dx = cpp.ratio_backward(grad, x, None, *RadialBand.low(0.25).q_limits(32, 32), True, value, stats)
    ref, ref_dx = reference_value_and_grad(x, RadialBand.low(0.25), True, grad)
    assert value.dtype == torch.float32 and dx.dtype == dtype
    assert rel_err(value, ref) <= F32
    # dx is rounded to the input dtype on the way out: the error is that rounding (2^-8 for bf16, 2^-11 fp16).
    assert rel_err(dx, ref_dx) <= 2.0 ** (-8 if dtype == torch.bfloat16 else -11)


@pytest.mark.parametrize("complement", [False, True])
@pytest.mark.parametrize("mask_name", ["low", "weights"])
def test_gradcheck_float64(path, mask_name, complement):
    for shape in ((2, 2, 7, 6), (2, 1, 6, 6)):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        weight, q_lo, q_hi, _ = mask_args(mask_name, *shape[-2:], torch.float64)
        assert torch.autograd.gradcheck(
            lambda t: Ratio.apply(t, weight, q_lo, q_hi, complement), (x,), eps=1e-6, atol=1e-8, rtol=1e-6
        )


def test_expanded_grad_is_read_in_place(path):
    """The grad of a mean reaches the backward as an expanded (stride-0) vector."""
    x = random_input((4, 3, 16, 16), seed=2)
    q = RadialBand.low(0.25).q_limits(16, 16)
    value, stats = cpp.ratio(x, None, *q, True)
    expanded = torch.tensor(0.25).expand(4)
    dx = cpp.ratio_backward(expanded, x, None, *q, True, value, stats)
    torch.testing.assert_close(dx, cpp.ratio_backward(torch.full((4,), 0.25), x, None, *q, True, value, stats))


# ------------------------------------------------------------------------------------------------ scales, zeros, NaN
@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20, 1e30])
def test_scale_invariance(path, scale):
    """fp32 holds |x| from 1e-30 to 1e30: same value, gradient scaled by 1/s, both matching the reference."""
    x = random_input((3, 3, 32, 32), seed=11)
    grad = cotangent(3, 2)
    q = RadialBand.low(0.25).q_limits(32, 32)
    base_value, base_stats = cpp.ratio(x, None, *q, True)
    base_dx = cpp.ratio_backward(grad, x, None, *q, True, base_value, base_stats)
    xs = x * scale
    value, stats = cpp.ratio(xs, None, *q, True)
    dx = cpp.ratio_backward(grad, xs, None, *q, True, value, stats)
    assert bool(torch.isfinite(value).all() and torch.isfinite(dx).all())
    assert rel_err(value, base_value) <= F32
    assert rel_err(dx.double() * scale, base_dx) <= F32
    ref, ref_dx = reference_value_and_grad(xs, RadialBand.low(0.25), True, grad)
    assert rel_err(value, ref) <= F32 and rel_err(dx, ref_dx) <= F32


def test_subnormal_sample(path):
    """Samples whose values are fp32 subnormals are lifted by an exact power of two inside the op: 1e-39 * randn,
    and three multiples of 2^-149 among zeros, next to a normal sample. Their gradients (up to 1e43 per unit of
    grad) are kept within fp32 by small grads; ratio_and_grad is checked too."""
    x = random_input((3, 1, 8, 8), seed=4)
    x[0] = x[0] * 1e-39  # below the smallest normal fp32 (1.2e-38)
    x[2] = 0.0
    x[2, 0, 0, 0], x[2, 0, 1, 2], x[2, 0, 5, 3] = 2.0**-149, 3 * 2.0**-149, -5 * 2.0**-149
    assert bool((x[0::2].abs() < torch.finfo(torch.float32).tiny).all())
    grad = cotangent(3, 3) * torch.tensor([1.0, 1.0, 1e-9])
    q = RadialBand.low(0.4).q_limits(8, 8)
    value, stats = cpp.ratio(x, None, *q, False)
    dx = cpp.ratio_backward(grad, x, None, *q, False, value, stats)
    ref, ref_dx = reference_value_and_grad(x, RadialBand.low(0.4), False, grad)
    value_vg, dx_vg = cpp.ratio_and_grad(x, None, *q, False, 1e-9)
    _, ref_dx_vg = reference_value_and_grad(x, RadialBand.low(0.4), False, torch.full((3,), 1e-9))
    assert rel_err(value, ref) <= F32 and rel_err(value_vg, ref) <= F32
    assert bool(torch.isfinite(dx).all() and torch.isfinite(dx_vg).all())
    for i in range(3):  # per sample: their gradients differ by up to 1e38
        assert rel_err(dx[i], ref_dx[i]) <= F32 and rel_err(dx_vg[i], ref_dx_vg[i]) <= F32, i


@pytest.mark.parametrize("complement", [False, True])
def test_zero_sample_gives_zero_and_zero_grad(path, complement):
    x = random_input((3, 3, 17, 12), seed=6)
    x[1] = 0
    grad = cotangent(3, 4)
    for name in MASKS:
        weight, q_lo, q_hi, mask = mask_args(name, 17, 12)
        value, stats = cpp.ratio(x, weight, q_lo, q_hi, complement)
        dx = cpp.ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats)
        ref, ref_dx = reference_value_and_grad(x, mask, complement, grad)
        assert value[1] == 0 and torch.equal(dx[1], torch.zeros_like(dx[1])), name
        assert rel_err(value, ref) <= F32 and rel_err(dx, ref_dx) <= F32, name


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("complement", [False, True])
def test_nonfinite_sample_gives_nan_for_that_sample_only(path, bad, complement):
    x = random_input((3, 3, 32, 32), seed=8)
    x[2, 1, 5, 7] = bad
    grad = cotangent(3, 5)
    for name in MASKS:
        weight, q_lo, q_hi, mask = mask_args(name, 32, 32)
        value, stats = cpp.ratio(x, weight, q_lo, q_hi, complement)
        dx = cpp.ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats)
        assert torch.isnan(value[2]) and bool(torch.isfinite(value[:2]).all()), name
        ref, ref_dx = reference_value_and_grad(x[:2], mask, complement, grad[:2])
        assert rel_err(value[:2], ref) <= F32 and rel_err(dx[:2], ref_dx) <= F32, name
        assert bool(torch.isnan(dx[2]).all()), name  # the NaN sample's gradient is NaN (propagated, not hidden)


# ------------------------------------------------------------------------------------------------ energy ops
def test_energy_ops_match_reference(path):
    """The other ops keep their semantics (the fused path only applies to the ratio; elsewhere it is `auto`)."""
    x = random_input((2, 3, 19, 16), seed=9)
    grad = torch.randn(2, 3, dtype=torch.float64)
    for name in MASKS:
        weight, q_lo, q_hi, mask = mask_args(name, 19, 16)
        for power in (1, 2):
            x64 = x.double().requires_grad_(True)
            ref = reference.spectral_energy(x64, mask, power)
            (ref_dx,) = torch.autograd.grad((ref * grad).sum(), x64)
            assert rel_err(cpp.energy(x, weight, q_lo, q_hi, power), ref) <= F32, (name, power)
            dx = cpp.energy_backward(grad.float(), x, weight, q_lo, q_hi, power)
            assert rel_err(dx, ref_dx) <= F32, (name, power)
    g = torch.randn(19, 9, dtype=torch.float64)
    x64 = x.double().requires_grad_(True)
    ref = reference.mean_magnitude(x64)
    (ref_dx,) = torch.autograd.grad((ref * g).sum(), x64)
    assert rel_err(cpp.mean_magnitude(x), ref) <= F32
    assert rel_err(cpp.mean_magnitude_backward(g.float(), x), ref_dx) <= F32


# ------------------------------------------------------------------------------------------------ registration
OPS = ["energy", "energy_backward", "mean_magnitude", "mean_magnitude_backward", "band_ratio", "band_ratio_backward"]


@pytest.mark.parametrize("op", OPS)
def test_ops_registered_per_dispatch_key(op):
    name = f"jafr_cpp::{op}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA") == cpp.built_with_cuda()


def test_opcheck():
    x = random_input((2, 3, 9, 8), seed=1)
    q = RadialBand.low(0.5).q_limits(9, 8)
    weights = torch.rand(9, 5)
    value, stats = cpp.ratio(x, None, *q, True)
    ops = torch.ops.jafr_cpp
    samples = [
        (ops.band_ratio, (x, None, *q, True, 0)),
        (ops.band_ratio, (x, weights, 0, reference.Q_MAX, False, 3)),
        (ops.band_ratio_backward, (torch.randn(2), x, None, *q, True, value, stats, 0)),
        (ops.band_ratio_backward, (torch.randn(2), x, None, *q, True, value, stats, 3)),
        (ops.energy, (x, None, *q, 2, 0)),
        (ops.energy_backward, (torch.randn(2, 3), x, weights, 0, reference.Q_MAX, 1, 0)),
        (ops.mean_magnitude, (x,)),
        (ops.mean_magnitude_backward, (torch.randn(9, 5), x)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


# ------------------------------------------------------------------------------------------------ no host work per call
_FRESH_SIZES = itertools.count(37)  # plane heights no other test uses, so the first call of each is uncached
_TABLE_BUILDING = {"aten::arange", "aten::cos", "aten::sin", "aten::remainder", "aten::cat", "aten::stack"}
_HOST_READS = {"aten::item", "aten::_local_scalar_dense"}


def _recorded_ops(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("name", ["low", "weights"])
def test_tables_cached_on_host_integers(path, name):
    """After a first call of a size, a call builds no table and reads no tensor value: the twiddle and row
    tables are cached under keys of host integers (sizes and band limits), not of tensor contents."""
    x = random_input((4, 3, 24, 20), seed=12)
    weight, q_lo, q_hi, _ = mask_args(name, 24, 20)
    grad = cotangent(4, 6)

    def call():
        value, stats = cpp.ratio(x, weight, q_lo, q_hi, True)
        cpp.ratio_backward(grad, x, weight, q_lo, q_hi, True, value, stats)

    call()
    size = _C._table_cache_size()
    ops = _recorded_ops(call)
    assert _C._table_cache_size() == size
    assert not ops & _HOST_READS, ops & _HOST_READS
    assert not ops & _TABLE_BUILDING, ops & _TABLE_BUILDING
    # the first call of a new size builds its tables (the FFT path needs none); judged by the ops it runs, not by
    # the cache's size, which the cache's bound resets once earlier tests have filled it
    h = next(_FRESH_SIZES)
    fresh = _recorded_ops(lambda: cpp.ratio(random_input((1, 1, h, 20), seed=0), None,
                                            *RadialBand.low(0.3).q_limits(h, 20), False))
    assert fresh & _TABLE_BUILDING or path == "full", fresh
