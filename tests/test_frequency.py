"""Frequency analyses: spectrum mirroring and centring, radial profiles, input gradients, Fourier bases, and a
Fourier heat map that exposes a model blind to a frequency band by construction."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import jafr_kernels as jk
from jafr_kernels.eval.frequency import (
    centred,
    fourier_basis,
    fourier_heat_map,
    half_to_full,
    input_gradients,
    jacobian_spectrum,
    radial_profile,
    spectrum_summary,
)
from jafr_kernels.reference import normalised_radius


@pytest.mark.parametrize("h,w", [(8, 8), (7, 10), (9, 5)])
def test_half_to_full_matches_full_fft(h, w):
    x = torch.randn((3, 2, h, w), dtype=torch.float64)
    half = torch.fft.rfft2(x).abs().mean(dim=(0, 1))
    full = torch.fft.fft2(x).abs().mean(dim=(0, 1))
    torch.testing.assert_close(half_to_full(half, w), full, rtol=1e-12, atol=1e-12)


def test_centred_puts_dc_in_the_middle():
    x = torch.ones((1, 1, 7, 6), dtype=torch.float64)
    spec = centred(half_to_full(jk.mean_magnitude(x), 6))
    assert spec[7 // 2, 6 // 2] == pytest.approx(42.0)
    assert float(spec.sum()) == pytest.approx(42.0)


def test_radial_profile_of_constant_and_of_radius():
    h, w = 12, 9
    prof = radial_profile(torch.full((h, w // 2 + 1), 3.0, dtype=torch.float64), w, nbins=6)
    assert all(v == pytest.approx(3.0) for v in prof["value"])
    r = normalised_radius(h, w)
    prof = radial_profile(r, w, nbins=6)
    edges = torch.linspace(0, math.sqrt(2), 7)
    for rc, v in zip(prof["radius"], prof["value"]):  # the mean radius in a ring lies inside the ring
        i = int(rc / (math.sqrt(2) / 6))
        assert float(edges[i]) - 1e-9 <= v <= float(edges[i + 1]) + 1e-9
    with pytest.raises(ValueError, match="W//2"):
        radial_profile(r, w + 2)


class LinearModel(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w  # (K, C*H*W)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def test_input_gradients_closed_form_and_spectrum():
    g = torch.Generator().manual_seed(0)
    c, h, w, k = 2, 6, 7, 4
    weight = torch.randn((k, c * h * w), generator=g, dtype=torch.float64)
    model = LinearModel(weight)
    x = torch.rand((5, c, h, w), generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (5,), generator=g)
    p = F.softmax(model(x), dim=1)
    expected = ((p - F.one_hot(y, k)) @ weight).reshape(5, c, h, w)
    jac = input_gradients(model, x, y)
    torch.testing.assert_close(jac, expected, rtol=1e-12, atol=1e-12)
    out = jacobian_spectrum(model, x, y, cutoff=0.3, batch_size=2)
    assert torch.tensor(out["spectrum"]).shape == (h, w)
    assert out["low_freq_ratio"] == pytest.approx(float(jk.low_freq_ratio(expected, 0.3).mean()), rel=1e-10)
    full = torch.fft.fft2(expected).abs().mean(dim=(0, 1))
    torch.testing.assert_close(torch.tensor(out["spectrum"], dtype=torch.float64), torch.fft.fftshift(full), rtol=1e-10, atol=1e-12)
    # J's ratio at every recorded cutoff (the grid, the study's cutoffs) is the mean per-image ratio there
    out = jacobian_spectrum(model, x, y, cutoff=0.3, cutoffs=(0.33,), batch_size=2)
    assert {"0.05", "0.25", "0.3", "0.33", "1"} <= set(out["ratio_by_cutoff"])
    for key, value in out["ratio_by_cutoff"].items():
        assert value == pytest.approx(float(jk.low_freq_ratio(expected, float(key)).mean()), rel=1e-10)
    assert out["ratio_by_cutoff"]["0.3"] == out["low_freq_ratio"]


def test_spectrum_summary_of_images():
    x = torch.rand((4, 1, 8, 8), dtype=torch.float64)
    s = spectrum_summary(x, cutoff=0.25)
    assert len(s["spectrum"]) == 8 and len(s["spectrum"][0]) == 8
    assert s["low_freq_ratio"] == pytest.approx(float(jk.low_freq_ratio(x, 0.25).mean()))


def test_fourier_basis_unit_norm_single_frequency():
    h, w = 8, 10
    u = torch.tensor([0, 1, 3, 4, 7])
    v = torch.tensor([1, 0, 2, 5, 3])
    basis = fourier_basis(h, w, u, v, dtype=torch.float64)
    torch.testing.assert_close(basis.flatten(1).norm(dim=1), torch.ones(5, dtype=torch.float64))
    spec = torch.fft.fft2(basis).abs()
    for k in range(5):
        support = (spec[k] > 1e-9).nonzero().tolist()
        expected = {(int(u[k]), int(v[k])), ((-int(u[k])) % h, (-int(v[k])) % w)}
        assert {tuple(s) for s in support} == expected


class BandBlind(nn.Module):
    """A fixed low-pass filter (keeps r <= cutoff) followed by a linear classifier: blind to r > cutoff."""

    def __init__(self, h, w, cutoff, weight):
        super().__init__()
        self.mask = jk.radial_mask(h, w, cutoff, dtype=torch.float64)
        self.h, self.w, self.weight = h, w, weight

    def forward(self, x):
        low = torch.fft.irfft2(torch.fft.rfft2(x.double()) * self.mask, s=(self.h, self.w))
        return low.flatten(1) @ self.weight.T


def test_heat_map_reveals_a_band_blind_model():
    h, w, cutoff = 12, 12, 0.35
    g = torch.Generator().manual_seed(0)
    weight = torch.randn((3, h * w), generator=g, dtype=torch.float64)
    model = BandBlind(h, w, cutoff, weight)
    x = 0.5 + 0.01 * torch.randn((40, 1, h, w), generator=g, dtype=torch.float64)  # near the boundary, never clamped
    y = model(x).argmax(1)
    eps = 1.5  # basis amplitude <= eps * sqrt(2 / (H W)) ~ 0.18: x stays inside [0, 1]
    out = fourier_heat_map(model, x, y, eps, seed=0, bases_per_batch=7)
    err = torch.tensor(out["error"], dtype=torch.float64)
    assert err.shape == (h, w) and out["clean_error"] == 0.0
    r = centred(half_to_full(normalised_radius(h, w), w))
    blind = r > cutoff + 1e-9
    assert float(err[blind].max()) == 0.0, "perturbations the model filters out must not change its predictions"
    seen = err[~blind & (r > 0)]
    assert float(seen.mean()) > 0.2, "perturbations the model sees should cause errors near its boundary"
    # symmetric: (u, v) and (-u, -v) are the same real basis
    flipped = torch.roll(torch.flip(err, dims=(0, 1)), shifts=(1 - h % 2, 1 - w % 2), dims=(0, 1))
    torch.testing.assert_close(err, flipped)


def test_heat_map_of_a_high_pass_model_is_the_mirror_image():
    """The reverse construction: a model that discards low frequencies errs only at high ones."""
    h, w, cutoff = 10, 10, 0.4
    g = torch.Generator().manual_seed(1)
    weight = torch.randn((3, h * w), generator=g, dtype=torch.float64)
    low = BandBlind(h, w, cutoff, weight)

    class HighPass(nn.Module):
        def forward(self, x):
            x = x.double()
            return (x - torch.fft.irfft2(torch.fft.rfft2(x) * low.mask, s=(h, w))).flatten(1) @ weight.T

    model = HighPass()
    x = 0.5 + 0.01 * torch.randn((30, 1, h, w), generator=g, dtype=torch.float64)
    y = model(x).argmax(1)
    err = torch.tensor(fourier_heat_map(model, x, y, 1.5, bases_per_batch=16)["error"])
    r = centred(half_to_full(normalised_radius(h, w), w))
    assert float(err[r <= cutoff].max()) == 0.0
    assert float(err[r > cutoff].mean()) > 0.2


@pytest.mark.parametrize("h,w", [(28, 28), (9, 6), (7, 11)])
def test_low_freq_ratios_match_the_api_at_every_cutoff(h, w):
    from jafr_kernels.eval.frequency import low_freq_ratios

    x = torch.randn((4, 3, h, w), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[2] = 0  # an all-zero sample has ratio 0
    cutoffs = (0.05, 0.25, 0.5, 1.0, math.sqrt(2))
    got = low_freq_ratios(x, cutoffs)
    for c in cutoffs:
        torch.testing.assert_close(got[c], jk.low_freq_ratio(x, c), rtol=1e-10, atol=1e-12)
    assert float(got[0.25][2]) == 0.0 and float(got[math.sqrt(2)][0]) == pytest.approx(1.0)
