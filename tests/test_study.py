"""The study: method parsing, the report rebuilt from files on disk, and a tiny end-to-end study + CLI."""
import json
import os

import pytest
import torch

from jafr_kernels.eval.report import FIGURES, build_report
from jafr_kernels.eval.study import StudyConfig, parse_method

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def test_parse_method():
    assert parse_method("standard") == ("standard", "standard", "low")
    assert parse_method("jafr") == ("jafr_low", "jafr", "low")
    assert parse_method("jafr:high") == ("jafr_high", "jafr", "high")
    assert parse_method("fgsm+jafr") == ("fgsm+jafr", "fgsm+jafr", "low")
    assert parse_method("fgsm+jafr:high") == ("fgsm+jafr_high", "fgsm+jafr", "high")
    with pytest.raises(ValueError, match="target"):
        parse_method("fgsm:high")
    with pytest.raises(ValueError, match="'low' or 'high'"):
        parse_method("jafr:middle")


def _fake_run(label, clean, low, high, pgd, ratio, h=8, w=8):
    eps = ["0.0500", "0.1000"]
    spec = (torch.rand(h, w) + 0.1).tolist()
    return {
        "label": label, "n": 100, "clean": clean,
        "corruptions": {"fog": {"1": low, "mean": low}, "gaussian_noise": {"1": high, "mean": high}},
        "adversarial": {"n": 50, "clean": clean, "fgsm": dict(zip(eps, [pgd + 0.1, pgd])),
                        "pgd_ce": dict(zip(eps, [pgd + 0.05, pgd])), "pgd_cw": {"0.1000": pgd}},
        "jacobian": {"spectrum": spec, "radial": {"radius": [0.1, 0.5, 1.0], "value": [3.0, 2.0, 1.0]}, "low_freq_ratio": ratio},
        "heat_map": {"eps": 3.5, "n": 10, "clean_error": 1 - clean, "error": torch.rand(h, w).tolist()},
    }


def test_report_rebuilt_from_disk(tmp_path):
    root = tmp_path / "s"
    labels = ["standard", "jafr_low", "jafr_high"]
    (root).mkdir()
    study = {
        "name": "s", "dataset": "fashion_mnist", "model": "small_cnn", "epochs": 1, "max_steps": None, "train_subset": 100,
        "seed": 0, "lam": 0.1, "cutoff": 0.25, "formulation": "ratio", "eval_n": 100, "eval_full": False, "device": "cpu",
        "labels": labels, "eps_key": "0.1000",
        "adversarial": {"steps": 5, "restarts": 1, "eps_keys": ["0.0500", "0.1000"], "n": 50},
        "train_seconds": 1.0, "eval_seconds": 2.0, "total_seconds": 3.0,
    }
    (root / "study.json").write_text(json.dumps(study))
    (root / "corruptions.json").write_text(json.dumps({
        "source": "generated", "cutoff": 0.25, "threshold": 0.5,
        "character": {"fog": {"1": 0.9, "mean": 0.9}, "gaussian_noise": {"1": 0.1, "mean": 0.1}},
        "groups": {"low": ["fog"], "high": ["gaussian_noise"]},
    }))
    (root / "images.json").write_text(json.dumps({
        "spectrum": (torch.rand(8, 8) + 0.1).tolist(), "radial": {"radius": [0.1, 0.5], "value": [5.0, 1.0]}, "low_freq_ratio": 0.9,
    }))
    numbers = {"standard": (0.8, 0.7, 0.6, 0.2, 0.3), "jafr_low": (0.8, 0.5, 0.75, 0.3, 0.6), "jafr_high": (0.8, 0.71, 0.6, 0.2, 0.1)}
    for label, vals in numbers.items():
        (root / label).mkdir()
        (root / label / "eval.json").write_text(json.dumps(_fake_run(label, *vals)))
    path = build_report(str(root))
    text = open(path).read()
    assert "| jafr_low | 80.0 | 50.0 | 75.0 |" in text  # headline row: clean, low-freq, high-freq corruptions
    assert "| jafr_low vs standard | high-frequency corruptions | better | +15.0 pp | agrees |" in text
    assert "| jafr_low vs standard | low-frequency corruptions | worse | -20.0 pp | agrees |" in text
    assert "| jafr_high vs standard | low-frequency corruptions | better | +1.0 pp | within noise" in text
    for fig in FIGURES:
        data = open(root / fig, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, fig
        assert f"({fig})" in text
    summary = json.load(open(root / "summary.json"))
    assert summary["methods"]["jafr_low"]["corruption_high"] == pytest.approx(0.75)
    assert summary["groups"] == {"low": ["fog"], "high": ["gaussian_noise"]}


@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST idx files not installed")
def test_tiny_study_end_to_end(tmp_path):
    from jafr_kernels.cli import main
    from jafr_kernels.eval.study import evaluate_run, run_study

    cfg = StudyConfig(
        name="tiny", methods=("standard", "jafr:low"), max_steps=2, train_subset=256, eval_subset=24, adv_subset=8,
        heat_map_images=2, corruptions=("gaussian_noise", "contrast"), severities=(1, 5), pgd_steps=1,
        out_root=str(tmp_path), progress=False,
    )
    path = run_study(cfg)
    root = tmp_path / "tiny"
    assert os.path.exists(path)
    for label in ("standard", "jafr_low"):
        ev = json.load(open(root / label / "eval.json"))
        assert set(ev["corruptions"]) == {"gaussian_noise", "contrast"}
        assert set(ev["corruptions"]["contrast"]) == {"1", "5", "mean"}
        assert ev["adversarial"]["n"] == 8 and ev["n"] == 24
        assert os.path.exists(root / label / "config.json")
    groups = json.load(open(root / "corruptions.json"))["groups"]
    assert groups == {"low": ["contrast"], "high": ["gaussian_noise"]}
    # the report is rebuilt from disk by the command line, without training
    os.remove(root / "report.md")
    assert main(["study", "--name", "tiny", "--out-root", str(tmp_path), "--report-only"]) == 0
    assert os.path.exists(root / "report.md")
    # a saved run can be evaluated on its own
    out = evaluate_run(str(root / "standard"), StudyConfig(eval_subset=16, adv_subset=4, heat_map_images=2,
                                                          corruptions=("fog",), severities=(2,), pgd_steps=1, cw=False, progress=False))
    ev = json.load(open(out))
    assert set(ev["corruptions"]) == {"fog"} and ev["n"] == 16 and "pgd_cw" not in ev["adversarial"]
