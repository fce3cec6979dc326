"""``jafr study`` on published-layout files (CIFAR-10 pickle batches + CIFAR-10-C .npy) runs to a report; a
method that diverges is reported as failed while the others are trained, evaluated and reported."""
import json
import os
import subprocess
import sys

import torch

import published_layouts as layouts
from conftest import NaNAfter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cifar10_study_on_published_layout_files(tmp_path):
    data = layouts.write_cifar(tmp_path / "data", "cifar10", n_train=512, n_test=100)
    corr = layouts.write_cifar_c(tmp_path / "CIFAR-10-C", n_test=100, names=("gaussian_noise", "fog", "contrast"))
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "jafr_kernels", "study", "--dataset", "cifar10", "--data-dir", data, "--corruption-dir", corr,
           "--max-steps", "3", "--eval-subset", "64", "--model", "small_cnn", "--methods", "standard", "jafr:low",
           "--adv-subset", "8", "--heat-map-images", "2", "--pgd-steps", "1", "--no-cw", "--no-progress",
           "--seeds", "1", "--out-root", str(out), "--name", "c10"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    root = out / "c10"
    assert res.stdout.strip().endswith(f"report: {root / 'report.md'}")
    report = (root / "report.md").read_text()
    assert "Dataset **cifar10**" in report and "published files read from" in report
    for label in ("standard", "jafr_low"):
        (run,) = root.glob(f"{label}*/seed0")  # <label>[_lam<λ>_cut<cutoff>]/seed<k>
        ev = json.loads((run / "eval.json").read_text())
        assert ev["n"] == 64 and set(ev["corruptions"]) == {"gaussian_noise", "fog", "contrast"}
        assert f"| {label} |" in report
        conf = json.loads((run / "config.json").read_text())
        assert conf["dataset"] == "cifar10" and conf["total_steps"] == 3 and conf["device_used"] == "cpu"
        assert torch.load(str(run / "last.pt"), weights_only=False)["step"] == 3


def test_a_diverged_method_is_reported_failed_and_the_others_go_on(tmp_path, monkeypatch):
    from jafr_kernels.eval.study import StudyConfig, run_study
    from jafr_kernels.train import TrainConfig, loop

    build = loop.build_model
    built = []

    def build_model(name, *a, **k):  # the second method's model (jafr:low) outputs NaN from its 2nd forward on
        built.append(name)
        model = build(name, *a, **k)
        return NaNAfter(model, 2) if len(built) == 2 else model

    monkeypatch.setattr(loop, "build_model", build_model)
    cfg = StudyConfig(name="s", train=TrainConfig(model=None, device="cpu", max_steps=3, train_subset=512),
                      methods=("standard", "jafr:low", "fgsm"), seeds=1, eval_subset=24, adv_subset=8, heat_map_images=2,
                      corruptions=("gaussian_noise", "contrast"), severities=(1, 5), pgd_steps=1, out_root=str(tmp_path),
                      progress=False, workers=1)  # one process: the models built are counted in it
    path = run_study(cfg)
    root = tmp_path / "s"
    study = json.loads((root / "study.json").read_text())
    failed = [r for r in study["runs"] if r["status"] == "failed"]
    # (its finite-difference pass is that 2nd forward: the first step's loss is already NaN)
    assert [r["label"] for r in failed] == ["jafr_low"] and "diverged at step 1" in failed[0]["error"]
    assert not (root / failed[0]["folder"] / "eval.json").exists()
    assert (root / "standard" / "seed0" / "eval.json").exists() and (root / "fgsm" / "seed0" / "eval.json").exists()
    report = open(path).read()
    assert "## Failed runs" in report and f"`{failed[0]['folder']}`: training diverged at step 1" in report
    assert "| standard |" in report and "| fgsm |" in report


def test_tinyimagenet_study_on_published_layout_files(tmp_path):
    """TinyImageNet (train folders, val/images + val_annotations.txt) with Tiny-ImageNet-C folders: the study
    evaluates the corrupted copy of each validation image against that image's label."""
    from jafr_kernels.eval.study import StudyConfig, run_study
    from jafr_kernels.train import TrainConfig

    data = layouts.write_tinyimagenet(tmp_path / "data", train_per_class=4, n_val=12)
    corr = layouts.write_tinyimagenet_c(tmp_path / "Tiny-ImageNet-C", names=("gaussian_noise", "fog"), n_val=12)
    train = TrainConfig(dataset="tinyimagenet", data_dir=data, model="small_cnn", device="cpu", max_steps=2, batch_size=4)
    cfg = StudyConfig(name="tin", train=train, corruption_dir=corr, methods=("standard",), seeds=1, eval_subset="all",
                      adv_subset=4, heat_map_images=1, pgd_steps=1, cw=False, out_root=str(tmp_path / "runs"), progress=False)
    path = run_study(cfg)
    ev = json.loads((tmp_path / "runs" / "tin" / "standard" / "seed0" / "eval.json").read_text())
    assert ev["n"] == 12 and set(ev["corruptions"]) == {"gaussian_noise", "fog"}
    assert set(ev["corruptions"]["fog"]) == {"1", "2", "3", "4", "5", "mean"}
    assert "Dataset **tinyimagenet**" in open(path).read()
