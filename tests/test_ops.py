"""Every spectral op, on every CPU-capable backend, against the float64 reference (jafr_kernels.reference)."""
import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jafr_kernels as jk
from jafr_kernels import backends, ops, reference
from jafr_kernels.reference import RadialBand

from conftest import CPU, TOLERANCE, cpu_backends, rel_err

# Odd, prime, non-square, tiny and just-past-power-of-two planes; C in {1, 3}.
SHAPES = [
    (2, 1, 2, 2),
    (3, 3, 7, 5),
    (2, 1, 13, 13),
    (4, 3, 32, 32),
    (2, 3, 28, 28),
    (3, 1, 31, 17),
    (2, 3, 17, 31),
    (1, 3, 11, 64),
    (2, 1, 3, 97),
    (2, 3, 33, 33),
]
LAYOUTS = ["contiguous", "sliced", "channels_last"]
MASKS = {
    "low0.25": RadialBand.low(0.25),
    "low0.5": RadialBand.low(0.5),
    "high0.3": RadialBand.high(0.3),
    "between": RadialBand.between(0.2, 0.7),
    "all": RadialBand.all(),
    "weights": "weights",
}


def make_input(shape, layout, dtype=torch.float32, seed=0):
    """A fresh random (B, C, H, W) tensor in the given memory layout."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    if layout == "sliced":  # non-contiguous: every other column of a wider tensor
        return torch.randn(b, c, h, 2 * w, generator=g, dtype=torch.float64)[..., ::2].to(dtype)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def make_mask(name, h, w, seed=0):
    if MASKS[name] == "weights":
        g = torch.Generator().manual_seed(seed + 1)
        weights = torch.rand(h, w // 2 + 1, generator=g, dtype=torch.float64)
        return weights.masked_fill(weights < 0.3, 0.0)  # zeros exercise the support computation
    return MASKS[name]


def grad_of(fn, x, seed=0):
    """Value and d(sum(fn(x) * r))/dx for a fixed random cotangent r."""
    x = x.detach().requires_grad_(True)
    out = fn(x)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64).to(out.dtype)
    (dx,) = torch.autograd.grad((out * r).sum(), x)
    return out.detach(), dx


def mask_for_dtype(mask, dtype):
    return mask.to(dtype) if isinstance(mask, torch.Tensor) else mask


# ------------------------------------------------------------------------------------------------ CPU backend
@pytest.mark.parametrize("case", range(len(SHAPES) * len(LAYOUTS)))
def test_cpu_backend_matches_reference(case, cpp_path):
    """>= 50 random cases per transform path: energies (every mask kind, p = 1, 2), ratios, penalties, magnitudes."""
    if "cpu" not in cpu_backends():
        pytest.fail("the C++ extension is not built: " + backends.unavailable_reason("cpu", CPU))
    shape, layout = SHAPES[case // len(LAYOUTS)], LAYOUTS[case % len(LAYOUTS)]
    x = make_input(shape, layout, seed=case)
    h, w = shape[-2:]
    tol = TOLERANCE[torch.float32]
    for name, power in itertools.product(MASKS, (1, 2)):
        mask = make_mask(name, h, w, seed=case)
        val, dx = grad_of(lambda t: jk.spectral_energy(t, mask_for_dtype(mask, torch.float32), power=power, backend="cpu"), x)
        ref, ref_dx = grad_of(lambda t: reference.spectral_energy(t, mask, power), x.double())
        assert val.dtype == torch.float32 and val.shape == shape[:2]
        assert rel_err(val, ref) <= tol, (name, power)
        assert rel_err(dx, ref_dx) <= tol, (name, power)
    for power, target in itertools.product((1, 2), ("low", "high")):
        band = RadialBand.low(0.4)
        val, dx = grad_of(lambda t: jk.low_freq_ratio(t, 0.4, power=power, backend="cpu"), x)
        ref, ref_dx = grad_of(lambda t: reference.low_freq_ratio(t, band, power), x.double())
        assert rel_err(val, ref) <= tol and rel_err(dx, ref_dx) <= tol, ("ratio", power)
        val, dx = grad_of(lambda t: jk.freq_penalty(t, 0.4, target=target, power=power, reduction="none", backend="cpu"), x)
        ref, ref_dx = grad_of(lambda t: reference.freq_penalty(t, band, target, power, "none"), x.double())
        assert rel_err(val, ref) <= tol and rel_err(dx, ref_dx) <= tol, ("penalty", power, target)
    val, dx = grad_of(lambda t: jk.mean_magnitude(t, backend="cpu"), x)
    ref, ref_dx = grad_of(reference.mean_magnitude, x.double())
    assert rel_err(val, ref) <= tol and rel_err(dx, ref_dx) <= tol, "mean_magnitude"
    if h == w:
        val, dx = grad_of(lambda t: jk.freq_penalty(t, formulation="official", backend="cpu"), x)
        ref, ref_dx = grad_of(reference.official_penalty, x.double())
        assert rel_err(val, ref) <= tol and rel_err(dx, ref_dx) <= tol, "official"


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(backend, dtype):
    x = make_input((2, 3, 16, 12), "contiguous", dtype)
    val, dx = grad_of(lambda t: jk.freq_penalty(t, reduction="none", backend=backend), x)
    ref, _ = grad_of(lambda t: reference.freq_penalty(t, RadialBand.low(0.25), "low", 2, "none"), x.double())
    assert val.dtype == torch.float32 and dx.dtype == dtype
    assert rel_err(val, ref) <= TOLERANCE[dtype]


# ------------------------------------------------------------------------------------------------ independent checks
@pytest.mark.parametrize("shape", [(2, 3, 9, 14), (3, 1, 32, 32), (2, 1, 15, 15)])
def test_numpy_fft_oracle_and_parseval(shape):
    """Energies and ratios against numpy.fft on the *full* spectrum, and Parseval in float64."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    h, w = shape[-2:]
    full = np.abs(np.fft.fft2(x)) ** 2  # (B, C, H, W), no Hermitian bookkeeping needed
    fu = np.minimum(np.arange(h), h - np.arange(h)) / h
    fv = np.minimum(np.arange(w), w - np.arange(w)) / w
    radius = np.sqrt((fu[:, None] / 0.5) ** 2 + (fv[None, :] / 0.5) ** 2)
    cutoff = 0.45
    low = radius <= cutoff
    expected_low = (full * low).sum(axis=(-2, -1))
    expected_ratio = expected_low.sum(1) / full.sum(axis=(1, 2, 3))
    xt = torch.from_numpy(x)
    for backend in cpu_backends():
        energy = jk.spectral_energy(xt, cutoff, backend=backend)
        assert rel_err(energy, torch.from_numpy(expected_low)) <= 1e-10, backend
        ratio = jk.low_freq_ratio(xt, cutoff, backend=backend)
        assert rel_err(ratio, torch.from_numpy(expected_ratio)) <= 1e-10, backend
        e_all = jk.spectral_energy(xt, RadialBand.all(), backend=backend)
        parseval = h * w * (x**2).sum(axis=(-2, -1))
        assert rel_err(e_all, torch.from_numpy(parseval)) <= 1e-6, backend


