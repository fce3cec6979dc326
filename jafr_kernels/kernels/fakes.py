"""Fake (meta) kernels: the output shapes and dtypes of the ops, for tracing (``torch.compile``, ``opcheck``).

One definition serves both namespaces: the ``jafr::`` ops of :mod:`jafr_kernels.ops` and the C++ extension's
``jafr_cpp::`` ops (:mod:`.cpp`) take their tensor arguments in the same order and differ only in trailing
arguments (``backend`` or ``path``), which the fakes ignore. Outputs are in the accumulation dtype (fp32, fp64
for fp64 input), gradients in x's dtype and contiguous.
"""
from __future__ import annotations

import torch

from jafr_kernels.reference import accumulate_dtype


def _like(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def energy(x, *_):
    return x.new_empty(x.shape[:2], dtype=accumulate_dtype(x.dtype))


def mean_magnitude(x, *_):
    return x.new_empty((x.shape[-2], x.shape[-1] // 2 + 1), dtype=accumulate_dtype(x.dtype))


def band_ratio(x, *_):
    acc = accumulate_dtype(x.dtype)
    return x.new_empty(x.shape[:1], dtype=acc), x.new_empty((x.shape[0], 2), dtype=acc)


def band_ratio_and_grad(x, *_):
    return x.new_empty(x.shape[:1], dtype=accumulate_dtype(x.dtype)), _like(x)


def backward(grad, x, *_):
    """Every backward op: the gradient with respect to x."""
    return _like(x)
