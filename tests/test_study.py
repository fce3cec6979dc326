"""The study: device budgets, the composed training configuration, the report (mean ± CI, paired verdicts,
trade-off) rebuilt from files on disk, and tiny end-to-end studies: reuse of finished runs, failed runs, CLI."""
import dataclasses
import json
import os

import pytest
import torch

import jafr_kernels.train as train_pkg
from jafr_kernels.eval import corruptions as C
from jafr_kernels.eval import study as S
from jafr_kernels.eval.report import FIGURES, TRADEOFF_FIGURES, build_report
from jafr_kernels.eval.study import BUDGETS, StudyConfig, plan_runs, run_study, run_train_config
from jafr_kernels.train import NonFiniteLossError, TrainConfig

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST idx files not installed")


# --------------------------------------------------------------------------- configuration
def test_budget_follows_the_device(monkeypatch):
    cfg = StudyConfig(train=TrainConfig(model=None, device="cpu")).resolved()
    assert cfg.budget == BUDGETS["cpu"] and cfg.seed_list == tuple(range(cfg.budget.seeds)) and cfg.budget.seeds >= 3
    assert cfg.train.epochs == BUDGETS["cpu"].epochs and cfg.train.model == "small_cnn"
    assert cfg.budget_origin == "CPU default"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpu = StudyConfig().resolved()  # device "auto"
    assert gpu.train.device == "cuda:0" and gpu.budget == BUDGETS["cuda"]
    assert gpu.budget.eval_subset is None and gpu.budget.epochs > BUDGETS["cpu"].epochs
    given = StudyConfig(train=TrainConfig(model=None, device="cpu", seed=4), seeds=2, epochs=2, eval_subset="all").resolved()
    assert given.seed_list == (4, 5) and given.train.epochs == 2 and given.budget.eval_subset is None
    assert "given: epochs, eval_subset, seeds" in given.budget_origin
    assert StudyConfig(train=TrainConfig(device="cpu"), seeds=(3, 9)).resolved().seed_list == (3, 9)
    with pytest.raises(ValueError, match="official formulation has no cutoff"):
        StudyConfig(train=TrainConfig(device="cpu", formulation="official"), cutoffs=(0.1, 0.2)).resolved()
    with pytest.raises(ValueError, match="duplicate"):
        StudyConfig(train=TrainConfig(device="cpu"), methods=("jafr", "jafr:low")).resolved()


def test_study_composes_the_training_configuration(tmp_path):
    from jafr_kernels.cli import build_parser
    from jafr_kernels.eval.cli import _study_config

    args = build_parser().parse_args([
        "study", "--device", "cpu", "--methods", "standard", "jafr:low", "gradalign", "pgd", "--lam", "0.1", "0.3",
        "--cutoff", "0.2", "--seeds", "2", "--bf16", "--fd-h", "0.02", "--jacobian-mode", "double_backward", "--jafr-every", "2",
        "--lr-schedule", "constant", "--gradalign-lambda", "0.5", "--no-freeze-bn", "--no-augment", "--dtype", "float64",
        "--train-pgd-steps", "3", "--pgd-steps", "7", "--batch-size", "64"])
    cfg = _study_config(args).resolved()
    assert cfg.lams == (0.1, 0.3) and cfg.cutoffs == (0.2,) and cfg.seed_list == (0, 1) and cfg.budget.pgd_steps == 7
    runs = plan_runs(cfg)
    assert len(runs) == 2 * (1 + 2 + 1 + 1)
    tcs = {(r.folder): run_train_config(cfg, r, str(tmp_path)) for r in runs}
    jafr = tcs["jafr_low_lam0.3_cut0.2/seed1"]
    assert (jafr.method, jafr.target, jafr.lam, jafr.cutoff, jafr.seed) == ("jafr", "low", 0.3, 0.2, 1)
    assert (jafr.fd_h, jafr.jacobian_mode, jafr.jafr_every, jafr.bf16, jafr.dtype, jafr.batch_size) == (
        0.02, "double_backward", 2, True, "float64", 64)
    assert (jafr.lr_schedule, jafr.freeze_bn, jafr.augment) == ("constant", False, False)
    std = tcs["standard/seed0"]
    # fields a method does not use are reset, so baselines do not change with the JaFR settings
    defaults = TrainConfig()
    assert (std.lam, std.cutoff, std.jacobian_mode, std.jafr_every, std.fd_h, std.pgd_steps) == (
        0.1, 0.25, defaults.jacobian_mode, defaults.jafr_every, 0.01, 10)
    assert (std.bf16, std.lr_schedule, std.batch_size) == (True, "constant", 64)
    assert tcs["gradalign/seed0"].gradalign_lambda == 0.5 and std.gradalign_lambda == 0.2
    assert tcs["pgd/seed1"].pgd_steps == 3
    assert std.out_dir == os.path.join(str(tmp_path), "standard/seed0")


