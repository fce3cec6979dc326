"""The training loop on Fashion-MNIST: every method learns, attacks stay in the eps-ball, JaFR moves the
Jacobian's spectrum the requested way, non-finite losses stop training, resume is bit-exact, the CLI works."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from jafr_kernels import attacks
from jafr_kernels.train import (
    METHODS,
    NonFiniteLossError,
    TrainConfig,
    build_model,
    load_checkpoint,
    load_dataset,
    load_trained_model,
    train_model,
)
from jafr_kernels.eval.frequency import jacobian_low_freq_ratio
from jafr_kernels.train.loop import TriangularLR

from conftest import NaNAfter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(result):
    return [r for r in result.history if r["type"] == "step"]


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion_mnist", train=True)


@pytest.fixture(scope="module")
def heldout():
    test = load_dataset("fashion_mnist", train=False)
    return test.batch(torch.arange(500))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_the_training_loss_in_30_steps(tmp_path, fmnist, method):
    cfg = TrainConfig(method=method, max_steps=30, batch_size=64, out_dir=str(tmp_path), progress=False,
                      ckpt_every=1000, pgd_steps=10)
    steps = _steps(train_model(cfg, train_set=fmnist))
    assert len(steps) == 30
    first = sum(r["loss"] for r in steps[:5]) / 5
    last = sum(r["loss"] for r in steps[-5:]) / 5
    assert last < first - 0.2, f"{method}: loss {first:.3f} -> {last:.3f}"
    if method.endswith("jafr"):  # the term on every jafr_every-th step (lazy by default)
        every = cfg.resolved().jafr_every
        assert all((r["penalty"] is not None and 0 <= r["lf_ratio"] <= 1) == ((r["step"] - 1) % every == 0) for r in steps)


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_training_attacks_stay_in_the_eps_ball_and_the_image_box(fmnist, kind):
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 10).train()
    x, y = fmnist.batch(torch.arange(64))
    eps = 0.1
    if kind == "fgsm":
        x_adv = attacks.fgsm(model, x, y, eps, 1.25 * eps)
    else:
        x_adv = attacks.pgd(model, x, y, eps, eps / 4, 10, random_start=False)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > eps / 2  # it did move


@pytest.mark.slow
def test_jafr_moves_the_jacobian_spectrum_the_requested_way(tmp_path, fmnist, heldout):
    """Same seed, steps and data: low target raises J's low-frequency ratio on held-out data, high lowers it;
    the finite-difference mode raises it too."""
    ratios = {}
    exact = dict(jacobian_mode="double_backward", jafr_every=1)
    for name, kw in {"standard": dict(method="standard"), "low": dict(method="jafr", target="low", **exact),
                     "high": dict(method="jafr", target="high", **exact),
                     "low_fd": dict(method="jafr", target="low", jacobian_mode="finite_difference", jafr_every=1)}.items():
        cfg = TrainConfig(max_steps=60, batch_size=64, lam=0.3, out_dir=str(tmp_path / name), progress=False,
                          ckpt_every=1000, **kw)
        ratios[name] = jacobian_low_freq_ratio(train_model(cfg, train_set=fmnist).model, *heldout, cutoff=0.25)
    assert ratios["low"] > ratios["standard"] + 0.05, ratios
    assert ratios["high"] < ratios["standard"] - 0.05, ratios
    assert ratios["low_fd"] > ratios["standard"] + 0.05, ratios


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, fmnist):
    torch.manual_seed(0)
    model = NaNAfter(build_model("small_cnn", 1, 10), n=4)  # method standard: one forward per step
    cfg = TrainConfig(method="standard", max_steps=10, batch_size=32, train_subset=512, out_dir=str(tmp_path),
                      progress=False, ckpt_every=1)
    with pytest.raises(NonFiniteLossError, match=r"diverged at step 4 \(epoch 0\): loss nan, CE nan; the last good "
                                                 r"checkpoint \(step 3\) is kept in .*; try a lower --lr \(now 0.05\)$"):
        train_model(cfg, model=model, train_set=fmnist)
    state = load_checkpoint(str(tmp_path / "last.pt"))
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_divergence_between_logging_steps_is_caught_before_the_next_checkpoint(tmp_path, fmnist):
    """Metrics are read every log_every steps; a NaN at step 4 is found at the step-6 checkpoint, before it is
    written, and named as step 4."""
    torch.manual_seed(0)
    model = NaNAfter(build_model("small_cnn", 1, 10), n=4)
    cfg = TrainConfig(method="standard", max_steps=12, batch_size=32, train_subset=512, out_dir=str(tmp_path),
                      progress=False, ckpt_every=3, log_every=100)
    with pytest.raises(NonFiniteLossError, match=r"step 4 .*checkpoint \(step 3\)"):
        train_model(cfg, model=model, train_set=fmnist)
    assert load_checkpoint(str(tmp_path / "last.pt"))["step"] == 3
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]  # the bad steps are not logged


def test_jafr_divergence_names_the_penalty_and_lam(tmp_path, fmnist):
    torch.manual_seed(0)
    model = NaNAfter(build_model("small_cnn", 1, 10), n=3)
    cfg = TrainConfig(method="jafr", max_steps=6, batch_size=32, train_subset=512, out_dir=str(tmp_path), progress=False,
                      ckpt_every=1, jacobian_mode="double_backward", jafr_every=1)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*penalty nan.*--lam \(now 0.1\)|step 3 .*Jacobian"):
        train_model(cfg, model=model, train_set=fmnist)
    assert load_checkpoint(str(tmp_path / "last.pt"))["step"] == 2


def test_cli_divergence_exits_1_with_one_line_and_keeps_good_checkpoints(tmp_path):
    """A huge learning rate: exit code 1, one line on stderr, no traceback, last.pt and prev.pt load and are finite."""
    out = str(tmp_path / "run")
    res = _cli("--method", "jafr", "--lr", "1e4", "--lr-schedule", "constant", "--max-steps", "20", "--batch-size", "32",
               "--train-subset", "1024", "--ckpt-every", "1", "--out", out, "--no-progress")
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("jafr train: error: training diverged at step") and "lower --lr (now 10000)" in lines[0]
    assert res.stdout == ""
    steps = []
    for name in ("last.pt", "prev.pt"):
        state = torch.load(os.path.join(out, name), weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
        steps.append(state["step"])
    assert steps[0] == steps[1] + 1 and f"checkpoint (step {steps[0]})" in lines[0]


class _CrashAfter(Exception):
    pass


def _crash_hook(n):
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1
        if calls["n"] > n:
            raise _CrashAfter()

    return hook


@pytest.mark.parametrize("method", ["jafr", "pgd+jafr"])
def test_resume_in_process_is_bit_exact(tmp_path, fmnist, method):
    """A run interrupted after its step-5 checkpoint and resumed ends with the same weights, optimizer state
    and per-step losses as an uninterrupted run (2 epochs, so the resume also crosses an epoch boundary)."""
    kw = dict(method=method, epochs=2, batch_size=32, train_subset=128, progress=False, ckpt_every=1, pgd_steps=2,
              jacobian_mode="double_backward", jafr_every=1)
    full = train_model(TrainConfig(out_dir=str(tmp_path / "full"), **kw), train_set=fmnist)
    cfg = TrainConfig(out_dir=str(tmp_path / "cut"), **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model("small_cnn", 1, 10)
    forwards_per_step = {"jafr": 1, "pgd+jafr": 2 + 1 + 1}[method]  # pgd steps (one restart: no selection forward), clean, main
    model.register_forward_hook(_crash_hook(5 * forwards_per_step))
    with pytest.raises(_CrashAfter):
        train_model(cfg, model=model, train_set=fmnist)
    assert load_checkpoint(str(tmp_path / "cut" / "last.pt"))["step"] == 5
    resumed = train_model(TrainConfig(out_dir=str(tmp_path / "cut"), resume=True, **kw), train_set=fmnist)
    assert resumed.step == full.step == 8
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    drop = lambda recs: [{k: v for k, v in r.items() if k != "time_s"} for r in recs]  # noqa: E731
    assert drop(resumed.history) == drop(full.history)
    a = load_checkpoint(str(tmp_path / "full" / "last.pt"))["optimizer"]["state"]
    b = load_checkpoint(str(tmp_path / "cut" / "last.pt"))["optimizer"]["state"]
    assert all(torch.equal(a[i]["momentum_buffer"], b[i]["momentum_buffer"]) for i in a)


def test_run_directory_contents(tmp_path, fmnist):
    res = train_model(TrainConfig(method="jafr", max_steps=3, batch_size=32, train_subset=256, out_dir=str(tmp_path),
                                  progress=False), train_set=fmnist)
    with open(tmp_path / "config.json") as f:
        conf = json.load(f)
    assert conf["method"] == "jafr" and conf["lam"] == 0.1 and conf["eps"] == 0.1 and conf["total_steps"] == 3
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records == res.history
    assert [r["step"] for r in records if r["type"] == "step"] == [1, 2, 3]
    assert records[-1]["type"] == "epoch"
    assert not res.model.training
    loaded = load_trained_model(str(tmp_path))
    for a, b in zip(loaded.state_dict().values(), res.model.state_dict().values()):
        assert torch.equal(a, b)


def test_triangular_lr_peaks_at_two_fifths():
    f = TriangularLR(10)
    values = [f(k) for k in range(10)]
    assert values[3] == 1.0 and values[-1] == 0.0 and values[0] == 0.25
    assert all(a < b for a, b in zip(values[:4], values[1:4])) and all(a > b for a, b in zip(values[3:], values[4:]))


def test_triangular_lr_warmup_has_a_minimum_length_for_short_runs():
    assert TriangularLR(1000, warmup_min=100).warmup == 400  # long runs: 2/5 of training, as in the paper
    assert TriangularLR(78, warmup_min=100).warmup == 39  # short runs: half the run (not 31 steps)
    assert TriangularLR(300, warmup_min=100).warmup == 120
    assert TriangularLR(200, warmup_min=100).warmup == 100
    f = TriangularLR(78, warmup_min=100)
    values = [f(k) for k in range(78)]
    assert values[38] == 1.0 and values[0] == 1 / 39 and values[-1] == 0.0


def test_config_rejects_bad_values():
    for kw, name in [(dict(method="fgsm2"), "method"), (dict(jacobian_mode="x"), "jacobian_mode"),
                     (dict(target="mid"), "target"), (dict(dataset="mnist"), "dataset")]:
        with pytest.raises(ValueError, match=name):
            TrainConfig(**kw).resolved()


def _cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "jafr_kernels.train", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **env), timeout=300)


@pytest.mark.slow
def test_cli_end_to_end_and_resume(tmp_path):
    out = str(tmp_path / "run")
    args = ["--method", "jafr", "--epochs", "2", "--batch-size", "32", "--train-subset", "96", "--out", out, "--ckpt-every", "1"]
    first = _cli(*args, "--max-steps", "6")
    assert first.returncode == 0, first.stderr
    assert "train jafr" in first.stderr and "done: 6 steps" in first.stdout  # tqdm progress on stderr
    assert {"config.json", "metrics.jsonl", "last.pt", "prev.pt"} <= set(os.listdir(out))
    again = _cli(*args, "--max-steps", "6", "--resume")
    assert again.returncode == 0 and "at step 6/6" in again.stdout
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert sum(json.loads(line)["type"] == "step" for line in f) == 6


def test_cli_missing_cifar10_gives_a_clear_error(tmp_path, capsys):
    from jafr_kernels.train.__main__ import main

    assert main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"), "--max-steps", "1", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "cifar10 not found at" in err and "cifar-10-batches-py" in err and "nowhere" in err


def test_resume_refuses_a_run_with_different_settings(tmp_path, fmnist):
    kw = dict(method="standard", max_steps=2, batch_size=32, train_subset=128, progress=False, out_dir=str(tmp_path))
    train_model(TrainConfig(**kw), train_set=fmnist)
    with pytest.raises(ValueError, match=r"cannot resume .*lam: 0.1 in the checkpoint, 0.5 now"):
        train_model(TrainConfig(resume=True, **dict(kw, lam=0.5)), train_set=fmnist)


def test_preact_resnet18_shapes_heads_and_a_jafr_step():
    from jafr_kernels.train import PreActResNet18, jafr_objective

    torch.manual_seed(0)
    authors = build_model("preact_resnet18_authors", in_channels=3, num_classes=10)
    model = build_model("preact_resnet18", in_channels=3, num_classes=10)
    assert isinstance(model, PreActResNet18) and model.head == "preact" and authors.head == "authors"
    assert sum(p.numel() for p in authors.parameters()) == 11_171_146  # the GradAlign/JaFR PreAct ResNet-18
    assert sum(p.numel() for p in model.parameters()) == 11_171_146 + 2 * 512  # + BN before pooling
    assert authors.bn is None and isinstance(model.bn, nn.BatchNorm2d)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert build_model("preact_resnet18", 3, 200)(torch.rand(1, 3, 64, 64)).shape == (1, 200)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    out = jafr_objective(model, x, y, 0.1)
    out.loss.backward()
    assert out.jac.shape == x.shape and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_preact_resnet18_starts_near_log_classes_on_real_batches(fmnist):
    """CE at initialisation within 0.3 of log(10) on Fashion-MNIST batches (train-mode BN), for three seeds; the
    authors' head starts far above it (the reason it needs a long warmup)."""
    import math

    import torch.nn.functional as F

    for seed in range(3):
        torch.manual_seed(seed)
        x, y = fmnist.batch(torch.randperm(len(fmnist), generator=torch.Generator().manual_seed(seed))[:128])
        with torch.no_grad():
            ce = float(F.cross_entropy(build_model("preact_resnet18", 1, 10)(x), y))
            torch.manual_seed(seed)
            ce_authors = float(F.cross_entropy(build_model("preact_resnet18_authors", 1, 10)(x), y))
        assert abs(ce - math.log(10)) < 0.3, (seed, ce)
        assert ce_authors > math.log(10) + 0.5, (seed, ce_authors)


