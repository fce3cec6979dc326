"""User mistakes on the command line: each one exits non-zero with a message of one or two lines, no
traceback, before any work (no training, no new run or study folder)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from jafr_kernels.cli import main
from jafr_kernels.train import TrainConfig, load_dataset, train_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step Fashion-MNIST run."""
    out = str(tmp_path_factory.mktemp("runs") / "done")
    train_model(TrainConfig(method="standard", max_steps=2, batch_size=32, train_subset=128, out_dir=out, progress=False),
                train_set=load_dataset("fashion_mnist"))
    return out


def _setup(kind, tmp_path, finished_run):
    """Files a case needs; returns a dict of paths to format into its arguments."""
    paths = {"tmp": str(tmp_path), "run": finished_run}
    if kind == "file":
        (tmp_path / "a_file").write_text("not a folder")
    elif kind == "nonempty":
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "config.json").write_text("{}")
        (tmp_path / "old" / "eval.json").write_text("{}")
    elif kind == "no_config":
        (tmp_path / "empty_run").mkdir()
        (tmp_path / "empty_run" / "notes.txt").write_text("hi")
    elif kind == "study_root":
        (tmp_path / "study" / "standard_s0").mkdir(parents=True)
        (tmp_path / "study" / "report.md").write_text("# report")
    elif kind == "no_ckpt":
        (tmp_path / "cfg_only").mkdir()
        with open(finished_run + "/config.json") as f, open(tmp_path / "cfg_only" / "config.json", "w") as g:
            g.write(f.read())
    return paths


TRAIN = ["train", "--max-steps", "2", "--batch-size", "32", "--train-subset", "128", "--no-progress"]
STUDY = ["study", "--out-root", "{tmp}/studies", "--max-steps", "2", "--train-subset", "128", "--eval-subset", "8",
         "--no-progress"]

# (case id, setup, arguments, words the message must contain)
CASES = [
    ("train-unknown-dataset", None, TRAIN + ["--dataset", "imagenet", "--out", "{tmp}/r"], ["invalid choice", "imagenet"]),
    ("study-unknown-dataset", None, STUDY + ["--dataset", "imagenet"], ["invalid choice", "imagenet"]),
    ("eval-unknown-dataset", None, ["eval", "{run}", "--dataset", "imagenet"], ["invalid choice", "imagenet"]),
    ("train-out-is-a-file", "file", TRAIN + ["--out", "{tmp}/a_file"], ["is a file"]),
    ("train-into-a-used-folder", "nonempty", TRAIN + ["--out", "{tmp}/old"], ["not empty", "--resume", "--overwrite"]),
    ("train-resume-and-overwrite", None, TRAIN + ["--out", "{tmp}/r", "--resume", "--overwrite"], ["not allowed with"]),
    ("train-cuda-without-gpu", None, TRAIN + ["--device", "cuda", "--out", "{tmp}/r"], ["no CUDA GPU", "--device cpu"]),
    ("study-cuda-without-gpu", None, STUDY + ["--device", "cuda"], ["no CUDA GPU"]),
    ("train-bad-device", None, TRAIN + ["--device", "tpu", "--out", "{tmp}/r"], ["--device must be"]),
    ("train-negative-lam", None, TRAIN + ["--lam", "-1", "--out", "{tmp}/r"], ["lam must be", ">= 0", "--target high"]),
    ("study-negative-lam", None, STUDY + ["--lam", "-1"], ["lam must be"]),
    ("train-zero-epochs", None, TRAIN + ["--epochs", "0", "--out", "{tmp}/r"], ["epochs must be"]),
    ("train-zero-batch", None, TRAIN + ["--batch-size", "0", "--out", "{tmp}/r"], ["batch_size must be"]),
    ("train-cutoff-out-of-range", None, TRAIN + ["--cutoff", "2", "--out", "{tmp}/r"], ["cutoff must lie"]),
    ("train-negative-lr", None, TRAIN + ["--lr", "-0.1", "--out", "{tmp}/r"], ["lr must be"]),
    ("train-zero-subset", None, TRAIN[:-3] + ["--train-subset", "0", "--out", "{tmp}/r"], ["train_subset must be"]),
    ("train-negative-eps", None, TRAIN + ["--method", "fgsm", "--eps", "-0.1", "--out", "{tmp}/r"], ["eps must be"]),
    ("train-zero-log-every", None, TRAIN + ["--log-every", "0", "--out", "{tmp}/r"], ["log_every must be"]),
    ("train-missing-cifar10", None, TRAIN + ["--dataset", "cifar10", "--data-dir", "{tmp}/nowhere", "--out", "{tmp}/r"],
     ["cifar10 not found", "cifar-10-batches-py"]),
    ("train-extend-finished-run", None, ["train", "--method", "standard", "--epochs", "2", "--max-steps", "4", "--batch-size", "32",
                                         "--train-subset", "128", "--out", "{run}", "--resume"], ["--init-from", "--overwrite"]),
    ("train-resume-missing-folder", None, TRAIN + ["--out", "{tmp}/typo", "--resume"],
     ["--resume: nothing to resume", "does not exist", "without --resume"]),
    ("train-resume-study-root", "study_root", TRAIN + ["--out", "{tmp}/study", "--resume"],
     ["--resume: nothing to resume", "no checkpoint", "without --resume"]),
    ("train-resume-run-without-checkpoint", "no_ckpt", TRAIN + ["--out", "{tmp}/cfg_only", "--resume"],
     ["no checkpoint", "--overwrite"]),
    ("train-init-from-missing", None, TRAIN + ["--init-from", "{tmp}/nothing", "--out", "{tmp}/r"], ["init_from", "does not exist"]),
    ("study-method-typo", None, STUDY + ["--methods", "standard", "JaFR"], ["must be one of", "'JaFR'"]),
    ("study-bad-target", None, STUDY + ["--methods", "jafr:middle"], ["'low' or 'high'"]),
    ("study-target-on-fgsm", None, STUDY + ["--methods", "fgsm:high"], ["only JaFR methods take a target"]),
    ("study-report-only-missing", None, ["study", "--out-root", "{tmp}/studies", "--name", "nope", "--report-only"],
     ["no study at", "without --report-only"]),
    ("study-zero-eval-subset", None, STUDY + ["--eval-subset", "0"], ["--eval-subset must be"]),
    ("study-eval-subset-not-a-number", None, STUDY + ["--eval-subset", "abc"], ["expected an integer"]),
    ("study-zero-pgd-steps", None, STUDY + ["--pgd-steps", "0"], ["--pgd-steps must be"]),
    ("study-missing-corruption-dir", None, STUDY + ["--corruption-dir", "{tmp}/nowhere"], ["--corruption-dir", "not a folder"]),
    ("study-unknown-corruption", None, STUDY + ["--corruptions", "rain"], ["unknown 'rain'"]),
    ("study-unknown-model", None, STUDY + ["--model", "resnet50"], ["invalid choice", "resnet50"]),
    ("eval-missing-folder", None, ["eval", "{tmp}/nowhere"], ["is not a run folder"]),
    ("eval-without-config", "no_config", ["eval", "{tmp}/empty_run"], ["no config.json"]),
    ("eval-without-checkpoint", "no_ckpt", ["eval", "{tmp}/cfg_only"], ["no checkpoint"]),
    ("eval-other-dataset", None, ["eval", "{run}", "--dataset", "cifar10"], ["trained on fashion_mnist", "omit --dataset"]),
    ("eval-zero-eval-subset", None, ["eval", "{run}", "--eval-subset", "0"], ["--eval-subset must be"]),
]