# --------------------------------------------------------------------------- the report, from files
def _fake_eval(clean, low, high, pgd, ratio, h=8, w=8):
    eps = [f"{s * 0.1:.4f}" for s in S.EPS_SCALES]
    return {
        "n": 100, "clean": clean,
        "corruptions": {"fog": {"1": low, "mean": low}, "gaussian_noise": {"1": high, "mean": high}},
        "adversarial": {"n": 50, "clean": clean, "fgsm": dict.fromkeys(eps, pgd + 0.1),
                        "pgd_ce": dict.fromkeys(eps, pgd), "pgd_cw": {"0.1000": pgd}},
        "jacobian": {"spectrum": (torch.rand(h, w) + 0.1).tolist(), "low_freq_ratio": ratio,
                     "radial": {"radius": [0.1, 0.5, 1.0], "value": [3.0, 2.0, 1.0]},
                     "ratio_by_cutoff": {"0.25": ratio}},
        "heat_map": {"eps": 3.5, "n": 10, "clean_error": 1 - clean, "error": torch.rand(h, w).tolist()},
    }


# (clean, low-freq corr., high-freq corr., PGD, J ratio) per seed 0, 1, 2
NUMBERS = {
    ("standard", None): [(0.80, 0.70, 0.60, 0.20, 0.30), (0.82, 0.72, 0.62, 0.25, 0.31), (0.78, 0.68, 0.58, 0.30, 0.29)],
    # high-freq +6, +5, +7 (agrees); low-freq -10, -11, -6 (agrees); PGD -1, +1, 0 (within noise)
    ("jafr_low", 0.1): [(0.79, 0.60, 0.66, 0.19, 0.60), (0.80, 0.61, 0.67, 0.26, 0.62), (0.77, 0.62, 0.65, 0.30, 0.61)],
    ("jafr_low", 1.0): [(0.70, 0.55, 0.60, 0.15, 0.85), (0.71, 0.56, 0.61, 0.20, 0.86), (0.69, 0.54, 0.59, 0.25, 0.84)],
    # low-freq +2, -2, +1 (within noise); PGD +10, +10, +10 (disagrees)
    ("jafr_high", 0.1): [(0.80, 0.72, 0.61, 0.30, 0.10), (0.81, 0.70, 0.60, 0.35, 0.11), (0.79, 0.69, 0.59, 0.40, 0.09)],
    ("jafr_high", 1.0): [(0.75, 0.74, 0.50, 0.35, 0.05), (0.76, 0.73, 0.51, 0.40, 0.04), (0.74, 0.75, 0.49, 0.45, 0.06)],
}


def _fake_study(root, tmp_path, lams=(0.1, 1.0), cutoffs=None):
    cfg = StudyConfig(name="s", train=TrainConfig(model=None, device="cpu"), methods=("standard", "jafr:low", "jafr:high"),
                      seeds=3, lams=lams, cutoffs=cutoffs, eval_subset=100, adv_subset=50, out_root=str(tmp_path)).resolved()
    runs = plan_runs(cfg)
    os.makedirs(root, exist_ok=True)
    for run in runs:
        os.makedirs(os.path.join(root, run.folder))
        with open(os.path.join(root, run.folder, "eval.json"), "w") as f:
            json.dump(_fake_eval(*NUMBERS[(run.label, run.lam)][run.seed]), f)
    record = S._study_record(cfg, torch.zeros(100, 1, 8, 8), runs, {r.folder: {"status": "ok"} for r in runs})
    record.update(train_seconds=1.0, eval_seconds=2.0, total_seconds=3.0)
    with open(os.path.join(root, "study.json"), "w") as f:
        json.dump(record, f)
    with open(os.path.join(root, "corruptions.json"), "w") as f:
        json.dump({"source": "generated", "cutoff": 0.25, "threshold": 0.5, "n": 100,
                   "character": {"fog": {"1": 0.9, "mean": 0.9}, "gaussian_noise": {"1": 0.1, "mean": 0.1}},
                   "groups": {"low": ["fog"], "high": ["gaussian_noise"]}, "not_generated": dict(C.NOT_GENERATED)}, f)
    return cfg


