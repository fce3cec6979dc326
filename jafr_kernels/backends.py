"""Backend discovery and selection: the one place that decides which implementation serves a call.

A backend provides four primitives on (B, C, H, W) tensors (any float dtype; maths in fp32, or fp64 for
fp64 input):

* ``energy(x, weight, q_lo, q_hi, power) -> (B, C)``: ``sum_uv h_v m_uv |X_uv|^p`` with
  ``m = weight`` if given, else the radial band ``q_lo <= q(u, v) <= q_hi`` (see ``reference.RadialBand``);
* ``energy_backward(grad, x, weight, q_lo, q_hi, power) -> dx`` (dtype of x);
* ``mean_magnitude(x) -> (H, W//2+1)``: mean over batch and channels of ``|X|``;
* ``mean_magnitude_backward(grad, x) -> dx``;

and optionally the fused power-2 ratio ``ratio(x, weight, q_lo, q_hi) -> (ratio (B,), stats (B, 2))`` with
``ratio_backward(grad, x, weight, q_lo, q_hi, ratio, stats) -> dx`` (stats: ``[max|x_b|, E_all(x_b/max|x_b|)]``).

``auto`` picks, for CUDA tensors, Triton, then the CUDA extension, then the reference; for CPU tensors the
C++ CPU extension, then the reference. ``JAFR_BACKEND`` overrides ``auto``.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Mapping

import torch

BACKENDS = ("triton", "cuda", "cpu", "reference")
# Preference order of "auto" per device type.
AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}


class BackendUnavailableError(RuntimeError):
    """No backend (or not the one asked for) can serve a call; the message lists each one's reason."""


@functools.lru_cache(maxsize=None)
def _extension():
    """The compiled extension ``jafr_kernels._C`` or the import error as a string."""
    try:
        from jafr_kernels.kernels import cpp  # noqa: PLC0415

        return cpp
    except ImportError as exc:  # not built: the reference still works
        return f"the C++ extension jafr_kernels._C is not built ({exc}); reinstall with `pip install --no-build-isolation .`"


@functools.lru_cache(maxsize=None)
def _triton_module():
    try:
        from jafr_kernels.kernels import triton_spectral  # noqa: PLC0415

        return triton_spectral
    except Exception as exc:  # ImportError, or triton failing to initialise
        return f"Triton is not importable ({type(exc).__name__}: {exc})"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot serve a tensor on ``device``; ``None`` when it can."""
    if name == "reference":
        return None
    if name == "cpu":
        ext = _extension()
        if isinstance(ext, str):
            return ext
        return None if device.type == "cpu" else f"serves CPU tensors only (got a {device.type} tensor)"
    if name == "cuda":
        ext = _extension()
        if isinstance(ext, str):
            return ext
        if not ext.built_with_cuda():
            return "the extension was built without CUDA (no nvcc or a CPU-only torch at build time)"
        return None if device.type == "cuda" else f"serves CUDA tensors only (got a {device.type} tensor)"
    if name == "triton":
        mod = _triton_module()
        if isinstance(mod, str):
            return mod
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreted():
            return None
        return f"serves CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); got a {device.type} tensor"
    raise ValueError(f"unknown backend {name!r}; choose one of 'auto', {', '.join(map(repr, BACKENDS))}")


def choose(requested: str, device: torch.device, reason: Callable[[str, torch.device], str | None] = unavailable_reason) -> str:
    """Resolve ``requested`` ("auto" or a backend name) for a tensor on ``device``.

    ``reason`` is injectable so the selection logic is testable without a GPU.
    """
    if requested == "auto":
        requested = os.environ.get("JAFR_BACKEND", "auto") or "auto"
    if requested != "auto":
        why = reason(requested, device)
        if why is not None:
            raise BackendUnavailableError(f"backend {requested!r} cannot serve this call: {why}")
        return requested
    order = AUTO_ORDER.get(device.type, ("reference",))
    reasons = {}
    for name in order:
        why = reason(name, device)
        if why is None:
            return name
        reasons[name] = why
    listed = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    raise BackendUnavailableError(f"no backend can serve a {device.type} tensor ({listed})")


def get(name: str):
    """The module implementing backend ``name`` (not for ``reference``, which has no primitive ops)."""
    if name in ("cpu", "cuda"):
        ext = _extension()
        if isinstance(ext, str):
            raise BackendUnavailableError(ext)
        return ext
    if name == "triton":
        mod = _triton_module()
        if isinstance(mod, str):
            raise BackendUnavailableError(mod)
        return mod
    raise ValueError(f"backend {name!r} has no primitive ops")


def fuses_ratio(name: str) -> bool:
    """Whether backend ``name`` has the fused power-2 ratio (``ratio``/``ratio_backward``) primitives."""
    return name != "reference" and hasattr(get(name), "ratio")


def availability(device_types=("cpu", "cuda")) -> Mapping[str, Mapping[str, str | None]]:
    """``{device_type: {backend: reason or None}}`` for ``python -m jafr_kernels.info``."""
    return {d: {b: unavailable_reason(b, torch.device(d)) for b in BACKENDS} for d in device_types}
