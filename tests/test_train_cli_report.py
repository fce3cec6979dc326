"""``jafr train`` ends with the test accuracy and warns about a λ far beyond the usual range."""
import re

import pytest

from jafr_kernels.cli import main
from jafr_kernels.train.cli import lam_warning

TRAIN = ["train", "--max-steps", "2", "--batch-size", "32", "--train-subset", "64", "--no-progress", "--device", "cpu"]


def test_train_ends_with_the_test_accuracy(tmp_path, capsys):
    from jafr_kernels.eval.adversarial import clean_accuracy
    from jafr_kernels.train import get_batch, load_dataset, load_trained_model

    assert main(TRAIN + ["--method", "standard", "--test-subset", "40", "--out", str(tmp_path / "r")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.fullmatch(r"test accuracy ([0-9.]+)% \(40 fashion_mnist test images\)", last)
    assert found, last
    import torch

    x, y = get_batch(load_dataset("fashion_mnist", train=False), torch.arange(40))
    expected = clean_accuracy(load_trained_model(str(tmp_path / "r")), x, y)
    assert float(found.group(1)) == pytest.approx(100 * expected, abs=0.005)


def test_test_subset_zero_skips_it_and_huge_lam_warns(tmp_path, capsys):
    assert main(TRAIN + ["--lam", "1e6", "--test-subset", "0", "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert "test accuracy" not in out
    assert "warning: --lam 1e+06 is over 100x the usual 0.1" in err


def test_lam_warning_threshold_follows_the_formulation():
    assert lam_warning(0.1, "ratio", "jafr") is None and lam_warning(10, "ratio", "jafr") is None
    assert lam_warning(11, "ratio", "jafr") and lam_warning(0.2, "official", "fgsm+jafr")
    assert lam_warning(1e6, "ratio", "standard") is None  # λ is not used without JaFR
    assert lam_warning(None, "ratio", "jafr") is None
