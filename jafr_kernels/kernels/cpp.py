"""Launchers of the C++/CUDA extension ``jafr_kernels._C`` in the backend interface of ``backends``.

The extension picks its transform per call (a partial DFT restricted to the bins the mask touches, or a
full rfft2); ``JAFR_CPP_PATH=partial|full`` forces one, for tests and benchmarks.
"""
from __future__ import annotations

import os

from jafr_kernels import _C

_PATHS = {"auto": 0, "partial": 1, "full": 2}


def _path() -> int:
    name = os.environ.get("JAFR_CPP_PATH", "auto")
    if name not in _PATHS:
        raise ValueError(f"JAFR_CPP_PATH must be one of {sorted(_PATHS)}, got {name!r}")
    return _PATHS[name]


def built_with_cuda() -> bool:
    return bool(_C.built_with_cuda())


def energy(x, weight, q_lo, q_hi, power):
    return _C.energy(x, weight, q_lo, q_hi, power, _path())


def energy_backward(grad, x, weight, q_lo, q_hi, power):
    return _C.energy_backward(grad, x, weight, q_lo, q_hi, power, _path())


def mean_magnitude(x):
    return _C.mean_magnitude(x)


def mean_magnitude_backward(grad, x):
    return _C.mean_magnitude_backward(grad, x)


def ratio(x, weight, q_lo, q_hi, complement):
    """Fused power-2 ratio ``(value (B,), stats (B, 2))`` (interim adapter over the extension's band_ratio)."""
    import torch

    r, stats = _C.band_ratio(x, weight, q_lo, q_hi, _path())
    r = torch.where(torch.isnan(stats[:, 0]), float("nan"), r)
    value = torch.where((stats[:, 1] == 0) & ~torch.isnan(r), 0.0, 1.0 - r) if complement else r
    return value, stats


def ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats):
    r = 1.0 - value if complement else value
    g = -grad if complement else grad
    return _C.band_ratio_backward(g.contiguous(), x, weight, q_lo, q_hi, r, stats, _path())
