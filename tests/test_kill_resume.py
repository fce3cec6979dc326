"""Crash safety end to end: a training process is SIGKILLed (mid-run, and inside a checkpoint write) and
resumed with --resume; the final weights equal (torch.equal) those of an uninterrupted run."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from jafr_kernels.train import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--method", "jafr", "--epochs", "2", "--batch-size", "32", "--train-subset", "192", "--ckpt-every", "1",
        "--seed", "1", "--no-progress"]
TOTAL = 12  # 2 epochs x 6 steps


def _cmd(out, *extra):
    return [sys.executable, "-m", "jafr_kernels.train", *ARGS, "--out", out, *extra]


def _env(**kw):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **kw)


def _steps_logged(out):
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return sum(1 for line in f if '"type": "step"' in line)
    except OSError:
        return 0


def _records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in f]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "run")
    res = subprocess.run(_cmd(out), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return out


def _kill_when(out, ready, sleep_s, timeout=120):
    proc = subprocess.Popen(_cmd(out), env=_env(JAFR_TEST_CKPT_SLEEP=str(sleep_s)), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "timed out waiting for the kill point"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _resume_and_compare(out, reference):
    res = subprocess.run(_cmd(out, "--resume"), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stdout
    final, expected = load_checkpoint(os.path.join(out, "last.pt")), load_checkpoint(os.path.join(reference, "last.pt"))
    assert final["step"] == expected["step"] == TOTAL
    for k, v in expected["model"].items():
        assert torch.equal(final["model"][k], v), k
    for i, s in expected["optimizer"]["state"].items():
        assert torch.equal(final["optimizer"]["state"][i]["momentum_buffer"], s["momentum_buffer"])
    assert _records(out) == _records(reference)  # same per-step losses, no duplicated or missing steps


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_exact(tmp_path, reference_run):
    out = str(tmp_path / "run")
    _kill_when(out, lambda: _steps_logged(out) >= 4, sleep_s=0.05)
    done = load_checkpoint(os.path.join(out, "last.pt"))["step"]
    assert 3 <= done < TOTAL
    _resume_and_compare(out, reference_run)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_a_good_checkpoint(tmp_path, reference_run):
    out = str(tmp_path / "run")
    partial = lambda: glob.glob(os.path.join(out, ".last.pt.tmp.*"))  # noqa: E731
    _kill_when(out, lambda: _steps_logged(out) >= 3 and partial() and os.path.getsize(partial()[0]) > 0, sleep_s=2.0)
    assert partial(), "the kill should leave a half-written temporary checkpoint"
    state = load_checkpoint(os.path.join(out, "last.pt"))  # the previous complete checkpoint verifies
    assert 2 <= state["step"] < TOTAL
    _resume_and_compare(out, reference_run)


def test_ctrl_c_ends_cleanly_and_keeps_the_last_checkpoint(tmp_path, reference_run):
    """SIGINT (Ctrl-C) mid-run: exit code 130, one line on stderr naming --resume, no traceback, no temporary
    files; the last checkpoint verifies and the run resumes to the same weights as an uninterrupted one."""
    out = str(tmp_path / "run")
    # A runner that starts jobs in the background (as a non-interactive shell's `&` does) ignores SIGINT, and a
    # child inherits that; restore the default so that Python turns Ctrl-C into KeyboardInterrupt as in a terminal.
    proc = subprocess.Popen(_cmd(out), env=_env(JAFR_TEST_CKPT_SLEEP="0.05"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while _steps_logged(out) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out waiting for the run to start"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines() == [
        f"jafr train: interrupted; the last checkpoint in {out} is kept; continue with --resume"]
    assert not glob.glob(os.path.join(out, ".*.tmp.*"))
    state = load_checkpoint(os.path.join(out, "last.pt"))
    assert 2 <= state["step"] < TOTAL
    assert torch.load(os.path.join(out, "last.pt"), weights_only=False)["step"] == state["step"]
    _resume_and_compare(out, reference_run)
