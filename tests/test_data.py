"""Datasets: Fashion-MNIST from idx files, clear errors for missing/truncated/malformed files, ImageFolder
layout for TinyImageNet, deterministic augmentation."""
import gzip
import os
import struct

import pytest
import torch

from jafr_kernels.train import DatasetError, dataset_info, get_batch, load_dataset
from jafr_kernels.train.data import FASHION_MNIST_DIR, augment, read_idx


def test_dataset_info():
    fm = dataset_info("fashion_mnist")
    assert (fm.channels, fm.image_size, fm.num_classes, fm.eps) == (1, 28, 10, 0.1)
    for name, classes, size in [("cifar10", 10, 32), ("cifar100", 100, 32), ("svhn", 10, 32), ("tinyimagenet", 200, 64)]:
        info = dataset_info(name)
        assert (info.channels, info.num_classes, info.image_size, info.eps) == (3, classes, size, 8 / 255)
    assert dataset_info("CIFAR-10").name == "cifar10"
    with pytest.raises(ValueError, match="dataset must be one of"):
        dataset_info("imagenet")


def test_fashion_mnist_loads():
    train, test = load_dataset("fashion_mnist", train=True), load_dataset("fashion_mnist", train=False)
    assert (len(train), len(test)) == (60000, 10000)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    xb, yb = get_batch(test, torch.arange(100))
    assert xb.shape == (100, 1, 28, 28) and yb.dtype == torch.int64
    assert 0 <= float(xb.min()) and float(xb.max()) <= 1 and float(xb.max()) > 0.9
    assert set(yb.tolist()) <= set(range(10)) and len(set(train.labels[:1000].tolist())) == 10
    torch.testing.assert_close(get_batch(test, torch.tensor([3]))[0][0], test[3][0])


def test_missing_fashion_mnist_names_path_and_files(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path}.*train-images-idx3-ubyte\.gz"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def _copy_fm(tmp_path, prefix="t10k"):
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte.gz"
        with open(os.path.join(FASHION_MNIST_DIR, name), "rb") as f, open(tmp_path / name, "wb") as g:
            g.write(f.read())
    return tmp_path / f"{prefix}-images-idx3-ubyte.gz"


def test_truncated_gzip_names_the_file(tmp_path):
    images = _copy_fm(tmp_path)
    data = images.read_bytes()
    images.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_dataset("fashion_mnist", train=False, data_dir=str(tmp_path))


def test_short_payload_and_bad_magic_name_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBBIII", 0, 8, 3, 10, 28, 28) + bytes(100))  # header wants 7840 bytes
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz.*truncated"):
        read_idx(str(path))
    with gzip.open(path, "wb") as f:
        f.write(b"PK\x03\x04garbage")
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz.*bad header"):
        read_idx(str(path))


@pytest.mark.parametrize("name,expected", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                           ("svhn", "train_32x32.mat"), ("tinyimagenet", "tiny-imagenet-200")])
def test_missing_torchvision_datasets_fail_at_once(tmp_path, name, expected):
    with pytest.raises(DatasetError, match=rf"{name} not found at {tmp_path}.*{expected}"):
        load_dataset(name, data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="no --data-dir"):
        load_dataset(name)


def test_corrupt_cifar10_names_the_path(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=rf"cifar10 not found at {tmp_path}.*Reading failed"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_tinyimagenet_imagefolder_layout(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            d = tmp_path / "tiny-imagenet-200" / split / wnid / ("images" if split == "train" else "")
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (255, 0, 0)).save(d / f"{wnid}_0.JPEG")
    ds = load_dataset("tinyimagenet", train=False, data_dir=str(tmp_path))
    x, y = ds[1]
    assert len(ds) == 2 and x.shape == (3, 64, 64) and y == 1 and 0.95 < float(x[0].mean()) <= 1


def test_augment_is_deterministic_and_shape_preserving():
    info = dataset_info("cifar10")
    x = torch.rand(6, 3, 32, 32)
    a = augment(x, info, torch.Generator().manual_seed(1))
    b = augment(x, info, torch.Generator().manual_seed(1))
    c = augment(x, info, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment(x, dataset_info("fashion_mnist"), torch.Generator()), x)  # no augmentation
