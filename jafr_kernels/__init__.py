"""jafr_kernels: Jacobian Frequency Regularization (JaFR) for image classifiers.

``import jafr_kernels as jk`` gives the spectral API (``jk.freq_penalty``, ``jk.freq_penalty_and_grad``, ``jk.low_freq_ratio``,
``jk.spectral_energy``, ``jk.radial_mask``, ``jk.mean_magnitude``) with Triton, C++/CUDA, C++/CPU and
pure-PyTorch backends, and the training/evaluation layer under ``jk.train`` and ``jk.eval``.
"""
from jafr_kernels.api import (
    freq_penalty,
    freq_penalty_and_grad,
    low_freq_ratio,
    mean_magnitude,
    radial_mask,
    spectral_energy,
)
from jafr_kernels.backends import BackendUnavailableError
from jafr_kernels.reference import RadialBand

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "RadialBand",
    "freq_penalty",
    "freq_penalty_and_grad",
    "low_freq_ratio",
    "mean_magnitude",
    "radial_mask",
    "spectral_energy",
]


def __getattr__(name):
    # The training/evaluation layer pulls in torchvision, tqdm and matplotlib: load it on first use.
    if name in ("train", "eval"):
        import importlib

        return importlib.import_module(f"jafr_kernels.{name}")
    raise AttributeError(f"module 'jafr_kernels' has no attribute {name!r}")
