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


def ratio(x, weight, q_lo, q_hi):
    """Fused power-2 ratio: ``(ratio (B,), stats (B, 2) = [max|x_b|, E_all(x_b / max|x_b|)])``."""
    return _C.band_ratio(x, weight, q_lo, q_hi, _path())


def ratio_backward(grad, x, weight, q_lo, q_hi, ratio_value, stats):
    return _C.band_ratio_backward(grad, x, weight, q_lo, q_hi, ratio_value, stats, _path())
