"""The quick GPU benchmark and the device check, as far as they run without a GPU.

``python -m benchmarks --gpu --quick`` must refuse cleanly here, list its cases in a dry run, and turn rows
into the right ratios and targets; ``scripts/device_check.sh`` must parse, print the commands it would run
(and those commands must collect tests), and stop with a clear message when no GPU is visible.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import configs, report

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _bench(*args, env=ENV):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_quick_refuses_without_a_gpu():
    proc = _bench("--gpu", "--quick")
    assert proc.returncode == 2
    assert "needs a CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_quick_needs_gpu_flag():
    proc = _bench("--quick")
    assert proc.returncode == 2 and "--quick goes with --gpu" in proc.stderr


def test_quick_case_list():
    proc = _bench("--gpu", "--quick", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    cases = configs.quick_cases(configs.Suite.make(gpu=True, smoke=False))
    assert ids == [c.id for c in cases]
    shapes = {tuple(c.shape) for c in cases}
    assert shapes == set(configs.QUICK_SHAPES)
    impls = {c.impl for c in cases}
    assert {"eager", "eager_compiled", "reference", "copy"} <= impls
    assert {c.dtype for c in cases} == {"fp32", "bf16"}
    assert not any(c.impl == "eager_compiled" and c.dtype == "bf16" for c in cases)
    # the compiled baselines (seconds of compilation each) come last: a time limit drops them first
    first_compiled = next(i for i, c in enumerate(cases) if c.impl == "eager_compiled")
    assert all(c.impl == "eager_compiled" for c in cases[first_compiled:])
    for shape in configs.QUICK_SHAPES:
        for dtype in ("fp32", "bf16"):
            assert any(c.impl == "copy" and c.shape == shape and c.dtype == dtype for c in cases)


def _fake_rows():
    """pytest-benchmark JSON for every quick case: eager 1 ms, triton 0.1 ms, cuda 0.4 ms, copy 0.04 ms per call."""
    per_call = {"eager": 1e-3, "eager_compiled": 8e-4, "reference": 2e-3, "triton": 1e-4, "cuda": 4e-4, "copy": 4e-5,
                "autograd_floor": 5e-5, "triton_kernels": 6e-5, "cuda_kernels": 3e-4}
    benches = []
    for case in configs.quick_cases(configs.Suite.make(gpu=True, smoke=False)):
        info = case.as_dict() | {"kind": "quick", "calls_per_round": 20, "host_s_per_call": 5e-5,
                                 "launches_per_call": 2.0, "host_sync": "none", "device_s_per_call": 2e-5,
                                 "graph_s_per_call": per_call[case.impl.split("@")[0]] / 2, "graph_note": ""}
        if case.impl == "cuda" and case.shape == (32, 3, 224, 224):
            info["host_sync"] = "called a synchronizing CUDA operation"
        t = 20 * per_call[case.impl.split("@")[0]]
        benches.append({"name": case.id, "extra_info": info,
                        "stats": {"median": t, "min": t, "mean": t, "stddev": 0.0, "iqr": 0.0, "rounds": 7}})
    return {"benchmarks": benches}


def test_quick_report_ratios_and_targets():
    meta = report.collect_meta(configs.Suite.make(gpu=False, smoke=False)) | {"quick": True}
    results = report.build_results(_fake_rows(), meta)
    row = next(r for r in results["rows"] if r["impl"] == "triton" and tuple(r["shape"]) == (4096, 3, 32, 32)
               and r["dtype"] == "fp32")
    assert row["per_call_s"] == pytest.approx(1e-4)
    assert row["speedup_vs_eager"] == pytest.approx(10.0)
    assert row["x_copy_floor"] == pytest.approx(2.5)
    targets = {t["target"]: t for t in results["targets"]}
    assert len(targets) == 9
    met = {name: t["met"] for name, t in targets.items()}
    assert met[next(n for n in met if n.startswith("triton") and "4096x3x32x32" in n and "eager" in n)] is True
    assert met[next(n for n in met if n.startswith("cuda") and "4096x3x32x32" in n)] is False  # 2.5x < 3x
    graph = {n: t["measured"] for n, t in targets.items() if "CUDA-graph" in n}
    assert sorted(graph.values()) == [pytest.approx(2.5), pytest.approx(10.0), pytest.approx(10.0)]
    sync = next(t for n, t in targets.items() if "synchronise" in n)
    assert sync["measured"] == 2.0 and "cuda 32x3x224x224" in sync["note"]
    text = report.markdown(results)
    assert "quick GPU run" in text and "bf16" in text and "(10.0x)" in text and "not timed" not in text
    assert "device busy 20 us/call, CUDA-graph replay 0.050 ms/call" in text
    assert "an empty autograd.Function costs 0.050 ms/call here" in text
    breakdown = text.split("#### Where a call's time goes")[1]
    assert "| 4096x3x32x32 | triton_kernels | 0.060 | 50 | 20 | 0.030 | 2 |" in breakdown
    results["meta"] |= {"cases_planned": len(results["rows"]) + 3, "time_limit_s": 130.0}
    assert "3 of " in report.markdown(results) and "130 s time limit" in report.markdown(results)


def test_breakdown_calls_compute_the_penalty_gradient():
    """``cpu_kernels`` (the fused forward and backward called directly) gives the gradient of the API's mean
    penalty; ``autograd_floor`` runs autograd with no kernels and returns a gradient of the input's shape."""
    import jafr_kernels as jk
    from benchmarks.calls import build_quick_call, make_input

    case = configs.KernelCase("freq_penalty", "fwd+bwd", "cpu_kernels", (4, 3, 31, 17), 0.25, "fp32", "cpu")
    dx = build_quick_call(case, {})()
    x = make_input(case.shape, "fp32", "cpu").requires_grad_(True)
    (expected,) = torch.autograd.grad(jk.freq_penalty(x, 0.25, backend="cpu"), x)
    assert torch.allclose(dx, expected, rtol=1e-5, atol=1e-9), (dx - expected).abs().max()
    floor = configs.KernelCase("freq_penalty", "fwd+bwd", "autograd_floor", (4, 3, 8, 8), 0.25, "fp32", "cpu")
    assert build_quick_call(floor, {})().shape == (4, 3, 8, 8)


