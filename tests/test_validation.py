"""Bad input gets a clear error naming the argument, what was expected and what was given."""
import math

import numpy as np
import pytest
import torch

import jafr_kernels as jk
from jafr_kernels.reference import RadialBand

X = torch.randn(2, 3, 8, 8)

CASES = {
    "wrong rank": (lambda: jk.freq_penalty(torch.randn(3, 8, 8)), ValueError, "4 dimensions"),
    "empty batch": (lambda: jk.low_freq_ratio(torch.randn(0, 3, 8, 8)), ValueError, "empty"),
    "plane too small": (lambda: jk.spectral_energy(torch.randn(2, 1, 1, 8), 0.5), ValueError, "at least 2x2"),
    "integer dtype": (lambda: jk.freq_penalty(torch.ones(2, 1, 8, 8, dtype=torch.int64)), TypeError, "real floating"),
    "bool dtype": (lambda: jk.low_freq_ratio(torch.ones(2, 1, 8, 8, dtype=torch.bool)), TypeError, "real floating"),
    "complex dtype": (lambda: jk.freq_penalty(torch.randn(2, 1, 8, 8, dtype=torch.complex64)), TypeError, "real floating"),
    "not a tensor": (lambda: jk.freq_penalty([[1.0]]), TypeError, "torch.Tensor"),
    "cutoff zero": (lambda: jk.freq_penalty(X, 0.0), ValueError, "(0, sqrt(2)]"),
    "cutoff too large": (lambda: jk.low_freq_ratio(X, 1.5), ValueError, "(0, sqrt(2)]"),
    "cutoff nan": (lambda: jk.low_freq_ratio(X, math.nan), ValueError, "(0, sqrt(2)]"),
    "band reversed": (lambda: jk.spectral_energy(X, RadialBand.between(0.6, 0.2)), ValueError, "lower < upper"),
    "mask band reversed": (lambda: jk.radial_mask(8, 8, (0.5, 0.5), band="band"), ValueError, "lower < upper"),
    "mask size": (lambda: jk.radial_mask(1, 8, 0.5), ValueError, "h must be an integer >= 2"),
    "weight shape": (lambda: jk.spectral_energy(X, torch.ones(8, 8)), ValueError, "(H, W//2+1) = (8, 5)"),
    "weight device": (lambda: jk.spectral_energy(X, torch.ones(8, 5, device="meta")), ValueError, "is on meta"),
    "weight negative": (lambda: jk.spectral_energy(X, -torch.ones(8, 5)), ValueError, ">= 0"),
    "weight nan": (lambda: jk.low_freq_ratio(X, torch.full((8, 5), math.nan)), ValueError, "NaN"),
    "official non-square": (lambda: jk.freq_penalty(torch.randn(2, 1, 8, 6), formulation="official"), ValueError, "square"),
    "official reduction": (lambda: jk.freq_penalty(X, formulation="official", reduction="none"), ValueError, "reduction='mean'"),
    "power": (lambda: jk.spectral_energy(X, 0.5, power=3), ValueError, "power must be 1"),
    "target": (lambda: jk.freq_penalty(X, target="mid"), ValueError, "target must be"),
    "reduction": (lambda: jk.freq_penalty(X, reduction="max"), ValueError, "reduction must be"),
    "formulation": (lambda: jk.freq_penalty(X, formulation="paper"), ValueError, "formulation must be"),
    "unknown backend": (lambda: jk.freq_penalty(X, backend="fast"), ValueError, "unknown backend"),
    "backend cannot serve": (lambda: jk.freq_penalty(X, backend="cuda"), jk.BackendUnavailableError, "cannot serve"),
    "nan in jacobian, raise": (lambda: jk.freq_penalty(torch.where(torch.arange(8) < 3, math.nan, 1.0).expand(2, 3, 8, 8),
                                                    nonfinite="raise"), ValueError, "non-finite"),
    "nonfinite mode": (lambda: jk.freq_penalty(X, nonfinite="skip"), ValueError, "nonfinite must be one of"),
    "0-d cutoff out of range": (lambda: jk.freq_penalty(X, torch.tensor(3.0)), ValueError, "(0, sqrt(2)]"),
    "0-d bool cutoff": (lambda: jk.low_freq_ratio(X, torch.tensor(True)), TypeError, "cutoff must be a real number"),
    "1-element cutoff": (lambda: jk.freq_penalty(X, torch.tensor([0.3])), ValueError, "(H, W//2+1) = (8, 5)"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_raises_clear_error(name):
    fn, exc_type, phrase = CASES[name]
    with pytest.raises(exc_type) as info:
        fn()
    assert phrase in str(info.value), str(info.value)


@pytest.mark.parametrize("cutoff", [torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64), np.float64(0.3),
                                    np.array(0.3)], ids=["tensor", "tensor64", "numpy scalar", "numpy 0-d"])
def test_zero_dim_cutoff_is_a_number(cutoff):
    """A 0-d tensor or array cutoff means the same as the Python float it holds."""
    torch.testing.assert_close(jk.freq_penalty(X, cutoff), jk.freq_penalty(X, 0.3), rtol=0, atol=0)
    torch.testing.assert_close(jk.low_freq_ratio(X, cutoff), jk.low_freq_ratio(X, 0.3), rtol=0, atol=0)
    penalty, grad = jk.freq_penalty_and_grad(X, cutoff)
    assert torch.equal(penalty, jk.freq_penalty_and_grad(X, 0.3)[0])
    assert torch.equal(jk.radial_mask(8, 8, cutoff), jk.radial_mask(8, 8, 0.3))


def test_nonfinite_count_reported_and_ignorable():
    jac = torch.randn(4, 1, 6, 6, requires_grad=True)
    bad = jac.detach().clone()
    bad[1, 0, 2, 3] = math.nan
    bad[2, 0, 0, 0] = math.inf
    bad.requires_grad_(True)
    with pytest.raises(ValueError, match="2 non-finite .* in 2 of 4 samples"):
        jk.freq_penalty(bad, nonfinite="raise")
    propagated = jk.freq_penalty(bad, reduction="none")  # the default: NaN for those samples, no exception
    assert torch.isnan(propagated[1]) and torch.isnan(propagated[2]) and torch.isfinite(propagated[[0, 3]]).all()
    per = jk.freq_penalty(bad, nonfinite="ignore", reduction="none")
    assert torch.isfinite(per).all() and per[1] == 0 and per[2] == 0 and per[0] > 0
    (grad,) = torch.autograd.grad(per.sum(), bad)
    assert torch.isfinite(grad).all() and grad[1].abs().sum() == 0


def test_unavailable_backend_message_lists_reason():
    with pytest.raises(jk.BackendUnavailableError, match="cannot serve this call: .*(serves CUDA tensors|built without CUDA)"):
        jk.low_freq_ratio(X, backend="cuda")
