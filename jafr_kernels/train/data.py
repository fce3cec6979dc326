"""Datasets for training and evaluation: images as float tensors in [0, 1], shape (C, H, W), labels int.

Fashion-MNIST (the default) is read from gzipped idx files, by default from
``/usr/share/datasets/fashion-mnist/``. CIFAR-10/100 (python pickle batches), SVHN (``.mat``, read with
scipy) and TinyImageNet-200 (JPEG folders; the validation images labelled by ``val_annotations.txt``) are read
from a local ``data_dir`` in their published layouts, never downloaded. (torchvision's CIFAR and SVHN classes
are not used: they accept only files whose MD5 matches the download.) A missing dataset fails at once with
the path and the expected files; a truncated or malformed file fails with its name.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
from dataclasses import dataclass

import numpy as np
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


def _fashion_mnist_paths(train: bool, data_dir: str | None) -> list[str]:
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
    return paths


def _fashion_mnist(train: bool, data_dir: str | None) -> TensorImageDataset:
    paths = _fashion_mnist_paths(train, data_dir)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"Fashion-MNIST files {paths[0]} and {paths[1]} disagree: images {tuple(images.shape)}, labels {tuple(labels.shape)}")
    return TensorImageDataset(images[:, None].contiguous(), labels.long())


# --------------------------------------------------------------------------- published layouts
_LAYOUT = {
    "cifar10": "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python pickle batches)",
    "cifar100": "cifar-100-python/{train, test, meta} (the python pickle batches)",
    "svhn": "train_32x32.mat and test_32x32.mat (the cropped-digits .mat files)",
    "tinyimagenet": "tiny-imagenet-200/train/<wnid>/images/*.JPEG, tiny-imagenet-200/val/images/*.JPEG with "
                    "val/val_annotations.txt (or val sorted into val/<wnid>/ folders)",
}


def _missing(name: str, root: str | None, detail: str = "") -> DatasetError:
    where = root if root else "<data-dir>"
    hint = " (no --data-dir / data_dir given)" if not root else ""
    return DatasetError(f"{name} not found at {where}{hint}: expected {_LAYOUT[name]}; datasets are never downloaded."
                        + (f" {detail}" if detail else ""))


def _cifar_files(name: str, root: str, train: bool) -> tuple[list[str], str]:
    if name == "cifar10":
        base = os.path.join(root, "cifar-10-batches-py")
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        return [os.path.join(base, f) for f in files], os.path.join(base, "batches.meta")
    base = os.path.join(root, "cifar-100-python")
    return [os.path.join(base, "train" if train else "test")], os.path.join(base, "meta")


def _unpickle(path: str, name: str, root: str) -> dict:
    import pickle

    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DatasetError(f"{name}: cannot read {path}: {exc} (truncated or not a CIFAR python pickle?)") from None


def _cifar(name: str, train: bool, root: str) -> TensorImageDataset:
    """CIFAR-10/100 from the published python pickle batches (``data`` (N, 3072) uint8 rows, channel-major)."""
    files, meta_path = _cifar_files(name, root, train)
    classes = dataset_info(name).num_classes
    meta = _unpickle(meta_path, name, root)
    names = meta.get("label_names" if name == "cifar10" else "fine_label_names")
    if names is None or len(names) != classes:
        raise DatasetError(f"{name}: {meta_path} lists {0 if names is None else len(names)} class names, expected {classes}")
    images, labels = [], []
    for path in files:
        batch = _unpickle(path, name, root)
        key = "labels" if name == "cifar10" else "fine_labels"
        if "data" not in batch or key not in batch:
            raise DatasetError(f"{name}: {path} has no 'data' / '{key}' entries")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(batch[key]):
            raise DatasetError(f"{name}: {path} holds data {data.shape} and {len(batch[key])} labels; expected (N, 3072) and N")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(batch[key])
    return _checked(name, torch.from_numpy(np.concatenate(images)), torch.as_tensor(labels, dtype=torch.long), files[0])


def _svhn(train: bool, root: str) -> TensorImageDataset:
    """SVHN cropped digits from the published ``{train,test}_32x32.mat``: X (32, 32, 3, N), y (N, 1) in 1..10 (10 is digit 0)."""
    from scipy.io import loadmat

    path = os.path.join(root, f"{'train' if train else 'test'}_32x32.mat")
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for damaged files
        raise DatasetError(f"svhn: cannot read {path}: {exc} (truncated or not a .mat file?)") from None
    if "X" not in mat or "y" not in mat or mat["X"].ndim != 4 or mat["X"].shape[:3] != (32, 32, 3):
        raise DatasetError(f"svhn: {path} needs X of shape (32, 32, 3, N) and y of shape (N, 1)")
    images = torch.from_numpy(np.ascontiguousarray(mat["X"].astype(np.uint8).transpose(3, 2, 0, 1)))
    y = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1))
    if y.numel() and (y.min() < 1 or y.max() > 10):
        raise DatasetError(f"svhn: {path} has labels outside 1..10 (the published files label digit 0 as 10)")
    return _checked("svhn", images, y % 10, path)


def _checked(name: str, images: Tensor, labels: Tensor, path: str) -> TensorImageDataset:
    classes = dataset_info(name).num_classes
    if labels.shape != (images.shape[0],):
        raise DatasetError(f"{name}: {path} gives {images.shape[0]} images but {labels.numel()} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetError(f"{name}: {path} has labels outside 0..{classes - 1}")
    return TensorImageDataset(images, labels)


def image_sort_key(path: str):
    """Natural order of image file names (``val_2`` before ``val_10``): the order of the TinyImageNet
    validation set, and of each Tiny-ImageNet-C severity folder, which holds the same file names."""
    parts = re.split(r"(\d+)", os.path.basename(path))
    return [int(p) if p.isdigit() else p for p in parts]


IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def read_rgb(path: str) -> Tensor:
    """One image file as a (3, H, W) uint8 tensor (PIL, converted to RGB)."""
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


class ImageFiles(Dataset):
    """Labelled image files; items are ((3, H, W) float32 in [0, 1], int). ``samples``: list of (path, label)."""

    def __init__(self, samples: list, classes: list):
        self.samples, self.classes = samples, classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            x = read_rgb(path)
        except OSError as exc:
            raise DatasetError(f"cannot read image {path}: {exc}") from None
        return x.float() / 255.0, label


def _images_under(folder: str) -> list[str]:
    found = []
    for base, _, files in os.walk(folder):
        found += [os.path.join(base, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _tinyimagenet(train: bool, root: str) -> ImageFiles:
    """TinyImageNet-200: classes are the sorted wnid folders of ``train/`` (torchvision ``ImageFolder`` order).

    The validation split comes from ``val/images`` + ``val/val_annotations.txt`` (the published layout) or from
    ``val/<wnid>/`` folders; either way in :func:`image_sort_key` order of the file names.
    """
    from torchvision.datasets import ImageFolder

    base = os.path.join(root, "tiny-imagenet-200")
    train_dir, val_dir = os.path.join(base, "train"), os.path.join(base, "val")
    if not os.path.isdir(train_dir):
        raise _missing("tinyimagenet", root, f"(no folder {train_dir})")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if not classes or len(classes) > dataset_info("tinyimagenet").num_classes:
        raise DatasetError(f"tinyimagenet: {train_dir} holds {len(classes)} class folders; expected 1 to 200 <wnid> folders")
    index = {c: i for i, c in enumerate(classes)}
    if train:
        folder = ImageFolder(train_dir)
        if folder.classes != classes:
            raise DatasetError(f"tinyimagenet: {train_dir} has class folders without images")
        return ImageFiles(list(folder.samples), classes)
    annotations = os.path.join(val_dir, "val_annotations.txt")
    samples = []
    if os.path.isfile(annotations):
        with open(annotations) as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 2 or fields[1] not in index:
                    raise DatasetError(f"tinyimagenet: {annotations} line {n}: expected '<file> <wnid> ...' with a wnid of train/, got {line.strip()!r}")
                path = os.path.join(val_dir, "images", fields[0])
                if not os.path.isfile(path):
                    raise DatasetError(f"tinyimagenet: {annotations} line {n} names {path}, which does not exist")
                samples.append((path, index[fields[1]]))
    elif os.path.isdir(val_dir) and any(d in index for d in os.listdir(val_dir)):
        for wnid in os.listdir(val_dir):
            if wnid in index:
                samples += [(p, index[wnid]) for p in _images_under(os.path.join(val_dir, wnid))]
    else:
        raise _missing("tinyimagenet", root, f"(no {annotations} and no val/<wnid>/ folders)")
    if not samples:
        raise DatasetError(f"tinyimagenet: no validation images found under {val_dir}")
    samples.sort(key=lambda s: image_sort_key(s[0]))
    return ImageFiles(samples, classes)


def _required_files(name: str, root: str) -> list[str]:
    if name in ("cifar10", "cifar100"):
        train, meta = _cifar_files(name, root, True)
        return train + _cifar_files(name, root, False)[0] + [meta]
    if name == "svhn":
        return [os.path.join(root, "train_32x32.mat"), os.path.join(root, "test_32x32.mat")]
    return [os.path.join(root, "tiny-imagenet-200", "train"), os.path.join(root, "tiny-imagenet-200", "val")]


def check_dataset(name: str, data_dir: str | None = None) -> None:
    """Raise :class:`DatasetError` (path and expected layout) unless ``name``'s files are present; reads nothing."""
    key = _normalise(name)
    if key == "fashion_mnist":
        for train in (True, False):
            _fashion_mnist_paths(train, data_dir)
        return
    if not data_dir or not os.path.isdir(data_dir):
        raise _missing(key, data_dir)
    absent = [p for p in _required_files(key, data_dir) if not os.path.exists(p)]
    if absent:
        raise _missing(key, data_dir, f"(missing: {', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''})")


def load_dataset(name: str = "fashion_mnist", train: bool = True, data_dir: str | None = None) -> Dataset:
    """A torch Dataset of (x, y): x (C, H, W) float32 in [0, 1] (no normalisation), y an int class.

    Args:
        name: ``fashion_mnist`` (default; gzipped idx from ``data_dir`` or /usr/share/datasets/fashion-mnist),
            ``cifar10``, ``cifar100`` (python pickle batches), ``svhn`` (.mat) or ``tinyimagenet`` (JPEG
            folders), read from ``data_dir`` in their published layouts.
        train: the training split (True) or the test/validation split (False).
        data_dir: directory holding the dataset.

    Raises:
        DatasetError: the dataset is missing (the message names the path and expected files) or a file is
            truncated or malformed (the message names the file).
    """
    key = _normalise(name)
    if key == "fashion_mnist":
        return _fashion_mnist(train, data_dir)
    check_dataset(key, data_dir)
    if key in ("cifar10", "cifar100"):
        return _cifar(key, train, data_dir)
    if key == "svhn":
        return _svhn(train, data_dir)
    return _tinyimagenet(train, data_dir)


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
