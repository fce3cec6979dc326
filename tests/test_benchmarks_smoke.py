"""CI smoke run of the benchmark suite, so it cannot rot: ``python -m benchmarks --smoke`` in a subprocess.

Checks that every part (kernels, profile, training, memory) produced rows, that the result file is tagged
with the run's metadata and that the targets were evaluated. No timing is asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("JAFR_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--threads", "1", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"benchmark smoke run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    files = sorted(out.glob("smoke-cpu-*.json"))
    assert len(files) == 1, f"expected one result file in {out}, found {[f.name for f in out.iterdir()]}"
    assert files[0].with_suffix(".md").exists()
    return json.loads(files[0].read_text()), proc.stdout


def test_result_file_is_tagged(smoke_results):
    results, _ = smoke_results
    meta = results["meta"]
    for key in ("device", "device_name", "torch", "triton", "threads", "git_revision", "created", "backends"):
        assert key in meta, key
    assert meta["smoke"] is True
    assert meta["device"] == "cpu"
    assert meta["threads"] == 1


def test_every_part_produced_rows(smoke_results):
    results, _ = smoke_results
    kinds = {r["kind"] for r in results["rows"]}
    assert kinds == {"kernel", "profile", "train", "train_profile", "memory"}
    for row in results["rows"]:
        assert row["median_s"] > 0, row["name"]


def test_training_steps_side_by_side(smoke_results):
    """Every step of the comparison ran for both models, each paired with a standard step; the lazy step is
    timed over its k steps and reported per step; the profiled step splits off the penalty."""
    from benchmarks import configs

    results, stdout = smoke_results
    train = [r for r in results["rows"] if r["kind"] == "train"]
    for model in ("small_cnn", "preact_resnet18"):
        assert {r["method"] for r in train if r["model"] == model} == set(configs.TRAIN_METHODS)
    steps = [r for r in train if r["method"] != "penalty"]
    assert steps and all(r["x_baseline"] > 0 for r in steps)  # every step paired, standard with its twin
    lazy = next(r for r in train if r["method"] == "jafr_fd_lazy")
    assert lazy["steps_per_call"] == configs.LAZY_EVERY
    profiled = [r for r in results["rows"] if r["kind"] == "train_profile"]
    assert {r["model"] for r in profiled} == {"small_cnn", "preact_resnet18"}
    for r in profiled:
        assert 0 < r["profile"]["penalty_host_ms"] < r["profile"]["host_ms"]
    assert "One finite-difference JaFR step, profiled" in stdout


def test_per_step_times_of_multi_step_calls():
    from benchmarks import report

    stats = {k: 0.4 for k in report.TIME_STATS} | {"rounds": 3}
    raw = {"benchmarks": [{"name": "lazy", "extra_info": {"kind": "train", "steps_per_call": 4}, "stats": stats}]}
    (row,) = report.rows_from_pytest(raw)
    assert row["median_s"] == pytest.approx(0.1)


def test_kernel_rows_have_baselines_and_ratios(smoke_results):
    results, _ = smoke_results
    kernels = [r for r in results["rows"] if r["kind"] == "kernel"]
    ops = {r["op"] for r in kernels}
    assert {"freq_penalty", "freq_penalty_official", "low_freq_ratio", "spectral_energy", "copy"} <= ops
    impls = {r["impl"] for r in kernels}
    assert {"reference", "authors", "copy"} <= impls
    for r in kernels:
        if r["impl"] == "reference":
            assert r["speedup_vs_eager"] == pytest.approx(1.0)
        if r["impl"] != "copy":
            assert r["gb_per_s"] > 0 and r["x_copy_floor"] > 0


def test_targets_evaluated_and_printed(smoke_results):
    results, stdout = smoke_results
    assert len(results["targets"]) >= 8
    for t in results["targets"]:
        assert t["met"] in (True, False, None)
    assert "#### Targets" in stdout
    memory = [r for r in results["rows"] if r["kind"] == "memory"]
    assert all(r["peak_extra_bytes"] >= r["jac_bytes"] for r in memory)


def test_readme_section_is_regenerated(smoke_results, tmp_path):
    """The README generator replaces only the marked section, with the targets' met / not-met lines."""
    from benchmarks import report

    results, _ = smoke_results
    full = json.loads(json.dumps(results))
    full["meta"]["smoke"] = False  # the generator ignores smoke runs
    report.write_results(full, tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nkept text\n\n{report.BEGIN}\nold table\n{report.END}\n\ntrailing text\n")
    assert report.update_readme(tmp_path, readme)
    text = readme.read_text()
    assert "old table" not in text
    assert text.startswith("# Title\n\nkept text\n") and text.endswith("trailing text\n")
    section = text.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    assert "### Latest CPU run" in section and "#### Targets" in section
    assert "No GPU run yet" in section
    statuses = ("**met**", "**not met**", "not measured")
    target_lines = [line for line in section.splitlines() if any(s in line for s in statuses)]
    assert len(target_lines) == len(results["targets"])


def test_gpu_targets_from_synthetic_rows():
    """The GPU targets (not runnable here) evaluate from rows shaped like a --gpu run's."""
    from benchmarks import configs, report

    def kernel(impl, shape, median_s, op="freq_penalty"):
        case = configs.KernelCase(op, "fwd+bwd", impl, shape, None if op == "copy" else 0.25, "fp32", "cuda")
        return {"kind": "kernel", "name": case.id, "median_s": median_s, **case.as_dict()}

    small, big = configs.TARGET_SHAPE, configs.GPU_BANDWIDTH_SHAPE
    rows = [kernel("reference", small, 2e-3), kernel("triton", small, 1e-4), kernel("copy", small, 2e-5, "copy"),
            kernel("reference", big, 3e-2), kernel("triton", big, 4e-4), kernel("copy", big, 3e-4, "copy")]
    report.derive(rows)
    meta = {"device": "cuda", "smoke": False, "backends": {}}
    targets = {t["target"]: t for t in report.evaluate_targets(rows, meta)}
    speed = next(t for name, t in targets.items() if name.startswith("Triton") and "256,3,32,32" in name)
    share = next(t for name, t in targets.items() if name.startswith("Triton") and "4096" in name)
    assert speed["measured"] == pytest.approx(20.0) and speed["met"] is True
    assert share["measured"] == pytest.approx(75.0) and share["met"] is True


def test_gpu_step_goals_from_synthetic_rows():
    """The GPU step goals read the bf16 + channels_last ResNet-18 steps, as ratios to their standard step."""
    from benchmarks import configs, report

    def step(method, median_s, **variant):
        case = configs.TrainCase("preact_resnet18", method, 128, 32, 3, device="cuda", **variant)
        return {"kind": "train", "name": case.id, "median_s": median_s, **case.as_dict()}

    bf16 = {"bf16": True, "channels_last": True}
    rows = [step("standard", 0.010, **bf16), step("jafr_fd", 0.021, **bf16), step("jafr_fd_lazy", 0.014, **bf16),
            step("standard", 0.001), step("jafr_fd", 0.1)]  # fp32 rows must not leak into the bf16 goals
    targets = [t for t in report.evaluate_targets(rows, {"device": "cuda", "smoke": False, "backends": {}})
               if "bf16+channels_last (GPU)" in t["target"]]
    assert [(round(t["measured"], 2), t["met"]) for t in targets] == [(2.1, True), (1.4, False)]
