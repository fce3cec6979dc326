"""Launchers of the C++/CUDA extension in the backend interface of ``backends``.

Importing ``jafr_kernels._C`` registers the ``jafr_cpp`` torch.library ops (``torch.ops.jafr_cpp.*``), with
kernels for the CPU dispatch key and, when the extension was built with CUDA, the CUDA key; the functions
below call them. Every op computes in fp32 (fp64 for fp64 input) whatever the input dtype.

The extension picks its transform per call; ``JAFR_CPP_PATH`` forces one, for tests and benchmarks:
``partial`` (a DFT restricted to the bins the mask touches, as two thin GEMMs), ``full`` (rfft2), ``fused``
(the band ratio only: the per-sample routine that the CUDA backend runs as one kernel each way; on the CPU
the same code runs serially per sample, which is how the CPU tests exercise the CUDA kernels' maths) or
``auto`` (fused for planes up to 64x64, else partial or full by a cost model).

Large planes (the unfused ratio): every stage runs one thread block per (sample, chunk of about 8192 values),
not one per sample, and the partial transform is one ATen GEMM per direction over the whole batch (x as
(H, B C, W) rows). The cost model weighs the partial transform's multiply-adds against 2.5 N log2 N FFT flops
with a per-device factor (CPU 1, CUDA 0.25: at 224x224 the GEMMs serve cutoffs up to about 0.3, cuFFT the wider
bands). Precision: those GEMMs are ``at::mm`` in fp32 (fp64 for fp64 input) and follow torch's matmul settings:
on a GPU, IEEE fp32 by default; ``torch.backends.cuda.matmul.allow_tf32 = True`` (or
``torch.set_float32_matmul_precision("high")``) lets cuBLAS use one-pass TF32: about 3e-6 absolute error on the
ratio and 6e-4 relative on its gradient at 224x224 (``scripts/large_plane_precision.py``, mode ``tf32``).
"""
from __future__ import annotations

import os

import torch

from jafr_kernels import _C
from jafr_kernels.kernels import fakes

_PATHS = {"auto": 0, "partial": 1, "full": 2, "fused": 3}
_ops = torch.ops.jafr_cpp


def _path() -> int:
    name = os.environ.get("JAFR_CPP_PATH", "auto")
    if name not in _PATHS:
        raise ValueError(f"JAFR_CPP_PATH must be one of {sorted(_PATHS)}, got {name!r}")
    return _PATHS[name]


def built_with_cuda() -> bool:
    """Whether the extension has its CUDA kernels (``jafr_cpp`` ops registered for the CUDA dispatch key)."""
    return bool(_C.built_with_cuda())


def energy(x, weight, q_lo, q_hi, power):
    """(B, C) masked energies ``sum h_v m |X|^power``; ``weight`` (H, W//2+1) or the band ``q_lo <= q <= q_hi``."""
    return _ops.energy(x, weight, q_lo, q_hi, power, _path())


def energy_backward(grad, x, weight, q_lo, q_hi, power):
    return _ops.energy_backward(grad, x, weight, q_lo, q_hi, power, _path())


def mean_magnitude(x):
    return _ops.mean_magnitude(x)


def mean_magnitude_backward(grad, x):
    return _ops.mean_magnitude_backward(grad, x)


def ratio(x, weight, q_lo, q_hi, complement: bool):
    """Fused power-2 band ratio of each sample: ``(value (B,), stats (B, 2))``, both fp32 (fp64 for fp64 x).

    ``value_b = rho_b = sum_c E_band(x_bc) / E_all(x_b)``, or ``1 - rho_b`` with ``complement``; 0 for an
    all-zero sample, NaN for a sample holding NaN or Inf. Each sample is scaled in-op by an exact power of
    two, so any finite magnitude (subnormal included) is valid in fp32. ``stats`` is the state of
    :func:`ratio_backward`: ``[e_b, E_all(x_b 2^e_b)]``.
    """
    return _ops.band_ratio(x, weight, q_lo, q_hi, bool(complement), _path())


def ratio_backward(grad, x, weight, q_lo, q_hi, complement: bool, value, stats):
    """Gradient of ``sum_b grad_b value_b`` with respect to x (dtype and shape of x); ``grad`` (B,), any stride."""
    return _ops.band_ratio_backward(grad, x, weight, q_lo, q_hi, bool(complement), value, stats, _path())


def ratio_and_grad(x, weight, q_lo, q_hi, complement: bool, scale: float):
    """``(value (B,), dx)``: :func:`ratio`'s value and ``dx = scale * d value / dx`` (dtype of x) in one call; on the
    fused path (CUDA planes up to 64 x 64, or ``JAFR_CPP_PATH=fused``) one routine per sample, else the forward and
    backward composed."""
    return _ops.band_ratio_and_grad(x, weight, q_lo, q_hi, bool(complement), float(scale), _path())


# Fake (meta) kernels, so the ops can be traced (torch.compile, opcheck) like the jafr:: ops above them.
for _name, _fake in (("energy", fakes.energy), ("energy_backward", fakes.backward),
                     ("mean_magnitude", fakes.mean_magnitude), ("mean_magnitude_backward", fakes.backward),
                     ("band_ratio", fakes.band_ratio), ("band_ratio_backward", fakes.backward),
                     ("band_ratio_and_grad", fakes.band_ratio_and_grad)):
    torch.library.register_fake(f"jafr_cpp::{_name}")(_fake)
