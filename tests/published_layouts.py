"""Small datasets written in the exact published layouts (CIFAR pickle batches, SVHN .mat, TinyImageNet and
Tiny-ImageNet-C JPEG folders, CIFAR-10-C .npy), for tests. Pixel values encode what each image is, so a test
can check that labels and corrupted images line up with the right clean image."""
import os
import pickle

import numpy as np


def cifar_label(i: int, classes: int) -> int:
    return (7 * i + 3) % classes


def cifar_value(i: int) -> int:
    """Every pixel of image ``i`` (train or test) has this value."""
    return (11 * i) % 256


def write_cifar(root, name="cifar10", n_train=200, n_test=100) -> str:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` or ``root/cifar-100-python/{train,
    test, meta}``; image i is constant ``cifar_value(i)`` with label ``cifar_label(i)``."""
    classes = 10 if name == "cifar10" else 100
    base = os.path.join(root, "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    os.makedirs(base, exist_ok=True)
    key = "labels" if name == "cifar10" else "fine_labels"

    def batch(indices):
        data = np.stack([np.full(3072, cifar_value(i), np.uint8) for i in indices])
        return {"batch_label": "synthetic", key: [cifar_label(i, classes) for i in indices], "data": data,
                "filenames": [f"img_{i}.png" for i in indices]}

    def dump(obj, fname):
        with open(os.path.join(base, fname), "wb") as f:
            pickle.dump(obj, f, protocol=2)

    if name == "cifar10":
        chunks = np.array_split(np.arange(n_train), 5)
        for k, chunk in enumerate(chunks, 1):
            dump(batch(chunk.tolist()), f"data_batch_{k}")
        dump(batch(list(range(n_test))), "test_batch")
        dump({"label_names": [f"c{k}" for k in range(10)], "num_cases_per_batch": n_train // 5}, "batches.meta")
    else:
        train = batch(list(range(n_train)))
        train["coarse_labels"] = [0] * n_train
        dump(train, "train")
        dump(batch(list(range(n_test))), "test")
        dump({"fine_label_names": [f"c{k}" for k in range(100)], "coarse_label_names": [f"s{k}" for k in range(20)]}, "meta")
    return str(root)


def write_svhn(root, n_train=60, n_test=30) -> str:
    """``root/{train,test}_32x32.mat``: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 (10 = digit 0); image i of a
    split is constant ``i`` with digit ``i % 10``."""
    from scipy.io import savemat

    os.makedirs(root, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x = np.stack([np.full((32, 32, 3), i, np.uint8) for i in range(n)], axis=-1)
        y = np.array([[i % 10 if i % 10 else 10] for i in range(n)], dtype=np.uint8)
        savemat(os.path.join(root, f"{split}_32x32.mat"), {"X": x, "y": y})
    return str(root)


TINY_WNIDS = ("n01443537", "n01629819", "n01641577")


def tiny_colour(label: int):
    return (60 + 80 * label, 220 - 60 * label, 30)


def tiny_val_value(i: int) -> int:
    """Blue channel of validation image ``val_i`` (and of its corrupted copies)."""
    return 20 + 16 * i


def _save(path, rgb):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (64, 64), rgb).save(path, format="JPEG", quality=95)


def tiny_val_label(i: int) -> int:
    return (i * 2) % len(TINY_WNIDS)


def write_tinyimagenet(root, train_per_class=4, n_val=12) -> str:
    """``root/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/<wnid>_<k>.JPEG + <wnid>_boxes.txt,
    val/images/val_<i>.JPEG, val/val_annotations.txt}``. Train images of class c have colour
    ``tiny_colour(c)``; ``val_i`` has label ``tiny_val_label(i)``, red/green of its class and blue
    ``tiny_val_value(i)``. The annotation file lists the images out of order, as a shuffled file would."""
    base = os.path.join(root, "tiny-imagenet-200")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.write("\n".join(TINY_WNIDS) + "\n")
    for c, wnid in enumerate(TINY_WNIDS):
        folder = os.path.join(base, "train", wnid)
        for k in range(train_per_class):
            _save(os.path.join(folder, "images", f"{wnid}_{k}.JPEG"), tiny_colour(c))
        with open(os.path.join(folder, f"{wnid}_boxes.txt"), "w") as f:
            f.writelines(f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n" for k in range(train_per_class))
    lines = []
    for i in range(n_val):
        label = tiny_val_label(i)
        r, g, _ = tiny_colour(label)
        _save(os.path.join(base, "val", "images", f"val_{i}.JPEG"), (r, g, tiny_val_value(i)))
        lines.append(f"val_{i}.JPEG\t{TINY_WNIDS[label]}\t0\t0\t63\t63\n")
    with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
        f.writelines(reversed(lines))
    os.makedirs(os.path.join(base, "test", "images"), exist_ok=True)  # the unlabelled test split
    _save(os.path.join(base, "test", "images", "test_0.JPEG"), (0, 0, 0))
    return str(root)


def write_tinyimagenet_c(root, names=("gaussian_noise", "fog"), n_val=12) -> str:
    """``root/<corruption>/<severity>/<wnid>/val_<i>.JPEG`` for every validation image: the image's class colour
    darkened by ``10 * severity`` and its blue value kept, so each file is traceable to ``val_i``."""
    for name in names:
        for sev in range(1, 6):
            for i in range(n_val):
                label = tiny_val_label(i)
                r, g, _ = tiny_colour(label)
                _save(os.path.join(root, name, str(sev), TINY_WNIDS[label], f"val_{i}.JPEG"),
                      (r - 10 * sev, g - 10 * sev, tiny_val_value(i)))
    return str(root)


def write_cifar_c(root, n_test=100, classes=10, names=("gaussian_noise", "fog", "contrast")) -> str:
    """``root/<name>.npy`` (5 n_test, 32, 32, 3) uint8 and ``root/labels.npy``: severity s of test image i is
    constant ``(cifar_value(i) + 40 s) % 256``."""
    os.makedirs(root, exist_ok=True)
    labels = np.array([cifar_label(i, classes) for i in range(n_test)] * 5, dtype=np.int64)
    np.save(os.path.join(root, "labels.npy"), labels)
    for k, name in enumerate(names):
        blocks = [np.stack([np.full((32, 32, 3), (cifar_value(i) + 40 * s + k) % 256, np.uint8) for i in range(n_test)])
                  for s in range(1, 6)]
        np.save(os.path.join(root, f"{name}.npy"), np.concatenate(blocks))
    return str(root)
