"""The ``jafr`` torch.library namespace: custom ops, their fake (meta) kernels and their autograd.

Every kernel backend's primitives (:class:`jafr_kernels.backends.Kernels`) run behind these ops, so
``torch.compile`` traces them as opaque nodes and the penalty works inside a double-backprop training step:
its backward output ``dP/dJ`` flows into the model's double backward. The backward ops themselves are
first-order only (the penalty never needs its own second derivative); differentiating them again raises.

The fused ratio, the default path of every penalty call, has a second, lighter route for eager mode: a
``torch.autograd.Function`` that calls the backend directly: with empty bodies, a custom-op forward+backward
took 108 us of host time on a 2-core CPU against 58 us through the Function, and at Jacobian sizes host time
per call is what a GPU call costs. Compiled code always goes through the registered op. Both routes share
the same forward/backward functions below.

``jafr::band_ratio_and_grad`` returns the ratio and its gradient together, from one pass over x, for callers
that need ``dP/dJ`` with J held fixed; it has no autograd formula (it is not differentiable).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from jafr_kernels import backends
from jafr_kernels.kernels import fakes
from jafr_kernels.reference import accumulate_dtype

__all__ = ["accumulate_dtype", "band_ratio", "band_ratio_and_grad", "mean_magnitude", "spectral_energy"]


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


spectral_energy.register_fake(fakes.energy)
spectral_energy_backward.register_fake(fakes.backward)
mean_magnitude.register_fake(fakes.mean_magnitude)
mean_magnitude_backward.register_fake(fakes.backward)


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


spectral_energy.register_autograd(_energy_backward, setup_context=_energy_setup)
mean_magnitude.register_autograd(_magnitude_backward, setup_context=_magnitude_setup)


# --------------------------------------------------------------------------- fused power-2 ratio
def _ratio_forward(x, weight, q_lo, q_hi, complement, backend):
    return backends.get(backend).ratio(x, weight, q_lo, q_hi, complement)


def _ratio_grad(grad, x, weight, q_lo, q_hi, complement, value, stats, backend):
    return backends.get(backend).ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats)


@torch.library.custom_op("jafr::band_ratio", mutates_args=())
def band_ratio_op(
    x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool, backend: str
) -> tuple[Tensor, Tensor]:
    """Fused power-2 band ratio ``(value (B,), stats (B, 2))``; see ``backends.Kernels.ratio``."""
    return _ratio_forward(x, weight, q_lo, q_hi, complement, backend)


@torch.library.custom_op("jafr::band_ratio_backward", mutates_args=())
def band_ratio_backward_op(
    grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool, value: Tensor,
    stats: Tensor, backend: str,
) -> Tensor:
    """Gradient of ``sum(grad * band_ratio(x)[0])`` with respect to x."""
    return _ratio_grad(grad, x, weight, q_lo, q_hi, complement, value, stats, backend)


band_ratio_op.register_fake(fakes.band_ratio)
band_ratio_backward_op.register_fake(fakes.backward)


def _ratio_setup(ctx, inputs, output):
    x, weight, q_lo, q_hi, complement, backend = inputs
    value, stats = output
    ctx.save_for_backward(x, weight, value, stats)
    ctx.args = (q_lo, q_hi, complement, backend)
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # stats never gets a gradient: no zero tensor is made for it


def _ratio_input_grads(ctx, grad_value, backward):
    """(dx, None, ...) for the six inputs of the ratio, dx from ``backward`` (the op, or the direct call)."""
    if grad_value is None:
        return None, None, None, None, None, None
    x, weight, value, stats = ctx.saved_tensors
    q_lo, q_hi, complement, backend = ctx.args
    return backward(grad_value, x, weight, q_lo, q_hi, complement, value, stats, backend), None, None, None, None, None


def _ratio_backward(ctx, grad_value, grad_stats):
    return _ratio_input_grads(ctx, grad_value, band_ratio_backward_op)


band_ratio_op.register_autograd(_ratio_backward, setup_context=_ratio_setup)


class _BandRatio(torch.autograd.Function):
    """The eager route of :func:`band_ratio`: the same forward and backward, without custom-op dispatch.

    Written in the ``setup_context`` form so that ``torch.func`` transforms (``grad``, ``vjp``, ``vmap``,
    ``jacrev``) accept it. Under ``vmap`` the mapped dimension is folded into the batch: samples are independent,
    so one call on (V B, C, H, W) is the whole batched call.
    """

    @staticmethod
    def forward(x, weight, q_lo, q_hi, complement, backend):
        return _ratio_forward(x, weight, q_lo, q_hi, complement, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _ratio_setup(ctx, inputs, output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value, grad_stats):
        return _ratio_input_grads(ctx, grad_value, _ratio_grad_vmappable)

    @staticmethod
    def vmap(info, in_dims, x, weight, q_lo, q_hi, complement, backend):
        _refuse_mapped_weight(in_dims[1])
        size = info.batch_size
        value, stats = _BandRatio.apply(_fold(x, in_dims[0], size), weight, q_lo, q_hi, complement, backend)
        return (value.unflatten(0, (size, -1)), stats.unflatten(0, (size, -1))), (0, 0)


MAPPED_WEIGHT = ("torch.func transforms (vmap, grad) over the weight map are not supported: it is a constant of the "
                 "penalty; map over, or differentiate with respect to, the Jacobian only")


def _refuse_mapped_weight(in_dim):
    if in_dim is not None:
        raise ValueError(MAPPED_WEIGHT)


def _fold(t, in_dim, size):
    """t with its mapped dimension (``in_dim``, or a broadcast one when None) folded into dimension 0."""
    t = t.unsqueeze(0).expand(size, *t.shape) if in_dim is None else t.movedim(in_dim, 0)
    return t.flatten(0, 1).contiguous()


class _BandRatioGrad(torch.autograd.Function):
    """The ratio's backward as a Function, for the backward of :class:`_BandRatio` under ``vmap`` (``jacrev``,
    ``vmap(grad(...))``): a batched upstream gradient is folded into the batch like the forward's input."""

    @staticmethod
    def forward(grad, x, weight, q_lo, q_hi, complement, value, stats, backend):
        return _ratio_grad(grad, x, weight, q_lo, q_hi, complement, value, stats, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_dx):
        raise RuntimeError("the penalty's gradient is first-order only (the penalty never needs a second derivative)")

    @staticmethod
    def vmap(info, in_dims, grad, x, weight, q_lo, q_hi, complement, value, stats, backend):
        _refuse_mapped_weight(in_dims[2])
        size = info.batch_size
        g, xs, val, sts = (_fold(t, in_dims[i], size) for i, t in ((0, grad), (1, x), (6, value), (7, stats)))
        dx = _BandRatioGrad.apply(g, xs, weight, q_lo, q_hi, complement, val, sts, backend)
        return dx.unflatten(0, (size, -1)), 0


