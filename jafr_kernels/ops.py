"""The ``jafr`` torch.library namespace: custom ops, their fake (meta) kernels and their autograd.

Every backend's primitives (see :mod:`jafr_kernels.backends`) run behind these ops, so ``torch.compile``
traces them as opaque nodes and the penalty works inside a double-backprop training step: its backward
output ``dP/dJ`` flows into the model's double backward. The backward ops themselves are first-order only
(the penalty never needs its own second derivative); differentiating them again raises.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from jafr_kernels import backends


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Spectral maths run in fp32, or fp64 for fp64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("jafr::spectral_energy", mutates_args=())
def spectral_energy(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, power: int, backend: str) -> Tensor:
    """Masked spectral energies (B, C) of x (B, C, H, W); see ``backends`` for the argument meaning."""
    return backends.get(backend).energy(x, weight, q_lo, q_hi, power)


@torch.library.custom_op("jafr::spectral_energy_backward", mutates_args=())
def spectral_energy_backward(
    grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, power: int, backend: str
) -> Tensor:
    """Gradient of ``sum(grad * spectral_energy(x))`` with respect to x."""
    return backends.get(backend).energy_backward(grad, x, weight, q_lo, q_hi, power)


@torch.library.custom_op("jafr::mean_magnitude", mutates_args=())
def mean_magnitude(x: Tensor, backend: str) -> Tensor:
    """Mean over batch and channels of ``|rfft2(x)|``, shape (H, W//2+1)."""
    return backends.get(backend).mean_magnitude(x)


@torch.library.custom_op("jafr::mean_magnitude_backward", mutates_args=())
def mean_magnitude_backward(grad: Tensor, x: Tensor, backend: str) -> Tensor:
    """Gradient of ``sum(grad * mean_magnitude(x))`` with respect to x."""
    return backends.get(backend).mean_magnitude_backward(grad, x)


@torch.library.custom_op("jafr::band_ratio", mutates_args=())
def band_ratio(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, backend: str) -> tuple[Tensor, Tensor]:
    """Fused power-2 low-band ratio (B,) and per-sample stats (B, 2) ``[max|x_b|, E_all(x_b / max|x_b|)]``.

    Served by backends that implement ``ratio`` (see ``backends.fuses_ratio``); its backward needs only x
    and the band-passed x, so no spectrum is stored between forward and backward.
    """
    return backends.get(backend).ratio(x, weight, q_lo, q_hi)


@torch.library.custom_op("jafr::band_ratio_backward", mutates_args=())
def band_ratio_backward(
    grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, ratio: Tensor, stats: Tensor, backend: str
) -> Tensor:
    """Gradient of ``sum(grad * band_ratio(x)[0])`` with respect to x."""
    return backends.get(backend).ratio_backward(grad, x, weight, q_lo, q_hi, ratio, stats)


@band_ratio.register_fake
def _(x, weight, q_lo, q_hi, backend):
    acc = accumulate_dtype(x.dtype)
    return x.new_empty(x.shape[:1], dtype=acc), x.new_empty((x.shape[0], 2), dtype=acc)


@band_ratio_backward.register_fake
def _(grad, x, weight, q_lo, q_hi, ratio, stats, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@spectral_energy.register_fake
def _(x, weight, q_lo, q_hi, power, backend):
    return x.new_empty(x.shape[:2], dtype=accumulate_dtype(x.dtype))


@spectral_energy_backward.register_fake
def _(grad, x, weight, q_lo, q_hi, power, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@mean_magnitude.register_fake
def _(x, backend):
    return x.new_empty((x.shape[-2], x.shape[-1] // 2 + 1), dtype=accumulate_dtype(x.dtype))


@mean_magnitude_backward.register_fake
def _(grad, x, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _energy_setup(ctx, inputs, output):
    x, weight, q_lo, q_hi, power, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (q_lo, q_hi, power, backend)


def _energy_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    q_lo, q_hi, power, backend = ctx.args
    dx = spectral_energy_backward(grad.contiguous(), x, weight, q_lo, q_hi, power, backend)
    return dx, None, None, None, None, None


def _magnitude_setup(ctx, inputs, output):
    x, backend = inputs
    ctx.save_for_backward(x)
    ctx.backend = backend


def _magnitude_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return mean_magnitude_backward(grad.contiguous(), x, ctx.backend), None


def _ratio_setup(ctx, inputs, output):
    x, weight, q_lo, q_hi, backend = inputs
    ratio, stats = output
    ctx.save_for_backward(x, weight, ratio, stats)
    ctx.args = (q_lo, q_hi, backend)
    ctx.mark_non_differentiable(stats)


def _ratio_backward(ctx, grad_ratio, grad_stats):
    x, weight, ratio, stats = ctx.saved_tensors
    q_lo, q_hi, backend = ctx.args
    dx = band_ratio_backward(grad_ratio.contiguous(), x, weight, q_lo, q_hi, ratio, stats, backend)
    return dx, None, None, None, None


spectral_energy.register_autograd(_energy_backward, setup_context=_energy_setup)
band_ratio.register_autograd(_ratio_backward, setup_context=_ratio_setup)
mean_magnitude.register_autograd(_magnitude_backward, setup_context=_magnitude_setup)