def test_double_backward_on_a_first_order_model_names_the_fix(tmp_path, fmnist):
    from jafr_kernels.train.loop import DoubleBackwardError

    kw = dict(method="jafr", model="small_cnn_first_order", max_steps=2, batch_size=32, train_subset=128, progress=False)
    with pytest.raises(DoubleBackwardError, match="finite_difference"):
        train_model(TrainConfig(out_dir=str(tmp_path / "db"), jacobian_mode="double_backward", **kw), train_set=fmnist)
    res = train_model(TrainConfig(out_dir=str(tmp_path / "fd"), jacobian_mode="finite_difference", **kw), train_set=fmnist)
    assert res.step == 2


def test_lazy_and_sub_batch_runs_are_recorded(tmp_path, fmnist):
    """--jafr-every / --jafr-fraction reach the objective and the run's config; steps between regularised
    ones log no penalty."""
    res = train_model(TrainConfig(method="jafr", jacobian_mode="finite_difference", jafr_every=2, jafr_fraction=0.5,
                                  max_steps=4, batch_size=16, train_subset=128, out_dir=str(tmp_path), progress=False,
                                  log_every=1), train_set=fmnist)
    with open(tmp_path / "config.json") as f:
        conf = json.load(f)
    assert conf["jafr_every"] == 2 and conf["jafr_fraction"] == 0.5
    steps = [r for r in res.history if r["type"] == "step"]
    assert [r["penalty"] is not None for r in steps] == [True, False, True, False]


def test_compiled_channels_last_finite_difference_run(tmp_path, fmnist):
    """--compile and --channels-last train with finite differences; a double backward with --compile is refused."""
    res = train_model(TrainConfig(method="jafr", jacobian_mode="finite_difference", jafr_every=1, compile=True, channels_last=True,
                                  max_steps=2, batch_size=16, train_subset=64, out_dir=str(tmp_path / "c"),
                                  progress=False, augment=False), train_set=fmnist)
    steps = [r for r in res.history if r["type"] == "step"]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and r["penalty"] is not None for r in steps)
    with pytest.raises(ValueError, match="compile.*finite_difference"):
        TrainConfig(method="jafr", jacobian_mode="double_backward", compile=True).resolved()
    with pytest.raises(ValueError, match="jafr_fraction"):
        TrainConfig(jafr_fraction=0).resolved()
    with pytest.raises(ValueError, match="jafr_every"):
        TrainConfig(jafr_every=0).resolved()