def _ratio_grad_vmappable(grad, x, weight, q_lo, q_hi, complement, value, stats, backend):
    """The ratio's backward; through :class:`_BandRatioGrad` only under torch.func transforms (it costs host time)."""
    if torch._C._are_functorch_transforms_active():
        return _BandRatioGrad.apply(grad, x, weight, q_lo, q_hi, complement, value, stats, backend)
    return _ratio_grad(grad, x, weight, q_lo, q_hi, complement, value, stats, backend)


def band_ratio(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool,
               backend: str) -> tuple[Tensor, Tensor]:
    """Fused power-2 band ratio of each sample of x (contiguous): ``(value (B,), stats (B, 2))``.

    value_b = E_band / E_all (or ``complement``: 1 - that, 0 for an all-zero sample); NaN for a sample that
    holds NaN/Inf. Differentiable in x; eager calls skip custom-op dispatch, compiled code uses ``jafr::band_ratio``.
    """
    if torch.compiler.is_compiling():
        return band_ratio_op(x, weight, q_lo, q_hi, complement, backend)
    return _BandRatio.apply(x, weight, q_lo, q_hi, complement, backend)


# --------------------------------------------------------------------------- value and gradient in one op
@torch.library.custom_op("jafr::band_ratio_and_grad", mutates_args=())
def band_ratio_and_grad_op(
    x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool, scale: float, backend: str
) -> tuple[Tensor, Tensor]:
    """``(value (B,), dx)``, dx the gradient of ``scale * sum(value)``; see ``backends.Kernels.ratio_and_grad``."""
    return backends.get(backend).ratio_and_grad(x, weight, q_lo, q_hi, complement, scale)


band_ratio_and_grad_op.register_fake(fakes.band_ratio_and_grad)


def band_ratio_and_grad(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool, scale: float,
                        backend: str) -> tuple[Tensor, Tensor]:
    """The fused power-2 band ratio of each sample of x (contiguous) and its gradient, in one op:
    ``(value (B,), scale * d value / dx)``, value as in :func:`band_ratio`.

    Not differentiable: x is read as data (no autograd graph is recorded) and both outputs are plain tensors;
    no autograd formula is registered, so differentiating through the op raises. Eager calls skip custom-op
    dispatch; compiled code uses ``jafr::band_ratio_and_grad``.
    """
    if torch.compiler.is_compiling():
        return band_ratio_and_grad_op(x, weight, q_lo, q_hi, complement, scale, backend)
    return backends.get(backend).ratio_and_grad(x, weight, q_lo, q_hi, complement, scale)
