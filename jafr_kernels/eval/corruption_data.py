"""Readers for the published corruption benchmarks, from a local directory (nothing is downloaded).

* CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich 2019): ``<root>/<corruption>.npy`` of shape
  (50000, 32, 32, 3) uint8, five severity blocks of 10000 test images in test-set order, and
  ``<root>/labels.npy`` (50000,).
* Tiny-ImageNet-C: ``<root>/<corruption>/<severity>/<wnid>/*.JPEG``; classes are indexed in sorted wnid
  order (as torchvision's ``ImageFolder`` does for the training set).

Both give images as (N, 3, H, W) float32 in [0, 1] and labels (N,) int64. When such a directory is given,
the study evaluates on these files instead of generating corruptions.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

BLOCK = 10000  # images per severity in the published CIFAR-C files


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
        if self.block * 5 != len(self.labels):
            raise ValueError(f"{labels_path} has {len(self.labels)} labels; expected 5 severity blocks of equal size")
        self.names = sorted(f[:-4] for f in os.listdir(root) if f.endswith(".npy") and f != "labels.npy")

    def load(self, name: str, severity: int, indices=None) -> tuple[Tensor, Tensor]:
        """Images (N, 3, 32, 32) float32 in [0, 1] and labels (N,) of ``name`` at ``severity`` (1..5).

        ``indices`` selects test images (positions within the severity block), e.g. an evaluation subset.
        """
        if name not in self.names:
            raise ValueError(f"corruption {name!r} not in {self.root}; available: {self.names}")
        if severity not in (1, 2, 3, 4, 5):
            raise ValueError(f"severity must be in 1..5, got {severity!r}")
        data = np.load(os.path.join(self.root, f"{name}.npy"), mmap_mode="r")
        if data.ndim != 4 or data.shape[0] != len(self.labels) or data.shape[-1] != 3:
            raise ValueError(f"{name}.npy has shape {data.shape}; expected ({len(self.labels)}, H, W, 3)")
        start = (severity - 1) * self.block
        idx = np.arange(self.block) if indices is None else np.asarray(indices)
        images = torch.from_numpy(np.ascontiguousarray(data[start + idx])).permute(0, 3, 1, 2).float() / 255
        labels = torch.from_numpy(np.asarray(self.labels[start + idx])).long()
        return images, labels


class FolderC:
    """Tiny-ImageNet-C style folders ``root/<corruption>/<severity>/<class>/<image>`` (JPEG or PNG)."""

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
        files, labels = [], []
        for i, cls in enumerate(classes):
            for f in sorted(os.listdir(os.path.join(base, cls))):
                if f.lower().endswith((".jpeg", ".jpg", ".png")):
                    files.append(os.path.join(base, cls, f))
                    labels.append(i)
        return files, labels

    def load(self, name: str, severity: int, indices=None) -> tuple[Tensor, Tensor]:
        """Images (N, 3, H, W) float32 in [0, 1] and labels (N,) (sorted class folder order)."""
        from PIL import Image

        files, labels = self._files(name, severity)
        idx = range(len(files)) if indices is None else [int(i) for i in indices]
        images = []
        for i in idx:
            with Image.open(files[i]) as img:
                images.append(torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1))
        return torch.stack(images).float() / 255, torch.tensor([labels[i] for i in idx], dtype=torch.long)


def open_published(dataset: str, root: str):
    """The published corruption set for ``dataset`` in ``root``: :class:`CifarC` for CIFAR-10/100 (``.npy``),
    :class:`FolderC` otherwise (Tiny-ImageNet-C layout)."""
    if os.path.exists(os.path.join(root, "labels.npy")):
        return CifarC(root)
    return FolderC(root)
