"""Datasets: Fashion-MNIST from idx files; CIFAR-10/100, SVHN, TinyImageNet and the -C corruption sets from
small files written in their published layouts (labels and images checked to line up); clear errors for
missing/truncated/malformed files; deterministic augmentation."""
import gzip
import os
import struct

import pytest
import torch

import published_layouts as layouts
from jafr_kernels.train import DatasetError, dataset_info, get_batch, load_dataset
from jafr_kernels.train.data import FASHION_MNIST_DIR, augment, check_dataset, read_idx


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
def test_missing_published_datasets_fail_at_once(tmp_path, name, expected):
    with pytest.raises(DatasetError, match=rf"{name} not found at {tmp_path}.*{expected}"):
        load_dataset(name, data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="no --data-dir"):
        load_dataset(name)
    with pytest.raises(DatasetError, match=rf"{name} not found at {tmp_path}"):
        check_dataset(name, str(tmp_path))


def test_corrupt_cifar10_batch_names_the_file(tmp_path):
    layouts.write_cifar(tmp_path, "cifar10", n_train=20, n_test=10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"cannot read .*cifar-10-batches-py/data_batch_3"):
        load_dataset("cifar10", data_dir=str(tmp_path))


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_python_batches(tmp_path, name, classes):
    layouts.write_cifar(tmp_path, name, n_train=200, n_test=100)
    check_dataset(name, str(tmp_path))
    train, test = load_dataset(name, True, str(tmp_path)), load_dataset(name, False, str(tmp_path))
    assert (len(train), len(test)) == (200, 100)
    x, y = get_batch(train, torch.arange(200))
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32
    expected = torch.tensor([layouts.cifar_label(i, classes) for i in range(200)])
    assert torch.equal(y, expected) and int(y.max()) < classes
    # image i (pixel value 11 i mod 256) carries label i: rows, channels and labels stay together
    values = torch.tensor([layouts.cifar_value(i) for i in range(200)], dtype=torch.float32) / 255
    assert torch.equal(x.flatten(1).amin(1), values) and torch.equal(x.flatten(1).amax(1), values)
    assert test[7][1] == layouts.cifar_label(7, classes)


def test_svhn_mat_files(tmp_path):
    layouts.write_svhn(tmp_path, n_train=60, n_test=30)
    train, test = load_dataset("svhn", True, str(tmp_path)), load_dataset("svhn", False, str(tmp_path))
    assert (len(train), len(test)) == (60, 30)
    x, y = get_batch(train, torch.arange(60))
    assert x.shape == (60, 3, 32, 32)
    assert torch.equal(y, torch.arange(60) % 10)  # the .mat labels 10 for digit 0
    assert torch.equal(x.flatten(1).amax(1), torch.arange(60, dtype=torch.float32) / 255)


def test_tinyimagenet_published_val_layout(tmp_path):
    """val/images/*.JPEG + val_annotations.txt: each image gets its annotated class (fails on a plain
    ImageFolder over val/, which sees one class named 'images')."""
    layouts.write_tinyimagenet(tmp_path, train_per_class=4, n_val=12)
    train = load_dataset("tinyimagenet", True, str(tmp_path))
    val = load_dataset("tinyimagenet", False, str(tmp_path))
    assert len(train) == 4 * len(layouts.TINY_WNIDS) and len(val) == 12
    xt, yt = get_batch(train, torch.arange(len(train)))
    assert xt.shape[1:] == (3, 64, 64) and sorted(set(yt.tolist())) == [0, 1, 2]
    for x, y in zip(xt, yt):  # train images of class c have class colour c
        red = layouts.tiny_colour(int(y))[0] / 255
        assert abs(float(x[0].mean()) - red) < 0.03
    xv, yv = get_batch(val, torch.arange(12))
    assert yv.tolist() == [layouts.tiny_val_label(i) for i in range(12)]
    blue = torch.tensor([layouts.tiny_val_value(i) for i in range(12)], dtype=torch.float32) / 255
    assert (xv[:, 2].mean((1, 2)) - blue).abs().max() < 0.03  # sample i is val_i, in natural name order
    for x, y in zip(xv, yv):
        assert abs(float(x[0].mean()) - layouts.tiny_colour(int(y))[0] / 255) < 0.03