def test_report_shows_intervals_paired_verdicts_and_the_tradeoff(tmp_path):
    root = tmp_path / "s"
    _fake_study(str(root), tmp_path)
    text = open(build_report(str(root))).read()
    # headline at the primary λ (0.1): mean ± t(2) s / sqrt(3)
    assert "| standard | 3 | 80.0 ± 5.0 | 70.0 ± 5.0 | 60.0 ± 5.0 |" in text
    assert "| jafr_low | 3 | 78.7 ± 3.8 | 61.0 ± 2.5 | 66.0 ± 2.5 |" in text
    rows = {line.split(" | ")[0].strip("| ") + " / " + line.split(" | ")[1]: line for line in text.splitlines()
            if line.startswith("| jafr_") and " vs " in line}
    assert rows["jafr_low vs standard / high-frequency corruptions"].endswith("| +6.0, +5.0, +7.0 | agrees |")
    assert rows["jafr_low vs standard / low-frequency corruptions"].endswith("| agrees |")
    assert "| within noise (CI [" in rows["jafr_low vs standard / PGD (CE) at ε = 0.0250"]
    assert "| within noise (CI [" in rows["jafr_high vs standard / low-frequency corruptions"]
    assert rows["jafr_high vs standard / PGD (CE) at ε = 0.0250"].endswith("| +10.0, +10.0, +10.0 | **disagrees** |")
    assert "Of 6 checked claims: 2 agree, 1 disagree, 3 within noise." in text
    assert "ratio** formulation" in text and "λ = 0.1, 1, cutoff = 0.25" in text
    assert "design notes" not in text
    assert "not evaluated: frost" in text
    # the trade-off section: every λ with its interval, and the baseline
    assert "## Trade-off against λ" in text and "| standard (baseline) | – |" in text
    assert "| jafr_low | 1 | 0.850 ± 0.025 | 70.0 ± 2.5 |" in text
    for fig in FIGURES + (TRADEOFF_FIGURES["lam"],):
        data = open(root / fig, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, fig
        assert f"({fig})" in text
    summary = json.load(open(root / "summary.json"))
    assert summary["methods"]["jafr_low"]["corruption_high"]["mean"] == pytest.approx(0.66)
    assert summary["methods"]["jafr_low"]["corruption_high"]["per_seed"] == {"0": 0.66, "1": 0.67, "2": 0.65}
    assert len(summary["verdicts"]) == 6
    assert summary["tradeoffs"]["lam"]["jafr_high"]["values"] == [0.1, 1.0]


def test_report_with_one_seed_gives_no_interval(tmp_path):
    root = tmp_path / "s"
    _fake_study(str(root), tmp_path)
    study = json.load(open(root / "study.json"))
    study["runs"] = [r for r in study["runs"] if r["seed"] == 0]
    study["seeds"] = [0]
    json.dump(study, open(root / "study.json", "w"))
    text = open(build_report(str(root))).read()
    assert "| standard | 1 | 80.0 | 70.0 | 60.0 |" in text
    assert "With one seed there is no interval" in text
    assert "6 without an interval (one seed)" in text


# --------------------------------------------------------------------------- end to end
def _tiny(tmp_path, **kw):
    base = dict(name="tiny", train=TrainConfig(model=None, device="cpu", max_steps=2, train_subset=256),
                methods=("standard", "jafr:low"), seeds=2, eval_subset=24, adv_subset=8, heat_map_images=2,
                corruptions=("gaussian_noise", "contrast", "snow"), severities=(1, 5), pgd_steps=1, out_root=str(tmp_path),
                progress=False, workers=1)
    base.update(kw)
    return StudyConfig(**base)


@pytest.fixture
def counted(monkeypatch):
    """Record the (method, seed, lam) of every training and every evaluation the study starts."""
    calls = {"train": [], "eval": 0, "character": 0}
    real_train, real_eval, real_character = train_pkg.train_model, S.evaluate_model, S.corruption_character

    def train(cfg, *a, **k):
        calls["train"].append((cfg.method, cfg.seed, cfg.lam))
        return real_train(cfg, *a, **k)

    def evaluate(*a, **k):
        calls["eval"] += 1
        return real_eval(*a, **k)

    def character(*a, **k):
        calls["character"] += 1
        return real_character(*a, **k)

    monkeypatch.setattr(train_pkg, "train_model", train)
    monkeypatch.setattr(S, "evaluate_model", evaluate)
    monkeypatch.setattr(S, "corruption_character", character)
    return calls


@needs_fashion
def test_tiny_study_end_to_end_and_reuse(tmp_path, counted):
    from jafr_kernels.cli import main

    path = run_study(_tiny(tmp_path))
    root = tmp_path / "tiny"
    assert sorted(counted["train"]) == [("jafr", 0, 0.1), ("jafr", 1, 0.1), ("standard", 0, 0.1), ("standard", 1, 0.1)]
    text = open(path).read()
    assert " ± " in text and "| jafr_low vs standard |" in text
    for folder in ("standard/seed0", "standard/seed1", "jafr_low_lam0.1_cut0.25/seed0", "jafr_low_lam0.1_cut0.25/seed1"):
        ev = json.load(open(root / folder / "eval.json"))
        assert set(ev["corruptions"]) == {"gaussian_noise", "contrast", "snow"} and ev["n"] == 24
        assert set(ev["corruptions"]["contrast"]) == {"1", "5", "mean"} and ev["adversarial"]["n"] == 8
        assert os.path.exists(root / folder / "config.json")
    # the study's corruption character is measured on the evaluated images and draws
    corr = json.load(open(root / "corruptions.json"))
    x, _, _ = S.eval_set("fashion_mnist", None, 24, 0)
    names = ["gaussian_noise", "contrast", "snow"]
    evaluated = S.GeneratedCorruptions(x, names, 0)
    assert corr["n"] == 24 and corr["character"] == json.loads(json.dumps(C.frequency_character(
        x, names, cutoff=0.25, severities=(1, 5), corrupted=evaluated.load)))
    assert corr["groups"] == {"low": ["contrast", "snow"], "high": ["gaussian_noise"]}

    # one more seed: only that seed is trained and evaluated
    counted["train"].clear()
    counted["eval"] = 0
    run_study(_tiny(tmp_path, seeds=3))
    assert sorted(counted["train"]) == [("jafr", 2, 0.1), ("standard", 2, 0.1)] and counted["eval"] == 2
    assert json.load(open(root / "study.json"))["reused"] == 4
    # one more λ: only the JaFR runs at the new λ
    counted["train"].clear()
    run_study(_tiny(tmp_path, seeds=3, lams=(0.1, 0.3)))
    assert sorted(counted["train"]) == [("jafr", 0, 0.3), ("jafr", 1, 0.3), ("jafr", 2, 0.3)]
    assert "## Trade-off against λ" in open(root / "report.md").read()
    # nothing new: nothing trained or evaluated
    counted["train"].clear()
    counted["eval"] = 0
    run_study(_tiny(tmp_path, seeds=3, lams=(0.1, 0.3)))
    assert counted["train"] == [] and counted["eval"] == 0
    assert counted["character"] == 1  # measured once: the evaluation settings never changed
    # options that cannot change a result (logging, checkpoint interval): nothing trained or evaluated
    neutral = dataclasses.replace(_tiny(tmp_path).train, log_every=1, ckpt_every=1)
    run_study(_tiny(tmp_path, seeds=3, lams=(0.1, 0.3), train=neutral))
    assert counted["train"] == [] and counted["eval"] == 0
    # other evaluation settings: re-evaluated from the checkpoints, not retrained
    run_study(_tiny(tmp_path, seeds=1, eval_subset=16))
    assert counted["train"] == [] and counted["eval"] == 2 and counted["character"] == 2

    # the report is rebuilt from disk by the command line, without training
    os.remove(root / "report.md")
    assert main(["study", "--name", "tiny", "--out-root", str(tmp_path), "--report-only"]) == 0
    assert os.path.exists(root / "report.md")
    # a saved run can be evaluated on its own
    out = S.evaluate_run(str(root / "standard/seed0"), StudyConfig(
        train=TrainConfig(device="cpu"), eval_subset=16, adv_subset=4, heat_map_images=2, corruptions=("fog",),
        severities=(2,), pgd_steps=1, cw=False, progress=False))
    ev = json.load(open(out))
    assert set(ev["corruptions"]) == {"fog"} and ev["n"] == 16 and "pgd_cw" not in ev["adversarial"]


@needs_fashion
def test_runs_in_worker_processes_give_the_results_of_one_process(tmp_path):
    """Two one-thread worker processes train and evaluate every run as one one-thread process does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(_tiny(tmp_path, name="one"))
    finally:
        torch.set_num_threads(threads)
    run_study(_tiny(tmp_path, name="two", workers=2))
    folders = [r["folder"] for r in json.load(open(tmp_path / "one" / "study.json"))["runs"]]
    assert len(folders) == 4
    for folder in folders:
        one, two = (json.load(open(tmp_path / name / folder / "eval.json")) for name in ("one", "two"))
        for key in ("clean", "corruptions", "adversarial", "jacobian", "heat_map"):
            assert one[key] == two[key], (folder, key)
    statuses = {r["status"] for r in json.load(open(tmp_path / "two" / "study.json"))["runs"]}
    assert statuses == {"ok"} and "2 runs at a time on one thread each" in open(tmp_path / "two" / "report.md").read()
    with pytest.raises(ValueError, match="workers"):
        _tiny(tmp_path, workers=0).resolved()


@needs_fashion
def test_a_diverged_run_is_recorded_as_failed(tmp_path, monkeypatch, counted):
    real = train_pkg.train_model

    def diverging(cfg, *a, **k):
        if cfg.method == "jafr" and cfg.seed == 1:
            counted["train"].append(("diverged", cfg.seed, cfg.lam))
            raise NonFiniteLossError("non-finite loss (nan) at step 1")
        return real(cfg, *a, **k)

    monkeypatch.setattr(train_pkg, "train_model", diverging)
    path = run_study(_tiny(tmp_path))
    text = open(path).read()
    assert "## Failed runs" in text and "jafr_low_lam0.1_cut0.25/seed1" in text and "non-finite loss" in text
    status = {r["folder"]: r["status"] for r in json.load(open(tmp_path / "tiny" / "study.json"))["runs"]}
    assert status["jafr_low_lam0.1_cut0.25/seed1"] == "failed" and status["standard/seed1"] == "ok"
    counted["train"].clear()
    run_study(_tiny(tmp_path))  # the same settings diverge again: not retried
    assert counted["train"] == []


def test_a_claim_at_the_floor_is_flagged(tmp_path):
    root = tmp_path / "s"
    cfg = _fake_study(str(root), tmp_path)
    for run in plan_runs(cfg):
        if run.label in ("standard", "jafr_high"):
            path = root / run.folder / "eval.json"
            ev = json.load(open(path))
            ev["adversarial"]["pgd_ce"] = dict.fromkeys(ev["adversarial"]["pgd_ce"], 0.001 * (run.seed + 1))
            json.dump(ev, open(path, "w"))
    text = open(build_report(str(root))).read()
    row = next(line for line in text.splitlines() if line.startswith("| jafr_high vs standard | PGD"))
    assert row.endswith("every value below 1 %: the measure is at its floor |")
    row = next(line for line in text.splitlines() if line.startswith("| jafr_low vs standard | PGD"))
    assert "floor" not in row


def test_saved_configs_without_a_new_field_count_as_its_default():
    tc = TrainConfig(device="cpu").resolved()
    saved = dataclasses.asdict(tc)
    del saved["gradalign_lambda"]
    assert S._result_fields(saved) == S._result_fields(tc)
    saved["lr"] = 0.5
    assert S._result_fields(saved) != S._result_fields(tc)


def test_cutoff_tradeoff_measures_the_ratio_at_each_runs_cutoff(tmp_path):
    root = tmp_path / "s"
    cfg = _fake_study(str(root), tmp_path, lams=(0.1,), cutoffs=(0.25, 0.5))
    for run in plan_runs(cfg):  # J's ratio at 0.5: the baseline 0.5, JaFR runs at cutoff 0.5 higher
        path = root / run.folder / "eval.json"
        ev = json.load(open(path))
        ev["jacobian"]["ratio_by_cutoff"]["0.5"] = 0.5 if run.cutoff is None else (0.9 if run.cutoff == 0.5 else 0.7)
        json.dump(ev, open(path, "w"))
    text = open(build_report(str(root))).read()
    assert "## Trade-off against cutoff" in text and "## Trade-off against λ" not in text
    assert "| jafr_low | 0.5 | 0.900 ± 0.000 |" in text
    assert "| standard (baseline) | 0.5 | 0.500 ± 0.000 |" in text and "| standard (baseline) | 0.25 | 0.300 ± 0.025 |" in text
    assert os.path.exists(root / TRADEOFF_FIGURES["cutoff"])


def test_frequency_character_is_measured_on_the_evaluated_draws():
    """The character comes from the corrupted images the models are scored on, not from fresh draws: a source
    whose draws differ from a fresh ``generate`` (another seed) gives the character of its own draws."""
    names = ["impulse_noise", "glass_blur", "elastic_transform"]
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    cfg = StudyConfig(train=TrainConfig(model=None, device="cpu"), seeds=1, corruptions=tuple(names),
                      severities=(1, 4)).resolved()
    source = S.GeneratedCorruptions(x, names, seed=cfg.eval_seed + 5)
    character = S.corruption_character(cfg, x, source)
    for name in names:
        for sev in (1, 4):
            evaluated = C.difference_low_freq_ratio(x, source.load(name, sev), cfg.primary_cutoff)
            fresh = C.difference_low_freq_ratio(x, C.generate(x, name, sev, cfg.eval_seed), cfg.primary_cutoff)
            assert character[name][str(sev)] == evaluated and fresh != evaluated


def test_result_neutral_fields_are_one_list_for_resume_and_reuse():
    from jafr_kernels.train import loop

    tc = dataclasses.asdict(TrainConfig(device="cpu").resolved())
    changed = dict(tc, progress=not tc["progress"], resume=True, overwrite=True, out_dir="elsewhere", data_dir="/d",
                   device="cuda", ckpt_every=7, log_every=3)
    assert set(changed) - {k for k in tc if changed[k] == tc[k]} == loop.RESULT_NEUTRAL_FIELDS
    assert S._result_fields(changed) == S._result_fields(tc)
    loop._check_same_run(tc, changed, "last.pt")  # resuming accepts the same changes
    with pytest.raises(ValueError, match="settings differ"):
        loop._check_same_run(tc, dict(changed, lr=0.5), "last.pt")
    assert S._result_fields(dict(tc, lr=0.5)) != S._result_fields(tc)


@needs_fashion
def test_rerun_with_only_log_every_changed_trains_nothing(tmp_path, counted):
    from jafr_kernels.cli import main

    args = ["study", "--name", "t", "--out-root", str(tmp_path), "--device", "cpu", "--methods", "standard", "jafr:low",
            "--seeds", "1", "--max-steps", "2", "--train-subset", "256", "--eval-subset", "16", "--adv-subset", "4",
            "--heat-map-images", "2", "--corruptions", "contrast", "--pgd-steps", "1", "--no-progress",
            "--workers", "1"]  # in this process, where the calls are counted
    assert main(args) == 0 and len(counted["train"]) == 2
    counted["train"].clear()
    counted["eval"] = 0
    assert main(args + ["--log-every", "1"]) == 0
    assert counted["train"] == [] and counted["eval"] == 0
