"""Readers for the published corruption benchmarks, from a local directory (nothing is downloaded).

* CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich 2019): ``<root>/<corruption>.npy`` of shape
  (5 N, 32, 32, 3) uint8, five severity blocks of the N test images in test-set order (N = 10000 in the
  published files), and ``<root>/labels.npy`` (5 N,).
* Tiny-ImageNet-C: ``<root>/<corruption>/<severity>/<wnid>/<file>.JPEG``, every severity holding the
  validation images under their own file names. Images are taken in :func:`image_sort_key` order of the file
  names, which is the order of the TinyImageNet validation set (:func:`jafr_kernels.train.load_dataset`),
  so position ``i`` is the corrupted version of validation image ``i``; labels index the sorted wnids.

Both give images as (N, 3, H, W) float32 in [0, 1] and labels (N,) int64. When such a directory is given,
the study evaluates on these files instead of generating corruptions.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from jafr_kernels.train.data import IMAGE_EXTENSIONS, image_sort_key, read_rgb



def _check_severity(severity) -> None:
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be in 1..5, got {severity!r}")


def _positions(indices, available: int, where: str) -> np.ndarray:
    idx = np.arange(available) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= available):
        raise ValueError(f"{where} holds {available} images per severity, but test image {int(idx.max())} was asked for: "
                         "the corruption set does not match this test set")
    return idx


class CifarC:
    """The published CIFAR-10-C / CIFAR-100-C ``.npy`` files in ``root`` (read lazily, memory-mapped)."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"CIFAR-C directory not found: {root}")
        labels_path = os.path.join(root, "labels.npy")
        if not os.path.exists(labels_path):
            raise FileNotFoundError(f"CIFAR-C directory {root} has no labels.npy")
        self.root = root
        self.labels = np.load(labels_path)
        self.block = len(self.labels) // 5
        if self.labels.ndim != 1 or self.block * 5 != len(self.labels) or self.block == 0:
            raise ValueError(f"{labels_path} has shape {self.labels.shape}; expected (5 N,): 5 severity blocks of N test images")
        self.names = sorted(f[:-4] for f in os.listdir(root) if f.endswith(".npy") and f != "labels.npy")

    def load(self, name: str, severity: int, indices=None) -> tuple[Tensor, Tensor]:
        """Images (N, 3, 32, 32) float32 in [0, 1] and labels (N,) of ``name`` at ``severity`` (1..5).

        ``indices`` selects test images (positions within the severity block), e.g. an evaluation subset.
        """
        if name not in self.names:
            raise ValueError(f"corruption {name!r} not in {self.root}; available: {self.names}")
        _check_severity(severity)
        data = np.load(os.path.join(self.root, f"{name}.npy"), mmap_mode="r")
        if data.ndim != 4 or data.shape[0] != len(self.labels) or data.shape[-1] != 3:
            raise ValueError(f"{name}.npy has shape {data.shape}; expected ({len(self.labels)}, H, W, 3)")
        start = (severity - 1) * self.block
        idx = _positions(indices, self.block, self.root)
        images = torch.from_numpy(np.ascontiguousarray(data[start + idx])).permute(0, 3, 1, 2).float() / 255
        labels = torch.from_numpy(np.asarray(self.labels[start + idx])).long()
        return images, labels


class FolderC:
    """Tiny-ImageNet-C folders ``root/<corruption>/<severity>/<wnid>/<image>`` (JPEG or PNG)."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"corruption folder not found: {root}")
        self.root = root
        self.names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "1")))

    def _files(self, name: str, severity: int) -> tuple[list[str], list[int]]:
        base = os.path.join(self.root, name, str(severity))
        if not os.path.isdir(base):
            raise FileNotFoundError(f"missing folder {base}")
        classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
        found = []
        for i, cls in enumerate(classes):
            found += [(os.path.join(base, cls, f), i) for f in os.listdir(os.path.join(base, cls))
                      if f.lower().endswith(IMAGE_EXTENSIONS)]
        found.sort(key=lambda item: image_sort_key(item[0]))
        return [f for f, _ in found], [label for _, label in found]

    def load(self, name: str, severity: int, indices=None) -> tuple[Tensor, Tensor]:
        """Images (N, 3, H, W) float32 in [0, 1] and labels (N,); ``indices`` are validation-set positions."""
        if name not in self.names:
            raise ValueError(f"corruption {name!r} not in {self.root}; available: {self.names}")
        _check_severity(severity)
        files, labels = self._files(name, severity)
        idx = _positions(indices, len(files), os.path.join(self.root, name, str(severity)))
        images = [read_rgb(files[i]) for i in idx]
        return torch.stack(images).float() / 255, torch.tensor([labels[i] for i in idx], dtype=torch.long)


def open_published(root: str):
    """The published corruption set in ``root``: :class:`CifarC` for CIFAR-10/100 (``.npy``),
    :class:`FolderC` otherwise (Tiny-ImageNet-C layout)."""
    if os.path.exists(os.path.join(root, "labels.npy")):
        return CifarC(root)
    return FolderC(root)
