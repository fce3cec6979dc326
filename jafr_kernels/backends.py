"""Backends: what each one provides, whether it can serve a call, and the one place that picks one.

A kernel backend (``triton``, ``cuda``, ``cpu``) is a module that fills the :class:`Kernels` protocol on
(B, C, H, W) tensors of any float dtype (maths in fp32, or fp64 for fp64 input). ``reference`` is the
pure-PyTorch specification (:mod:`jafr_kernels.reference`), differentiated by autograd; it always works.

``auto`` picks, for CUDA tensors, Triton, then the CUDA extension, then the reference; for CPU tensors the
C++ CPU extension, then the reference. ``JAFR_BACKEND`` overrides ``auto``. When nothing fits, the error
lists every backend's reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol

import torch
from torch import Tensor


class BackendUnavailableError(RuntimeError):
    """No backend (or not the one asked for) can serve a call; the message lists each one's reason."""


class Kernels(Protocol):
    """The primitives every kernel backend provides (``weight`` a (H, W//2+1) map, or None for the radial band
    ``q_lo <= q(u, v) <= q_hi`` of ``reference.RadialBand``)."""

    def energy(self, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, power: int) -> Tensor:
        """(B, C) energies ``sum_uv h_v m_uv |X_uv|^power``."""

    def energy_backward(self, grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int,
                        power: int) -> Tensor:
        """Gradient of ``sum(grad * energy(x))``, dtype of x."""

    def mean_magnitude(self, x: Tensor) -> Tensor:
        """(H, W//2+1) mean over batch and channels of ``|X|``."""

    def mean_magnitude_backward(self, grad: Tensor, x: Tensor) -> Tensor:
        """Gradient of ``sum(grad * mean_magnitude(x))``, dtype of x."""

    def ratio(self, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int,
              complement: bool) -> tuple[Tensor, Tensor]:
        """Fused power-2 band ratio: ``(value (B,), stats (B, 2))``; value = rho or (complement) 1 - rho, 0 for
        all-zero samples, NaN for samples holding NaN/Inf; stats is the backend's own state for the backward.
        One pass over x, no host read."""

    def ratio_backward(self, grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int,
                       complement: bool, value: Tensor, stats: Tensor) -> Tensor:
        """Gradient of ``sum(grad * value)``, dtype of x."""

    def ratio_and_grad(self, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool,
                       scale: float) -> tuple[Tensor, Tensor]:
        """``(value (B,), dx)``: the fused ratio's value and the gradient of ``scale * sum(value)`` (dtype of x), in
        one pass over x where the backend can (its small-plane path), with no host read."""


@dataclass(frozen=True)
class Backend:
    """One backend: its name, how to load its kernels, and why it cannot serve a device (None if it can)."""

    name: str
    # The Kernels module, or why it cannot be loaded; None for the reference, which has no kernels (autograd
    # differentiates it).
    load: Optional[Callable[[], "Kernels | str"]]
    serves: Callable[[torch.device], Optional[str]]


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_LOADED: dict = {}  # backend module (or why it cannot load) per loader, memoised by hand: torch.compile traces it


def _load_extension():
    if "cpp" not in _LOADED:
        try:
            from jafr_kernels.kernels import cpp  # noqa: PLC0415

            _LOADED["cpp"] = cpp
        except ImportError as exc:  # not built: the reference still works
            _LOADED["cpp"] = (f"the C++ extension jafr_kernels._C is not built ({exc}); "
                              "reinstall with `pip install --no-build-isolation .`")
    return _LOADED["cpp"]


def _load_triton():
    if "triton" not in _LOADED:
        try:
            from jafr_kernels.kernels import triton_backend  # noqa: PLC0415

            _LOADED["triton"] = triton_backend
        except Exception as exc:  # ImportError, or triton failing to initialise
            _LOADED["triton"] = f"Triton is not importable ({type(exc).__name__}: {exc})"
    return _LOADED["triton"]


def _cpu_serves(device: torch.device) -> Optional[str]:
    return None if device.type == "cpu" else f"serves CPU tensors only (got a {device.type} tensor)"


def _cuda_serves(device: torch.device) -> Optional[str]:
    ext = _load_extension()
    if not isinstance(ext, str) and not ext.built_with_cuda():
        return "the extension was built without CUDA (no nvcc or a CPU-only torch at build time)"
    return None if device.type == "cuda" else f"serves CUDA tensors only (got a {device.type} tensor)"


def _triton_serves(device: torch.device) -> Optional[str]:
    if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
        return None
    return f"serves CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); got a {device.type} tensor"


REGISTRY: Mapping[str, Backend] = {
    "triton": Backend("triton", _load_triton, _triton_serves),
    "cuda": Backend("cuda", _load_extension, _cuda_serves),
    "cpu": Backend("cpu", _load_extension, _cpu_serves),
    "reference": Backend("reference", None, lambda device: None),
}
BACKENDS = tuple(REGISTRY)
# Preference order of "auto" per device type.
AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """Why backend ``name`` cannot serve a tensor on ``device``; ``None`` when it can."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of 'auto', {', '.join(map(repr, BACKENDS))}")
    backend = REGISTRY[name]
    if backend.load is not None:
        loaded = backend.load()
        if isinstance(loaded, str):
            return loaded
    return backend.serves(device)


def choose(requested: str, device: torch.device,
           reason: Callable[[str, torch.device], Optional[str]] = unavailable_reason) -> str:
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


def get(name: str) -> Kernels:
    """The kernels of backend ``name`` (the reference has none: it is differentiated by autograd)."""
    if name not in REGISTRY or REGISTRY[name].load is None:
        raise ValueError(f"backend {name!r} has no kernels")
    loaded = REGISTRY[name].load()
    if isinstance(loaded, str):
        raise BackendUnavailableError(loaded)
    return loaded


def availability(device_types=("cpu", "cuda")) -> Mapping[str, Mapping[str, Optional[str]]]:
    """``{device_type: {backend: reason or None}}`` for ``python -m jafr_kernels.info``."""
    return {d: {b: unavailable_reason(b, torch.device(d)) for b in BACKENDS} for d in device_types}