def test_time_limit_skips_the_remaining_cases(tmp_path):
    """A limit that passes at once: every case is skipped, and the run says it timed nothing (no traceback)."""
    proc = _bench("--smoke", "--only", "kernels", "--time-limit", "1e-6", "--out", str(tmp_path), "--no-readme")
    assert proc.returncode == 1 and "wrote no benchmark JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert " skipped" in proc.stdout and " passed" not in proc.stdout


def test_device_check_dry_run_commands_collect(tmp_path):
    script = REPO / "scripts" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = ENV | {"DRY_RUN": "1", "RESULTS_DIR": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [line[2:] for line in proc.stdout.splitlines() if line.startswith("$ ")]
    assert [c.split()[0] for c in commands] == ["env", "env", sys.executable, sys.executable, sys.executable, "env"]
    assert "--gpu --only training" in commands[3] and "--time-limit 110" in commands[3]
    assert commands[4].endswith("scripts/triton_launch_probe.py")
    assert "setup.py" in commands[0] and "build_ext --inplace" in commands[0] and "TORCH_CUDA_ARCH_LIST=9.0" in commands[0]
    assert "--gpu --quick" in commands[2] and "--time-limit 90" in commands[2]
    # the test steps' pytest selections collect here (the GPU tests are then skipped, not missing)
    files = [a for c in commands for a in c.split() if a.startswith("tests/")]
    assert files == ["tests/test_gpu.py", "tests/test_triton_ratio.py", "tests/test_penalty_and_grad_gpu.py",
                     "tests/test_large_planes.py", "tests/test_triton.py"]
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                             cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert collect.returncode == 0, collect.stdout[-2000:] + collect.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_check_refuses_without_a_gpu(tmp_path):
    env = ENV | {"RESULTS_DIR": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "no CUDA device is visible" in proc.stderr