def test_tinyimagenet_val_sorted_into_class_folders(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            d = tmp_path / "tiny-imagenet-200" / split / wnid / ("images" if split == "train" else "")
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (255, 0, 0)).save(d / f"{wnid}_0.JPEG")
    ds = load_dataset("tinyimagenet", train=False, data_dir=str(tmp_path))
    x, y = ds[1]
    assert len(ds) == 2 and x.shape == (3, 64, 64) and y == 1 and 0.95 < float(x[0].mean()) <= 1


def test_tinyimagenet_val_annotation_with_an_unknown_class_names_the_line(tmp_path):
    layouts.write_tinyimagenet(tmp_path, train_per_class=1, n_val=3)
    path = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    path.write_text(path.read_text() + "val_0.JPEG\tn99999999\t0\t0\t63\t63\n")
    with pytest.raises(DatasetError, match=r"val_annotations.txt line 4"):
        load_dataset("tinyimagenet", False, str(tmp_path))


def test_cifar_c_npy_files_line_up_with_the_test_set(tmp_path):
    from jafr_kernels.eval.corruption_data import CifarC, open_published

    root = layouts.write_cifar_c(tmp_path / "CIFAR-10-C", n_test=100)
    data = open_published(root)
    assert isinstance(data, CifarC) and data.names == ["contrast", "fog", "gaussian_noise"] and data.block == 100
    idx = torch.tensor([3, 50, 99])
    for sev in (1, 5):
        x, y = data.load("fog", sev, idx)
        assert x.shape == (3, 3, 32, 32)
        assert y.tolist() == [layouts.cifar_label(i, 10) for i in idx.tolist()]
        expected = torch.tensor([(layouts.cifar_value(i) + 40 * sev + 1) % 256 for i in idx.tolist()], dtype=torch.float32) / 255
        assert torch.equal(x.flatten(1).amax(1), expected)
    with pytest.raises(ValueError, match="does not match this test set"):
        data.load("fog", 1, torch.tensor([100]))


def test_tinyimagenet_c_folders_line_up_with_the_val_set(tmp_path):
    from jafr_kernels.eval.corruption_data import FolderC, open_published

    layouts.write_tinyimagenet(tmp_path / "data", train_per_class=1, n_val=12)
    root = layouts.write_tinyimagenet_c(tmp_path / "Tiny-ImageNet-C", n_val=12)
    val = load_dataset("tinyimagenet", False, str(tmp_path / "data"))
    data = open_published(root)
    assert isinstance(data, FolderC) and data.names == ["fog", "gaussian_noise"]
    idx = torch.tensor([0, 2, 9, 11])
    xv, yv = get_batch(val, idx)
    for sev in (1, 5):
        x, y = data.load("gaussian_noise", sev, idx)
        assert torch.equal(y, yv)  # position i is the corrupted val_i
        assert (x[:, 2] - xv[:, 2]).abs().mean((1, 2)).max() < 0.03  # same image (its blue value)
        assert (xv[:, 0] - x[:, 0]).mean((1, 2)).sub(10 * sev / 255).abs().max() < 0.03  # darkened by 10 s
    with pytest.raises(ValueError, match="does not match this test set"):
        data.load("fog", 1, torch.tensor([12]))


def test_augment_is_deterministic_and_shape_preserving():
    info = dataset_info("cifar10")
    x = torch.rand(6, 3, 32, 32)
    a = augment(x, info, torch.Generator().manual_seed(1))
    b = augment(x, info, torch.Generator().manual_seed(1))
    c = augment(x, info, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment(x, dataset_info("fashion_mnist"), torch.Generator()), x)  # no augmentation