def test_radial_mask_geometry():
    m = jk.radial_mask(32, 32, 0.25)
    assert m.shape == (32, 17) and m.dtype == torch.float32
    assert m[4, 0] == 1 and m[5, 0] == 0 and m[0, 4] == 1 and m[28, 0] == 1  # r = 0.25 exactly is inside
    high = jk.radial_mask(32, 32, 0.25, band="high")
    torch.testing.assert_close(m + high, torch.ones_like(m))
    ring = jk.radial_mask(31, 17, (0.2, 0.6), band="band")
    r = reference.normalised_radius(31, 17)
    assert bool(((ring == 1) == ((r >= 0.2 - 1e-12) & (r < 0.6 - 1e-12))).all())
    # symmetric: m(u, v) = m(-u, v) in rfft2 layout (the v mirror is implicit)
    torch.testing.assert_close(m[1:], m[1:].flip(0))


# ------------------------------------------------------------------------------------------------ official formulation
def authors_literal(jac, max_pow=1.0, eps=1e-5):
    """The authors' regulariser, restated literally (rfft2().abs() in place of the legacy torch.rfft + norm)."""
    k = 1 + jac.shape[-2] // 2
    fourier_map = torch.fft.rfft2(jac).abs().mean(dim=(0, 1))[:k]
    pow_range = torch.linspace(max_pow, -max_pow, k, dtype=jac.dtype) + 1e-5
    m = fourier_map + eps
    row_products = torch.prod(m ** pow_range[None, :], dim=1)
    col_products = torch.prod(m ** pow_range[:, None], dim=0)
    bias = torch.log(row_products.sum() + col_products.sum())
    return -bias


