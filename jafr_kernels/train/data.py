"""Datasets for training and evaluation: images as float tensors in [0, 1], shape (C, H, W), labels int.

Fashion-MNIST (the default) is read from gzipped idx files, by default from
``/usr/share/datasets/fashion-mnist/``. CIFAR-10, CIFAR-100, SVHN and TinyImageNet-200 are read from a local
``data_dir`` in their published layouts through torchvision (never downloaded). A missing dataset fails at
once with the path and the expected files; a truncated or malformed file fails with its name.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DatasetError(RuntimeError):
    """A dataset is missing or a dataset file is unreadable; the message names the path."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts of a dataset: channels, square image side, classes, default L-inf eps, augmentation."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    eps: float
    crop_padding: int  # random-crop padding for training augmentation (0: none)
    flip: bool  # random horizontal flip for training augmentation


_INFO = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 1, 28, 10, 0.1, 0, False),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, 8 / 255, 4, True),
    "cifar100": DatasetInfo("cifar100", 3, 32, 100, 8 / 255, 4, True),
    "svhn": DatasetInfo("svhn", 3, 32, 10, 8 / 255, 4, False),
    "tinyimagenet": DatasetInfo("tinyimagenet", 3, 64, 200, 8 / 255, 4, True),
}
DATASETS = tuple(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """Channels, image size, number of classes, default eps (0.1 Fashion-MNIST, 8/255 otherwise), augmentation."""
    key = _normalise(name)
    return _INFO[key]


def _normalise(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100",
           "tiny_imagenet": "tinyimagenet", "tinyimagenet200": "tinyimagenet"}.get(key, key)
    if key not in _INFO:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    return key


class TensorImageDataset(Dataset):
    """In-memory images (N, C, H, W) uint8 and labels (N,) int64; items are ((C, H, W) float32 in [0, 1], int).

    ``images`` and ``labels`` are public so training loops can index whole batches at once.
    """

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {tuple(images.shape)} {images.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i].float() / 255.0, int(self.labels[i])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(x (B, C, H, W) float32 in [0, 1], y (B,) int64) for a 1-D index tensor."""
        return self.images[idx].float() / 255.0, self.labels[idx]


def get_batch(dataset: Dataset, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Stack the items ``idx`` of any (x, y) dataset into (x (B, C, H, W) float, y (B,) int64)."""
    if hasattr(dataset, "batch"):
        return dataset.batch(idx)
    items = [dataset[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.long)


# --------------------------------------------------------------------------- Fashion-MNIST (idx files)
def read_idx(path: str) -> Tensor:
    """Read a gzipped (or raw) idx file of unsigned bytes into a uint8 tensor; errors name the file."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"cannot read idx file {path}: {exc} (truncated or not gzip?)") from None
    if len(data) < 4:
        raise DatasetError(f"idx file {path} is too short ({len(data)} bytes) to hold a header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim < 1:
        raise DatasetError(f"idx file {path} has a bad header (magic {data[:4].hex()}); expected unsigned-byte idx data")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"idx file {path} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = 1
    for s in shape:
        expected *= s
    if len(data) - header != expected:
        raise DatasetError(f"idx file {path} holds {len(data) - header} data bytes but its header {shape} needs {expected} (truncated?)")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _fashion_mnist(train: bool, data_dir: str | None) -> TensorImageDataset:
    root = data_dir or FASHION_MNIST_DIR
    prefix = "train" if train else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = []
    for name in names:
        for candidate in (os.path.join(root, name + ".gz"), os.path.join(root, name),
                          os.path.join(root, "FashionMNIST", "raw", name + ".gz"), os.path.join(root, "FashionMNIST", "raw", name)):
            if os.path.isfile(candidate):
                paths.append(candidate)
                break
        else:
            raise DatasetError(
                f"Fashion-MNIST not found under {root}: expected {names[0]}.gz and {names[1]}.gz "
                "(gzipped idx files; on Debian: apt-get install dataset-fashion-mnist)"
            )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"Fashion-MNIST files {paths[0]} and {paths[1]} disagree: images {tuple(images.shape)}, labels {tuple(labels.shape)}")
    return TensorImageDataset(images[:, None].contiguous(), labels.long())


# --------------------------------------------------------------------------- torchvision datasets
_EXPECTED = {
    "cifar10": ("cifar-10-batches-py/", ["data_batch_1..5", "test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python/", ["train", "test", "meta"]),
    "svhn": ("", ["train_32x32.mat", "test_32x32.mat"]),
    "tinyimagenet": ("tiny-imagenet-200/", ["train/<wnid>/images/*.JPEG (or train/<wnid>/*.JPEG)", "val/<wnid>/*.JPEG (val sorted into class folders)"]),
}


def _missing(name: str, root: str | None, detail: str = "") -> DatasetError:
    sub, files = _EXPECTED[name]
    where = os.path.join(root, sub) if root else f"<data-dir>/{sub}"
    hint = "" if root else " (no --data-dir / data_dir given)"
    return DatasetError(
        f"{name} not found at {where}{hint}: expected {', '.join(files)} in the published layout; "
        f"datasets are never downloaded.{(' ' + detail) if detail else ''}"
    )


def _torchvision(name: str, train: bool, root: str | None) -> Dataset:
    import numpy as np
    from torchvision import datasets, transforms

    if not root or not os.path.isdir(root):
        raise _missing(name, root)
    try:
        if name in ("cifar10", "cifar100"):
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            if not os.path.isdir(os.path.join(root, _EXPECTED[name][0])):
                raise _missing(name, root)
            ds = cls(root, train=train, download=False)
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            return TensorImageDataset(images, torch.as_tensor(ds.targets))
        if name == "svhn":
            split = "train" if train else "test"
            if not os.path.isfile(os.path.join(root, f"{split}_32x32.mat")):
                raise _missing(name, root)
            ds = datasets.SVHN(root, split=split, download=False)
            return TensorImageDataset(torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.labels) % 10)
        if name == "tinyimagenet":
            sub = os.path.join(root, "tiny-imagenet-200", "train" if train else "val")
            if not os.path.isdir(sub):
                raise _missing(name, root)
            return datasets.ImageFolder(sub, transform=transforms.ToTensor())
    except DatasetError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError, EOFError) as exc:  # torchvision's own "not found or corrupted"
        raise _missing(name, root, f"Reading failed: {exc}") from None
    raise ValueError(f"unknown dataset {name!r}")


def load_dataset(name: str = "fashion_mnist", train: bool = True, data_dir: str | None = None) -> Dataset:
    """A torch Dataset of (x, y): x (C, H, W) float32 in [0, 1] (no normalisation), y an int class.

    Args:
        name: ``fashion_mnist`` (default; gzipped idx from ``data_dir`` or /usr/share/datasets/fashion-mnist),
            ``cifar10``, ``cifar100``, ``svhn`` or ``tinyimagenet`` (from ``data_dir`` in the published layout).
        train: the training split (True) or the test/validation split (False).
        data_dir: directory holding the dataset.

    Raises:
        DatasetError: the dataset is missing (the message names the path and expected files) or a file is
            truncated or malformed (the message names the file).
    """
    key = _normalise(name)
    if key == "fashion_mnist":
        return _fashion_mnist(train, data_dir)
    return _torchvision(key, train, data_dir)


def augment(x: Tensor, info: DatasetInfo, generator: torch.Generator) -> Tensor:
    """Training augmentation on a batch (B, C, H, W): random crop with zero padding and horizontal flip.

    Randomness comes only from ``generator`` (on CPU), so a resumed run repeats it exactly.
    """
    b, _, h, w = x.shape
    pad = info.crop_padding
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
        rows = (offsets[:, 0, None] + torch.arange(h)[None]).to(x.device)  # (B, H)
        cols = (offsets[:, 1, None] + torch.arange(w)[None]).to(x.device)  # (B, W)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if info.flip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()
