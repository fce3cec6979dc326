"""Top-1 accuracy of a classifier on image tensors: the training layer's test accuracy and the evaluation
layer's clean accuracy (:mod:`jafr_kernels.eval.adversarial` builds its attacks' accuracies on these)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def batches(x: Tensor, y: Tensor, batch_size: int):
    """``(x, y)`` in consecutive slices of ``batch_size``."""
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """The predicted class of each image (no autograd graph)."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500, device="cpu") -> float:
    """Top-1 accuracy on (N, C, H, W) images ``x`` with int64 labels ``y`` (N,); puts ``model`` in eval mode."""
    model.eval()
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        correct += int((predict(model, xb.to(device)) == yb.to(device)).sum())
    return correct / max(1, x.shape[0])