@pytest.mark.parametrize("shape,max_pow", [((4, 3, 32, 32), 1.0), ((3, 1, 28, 28), 1.0), ((2, 3, 15, 15), 0.5), ((2, 3, 16, 16), -1.0)])
def test_official_matches_authors_literal(shape, max_pow):
    x = make_input(shape, "contiguous", torch.float64, seed=shape[-1]) * 0.1
    ref, ref_dx = grad_of(lambda t: authors_literal(t, max_pow), x)
    target = "low" if max_pow > 0 else "high"
    for backend in cpu_backends():
        val, dx = grad_of(lambda t: jk.freq_penalty(t, formulation="official", max_pow=abs(max_pow), target=target, backend=backend), x)
        assert rel_err(val, ref) <= 1e-6, backend
        assert rel_err(dx, ref_dx) <= 1e-6, backend


# ------------------------------------------------------------------------------------------------ autograd machinery
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_every_op(backend, cpp_path):
    if backend not in cpu_backends():
        pytest.fail(f"backend {backend} unavailable: {backends.unavailable_reason(backend, CPU)}")
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    xs = torch.randn(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(7, 4, dtype=torch.float64)
    checks = {
        "energy_low": lambda t: jk.spectral_energy(t, 0.5, backend=backend),
        "energy_mag": lambda t: jk.spectral_energy(t, RadialBand.between(0.1, 0.9), power=1, backend=backend),
        "energy_weights": lambda t: jk.spectral_energy(t, weights, backend=backend),
        "ratio": lambda t: jk.low_freq_ratio(t, 0.5, backend=backend),
        "ratio_p1": lambda t: jk.low_freq_ratio(t, 0.5, power=1, backend=backend),
        "penalty_high": lambda t: jk.freq_penalty(t, 0.6, target="high", reduction="none", backend=backend),
        "mean_magnitude": lambda t: jk.mean_magnitude(t, backend=backend),
    }
    for name, fn in checks.items():
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-5), name
    assert torch.autograd.gradcheck(lambda t: jk.freq_penalty(t, formulation="official", backend=backend), (xs,), eps=1e-6, atol=1e-7)


def op_samples():
    x = torch.randn(2, 3, 9, 8)
    weights = torch.rand(9, 5)
    q_lo, q_hi = RadialBand.low(0.5).q_limits(9, 8)
    return [
        (ops.spectral_energy, (x.clone().requires_grad_(), None, q_lo, q_hi, 2, "cpu")),
        (ops.spectral_energy, (x.clone().requires_grad_(), weights, 0, reference.Q_MAX, 1, "cpu")),
        (ops.spectral_energy_backward, (torch.randn(2, 3), x, None, q_lo, q_hi, 2, "cpu")),
        (ops.mean_magnitude, (x.clone().requires_grad_(), "cpu")),
        (ops.mean_magnitude_backward, (torch.randn(9, 5), x, "cpu")),
        (ops.band_ratio_op, (x.clone().requires_grad_(), None, q_lo, q_hi, False, "cpu")),
        (ops.band_ratio_op, (x.clone().requires_grad_(), weights, 0, reference.Q_MAX, True, "cpu")),
        (ops.band_ratio_backward_op,
         (torch.randn(2), x, None, q_lo, q_hi, True, *ops.band_ratio_op(x, None, q_lo, q_hi, True, "cpu"), "cpu")),
    ]