def _tree(root):
    return sorted(os.path.relpath(os.path.join(base, name), root) for base, dirs, files in os.walk(root) for name in dirs + files)


@pytest.mark.parametrize("case,setup,args,words", CASES, ids=[c[0] for c in CASES])
def test_user_mistake_gives_a_short_message(tmp_path, capsys, finished_run, monkeypatch, case, setup, args, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the GPU-less machine, even on a GPU runner
    paths = _setup(setup, tmp_path, finished_run)
    before, run_before = _tree(tmp_path), _tree(finished_run)
    with open(os.path.join(finished_run, "metrics.jsonl")) as f:
        metrics_before = f.read()
    try:
        code = main([a.format(**paths) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert _tree(tmp_path) == before  # no run, study or checkpoint folder left behind
    assert _tree(finished_run) == run_before
    with open(os.path.join(finished_run, "metrics.jsonl")) as f:
        assert f.read() == metrics_before


def test_table_size():
    assert len(CASES) >= 15


def test_overwrite_replaces_a_run_and_removes_its_stale_evaluation(tmp_path):
    fm = load_dataset("fashion_mnist")
    out = tmp_path / "run"
    kw = dict(method="standard", max_steps=2, batch_size=32, train_subset=128, out_dir=str(out), progress=False)
    train_model(TrainConfig(**kw), train_set=fm)
    (out / "eval.json").write_text(json.dumps({"clean": 0.5}))
    (out / "notes.txt").write_text("mine")
    res = train_model(TrainConfig(overwrite=True, **dict(kw, max_steps=3)), train_set=fm)
    assert res.step == 3 and not (out / "eval.json").exists() and (out / "notes.txt").exists()
    assert torch.load(str(out / "last.pt"), weights_only=False)["step"] == 3
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f if '"step"' in line][0] == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_text("")
    with pytest.raises(ValueError, match="holds files but no run"):
        train_model(TrainConfig(overwrite=True, **dict(kw, out_dir=str(other))), train_set=fm)


def test_init_from_continues_a_finished_run_in_a_new_folder(tmp_path, finished_run):
    fm = load_dataset("fashion_mnist")
    res = train_model(TrainConfig(method="standard", max_steps=2, batch_size=32, train_subset=128, progress=False,
                                  out_dir=str(tmp_path / "more"), init_from=finished_run, lr=0.0, momentum=0.0,
                                  weight_decay=0.0), train_set=fm)
    start = torch.load(os.path.join(finished_run, "last.pt"), weights_only=False)["model"]
    for k, v in res.model.state_dict().items():  # lr 0: the weights are the finished run's (BN stats aside)
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, start[k]), k


def test_jafr_eval_prints_its_headline_numbers(finished_run, tmp_path):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(finished_run, run)
    res = subprocess.run([sys.executable, "-m", "jafr_kernels", "eval", run, "--eval-subset", "16", "--adv-subset", "4",
                          "--heat-map-images", "2", "--pgd-steps", "1", "--corruptions", "fog", "gaussian_noise",
                          "--no-progress", "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"),
                         timeout=600)
    assert res.returncode == 0, res.stderr
    with open(os.path.join(run, "eval.json")) as f:
        ev = json.load(f)
    first = res.stdout.splitlines()[0]
    assert first.startswith(f"clean {100 * ev['clean']:.1f}% (16 images), corruptions ")
    assert f"PGD at eps 0.1000 {100 * ev['adversarial']['pgd_ce']['0.1000']:.1f}%" in first
    assert f"J low-freq ratio {ev['jacobian']['low_freq_ratio']:.3f}" in first
