"""Property tests (hypothesis, fixed example budget) over random shapes, cutoffs, powers and backends."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jafr_kernels as jk
from jafr_kernels import reference

from conftest import cpu_backends, rel_err

BUDGET = settings(max_examples=40, deadline=None, derandomize=True)

planes = st.tuples(
    st.integers(1, 3), st.integers(1, 3), st.integers(2, 21), st.integers(2, 21), st.integers(0, 2**31 - 1)
)
cutoffs = st.floats(0.05, 1.414)
powers = st.sampled_from([1, 2])


def sample(shape_seed, dtype=torch.float64):
    b, c, h, w, seed = shape_seed
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@BUDGET
@given(planes, cutoffs, powers)
def test_backends_agree(shape_seed, cutoff, power):
    x = sample(shape_seed)
    results = {b: (jk.spectral_energy(x, cutoff, power=power, backend=b), jk.low_freq_ratio(x, cutoff, power=power, backend=b)) for b in cpu_backends()}
    ref_energy, ref_ratio = results["reference"]
    for energy, ratio in results.values():
        assert rel_err(energy, ref_energy) <= 1e-10
        assert rel_err(ratio, ref_ratio) <= 1e-10


@BUDGET
@given(planes, cutoffs, powers, st.floats(-30, 30))
def test_ratio_bounded_and_scale_invariant(shape_seed, cutoff, power, log_scale):
    x = sample(shape_seed, torch.float32)
    for backend in cpu_backends():
        ratio = jk.low_freq_ratio(x, cutoff, power=power, backend=backend)
        assert bool(((ratio >= 0) & (ratio <= 1 + 1e-6)).all())
        scaled = jk.low_freq_ratio(x * 10.0**log_scale, cutoff, power=power, backend=backend)
        assert torch.allclose(scaled, ratio, rtol=1e-4, atol=1e-6)


@BUDGET
@given(planes)
def test_parseval(shape_seed):
    x = sample(shape_seed)
    n = x.shape[-2] * x.shape[-1]
    for backend in cpu_backends():
        e_all = jk.spectral_energy(x, jk.RadialBand.all(), backend=backend)
        assert rel_err(e_all, n * x.pow(2).sum(dim=(-2, -1))) <= 1e-6


@BUDGET
@given(st.integers(2, 40), st.integers(2, 40), cutoffs, st.sampled_from(["low", "high"]))
def test_masks_symmetric(h, w, cutoff, band):
    mask = jk.radial_mask(h, w, cutoff, band=band)
    mirrored_rows = torch.remainder(-torch.arange(h), h)
    assert torch.equal(mask, mask[mirrored_rows])
    r = reference.normalised_radius(h, w)
    inside = r <= cutoff + 1e-9 if band == "low" else r > cutoff - 1e-9
    # away from the boundary the integer classification agrees with the float radius
    far = (r - cutoff).abs() > 1e-9
    assert torch.equal(mask.bool()[far], inside[far])


@BUDGET
@given(planes, cutoffs, powers)
def test_low_and_high_penalties_sum_to_one(shape_seed, cutoff, power):
    x = sample(shape_seed)
    for backend in cpu_backends():
        low = jk.freq_penalty(x, cutoff, target="low", power=power, reduction="none", backend=backend)
        high = jk.freq_penalty(x, cutoff, target="high", power=power, reduction="none", backend=backend)
        assert torch.allclose(low + high, torch.ones_like(low), atol=1e-12)