@pytest.mark.parametrize("index", range(8))
def test_opcheck(index):
    op, args = op_samples()[index]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def loss(j):
        return jk.freq_penalty(j, 0.25, backend="cpu") + 0.1 * jk.freq_penalty(j, formulation="official", backend="cpu")

    j = torch.randn(4, 3, 16, 16, requires_grad=True)
    compiled = torch.compile(loss, fullgraph=True)
    eager_val, eager_dx = grad_of(loss, j)
    comp_val, comp_dx = grad_of(compiled, j)
    torch.testing.assert_close(comp_val, eager_val, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(comp_dx, eager_dx, rtol=1e-5, atol=1e-9)


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = F.softplus(self.conv1(x))
        x = F.softplus(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_double_backprop_parameter_grads_agree(dtype, tol):
    torch.manual_seed(0)
    net = SmallNet().to(dtype)
    x = torch.rand(6, 3, 14, 14, dtype=dtype)
    y = torch.randint(0, 5, (6,))
    grads = {}
    for backend in cpu_backends():
        xr = x.clone().requires_grad_(True)
        ce = F.cross_entropy(net(xr), y)
        (jac,) = torch.autograd.grad(ce, xr, create_graph=True)
        net.zero_grad()
        jk.freq_penalty(jac, 0.25, backend=backend).backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert set(grads) == {"cpu", "reference"}
    assert grads["reference"].abs().max() > 0
    assert rel_err(grads["cpu"], grads["reference"]) <= tol


def test_backward_ops_are_first_order_only():
    """The penalty's own second derivative is never needed; asking for it fails loudly, not silently."""
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(jk.spectral_energy(x, 0.5, backend="cpu").sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(dx.sum(), x)


# ------------------------------------------------------------------------------------------------ edge cases
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_zero_jacobian_finite_penalty_zero_grad(backend):
    jac = torch.zeros(3, 3, 12, 10, requires_grad=True)
    for target in ("low", "high"):
        p = jk.freq_penalty(jac, target=target, backend=backend)
        (g,) = torch.autograd.grad(p, jac)
        assert torch.isfinite(p) and float(p) == 0.0
        assert torch.equal(g, torch.zeros_like(g))
    ratio = jk.low_freq_ratio(jac, backend=backend)
    assert bool(((ratio >= 0) & (ratio <= 1)).all())
    square = torch.zeros(2, 1, 8, 8, requires_grad=True)
    p = jk.freq_penalty(square, formulation="official", backend=backend)
    (g,) = torch.autograd.grad(p, square)
    assert torch.isfinite(p) and torch.equal(g, torch.zeros_like(g))


def test_mixed_zero_and_nonzero_samples():
    jac = torch.randn(4, 3, 10, 10, dtype=torch.float64)
    jac[1] = 0
    for backend in cpu_backends():
        per = jk.freq_penalty(jac, reduction="none", backend=backend)
        assert per[1] == 0 and bool((per[[0, 2, 3]] > 0).all())


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_ratio_in_unit_interval_and_extreme_scales(backend):
    x = torch.randn(3, 3, 16, 16)
    base = jk.low_freq_ratio(x, backend=backend)
    assert bool(((base >= 0) & (base <= 1)).all())
    for scale in (1e-30, 1e-20, 1e20, 1e30):
        scaled = jk.low_freq_ratio(x * scale, backend=backend)
        torch.testing.assert_close(scaled, base, rtol=1e-5, atol=1e-6)
        pen = jk.freq_penalty((x * scale).requires_grad_(), backend=backend)
        assert torch.isfinite(pen)


def test_extension_is_built_when_required():
    """The README's test command sets JAFR_REQUIRE_EXTENSION=1: a missing build must fail, not skip."""
    if os.environ.get("JAFR_REQUIRE_EXTENSION") != "1":
        pytest.skip("JAFR_REQUIRE_EXTENSION is not set")
    assert backends.unavailable_reason("cpu", CPU) is None
    from jafr_kernels.kernels import cpp

    if os.environ.get("JAFR_REQUIRE_CUDA_BUILD") == "1":
        assert cpp.built_with_cuda(), "the extension was built without its CUDA path"
