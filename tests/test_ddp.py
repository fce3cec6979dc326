"""Two gloo processes (DDP, DistributedSampler) take the same JaFR steps as one process on the same global
batch. With the per-sample, scale-invariant ratio penalty and equal per-process batches, the mean of the
per-process objectives is the global objective, so the parameters must agree to float64 rounding."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from jafr_kernels.train import TrainConfig, load_checkpoint, train_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = """
import sys, json
from jafr_kernels.train import TrainConfig, train_model
train_model(TrainConfig(**json.loads(sys.argv[1])))
"""


def _config(out_dir, **kw):
    base = dict(method="jafr", model="small_cnn_nobn", max_steps=3, batch_size=32, train_subset=256, dtype="float64",
                lam=0.5, out_dir=str(out_dir), progress=False, seed=3, augment=False)
    base.update(kw)
    return base


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(cfg: dict):
    import json

    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", JAFR_DIST_BACKEND="gloo",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out


def _max_rel_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for k in a:
        scale = b[k].abs().max().clamp_min(1e-30)
        worst = max(worst, float((a[k] - b[k]).abs().max() / scale))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("method", ["jafr", "fgsm+jafr"])
def test_two_process_jafr_matches_one_process(tmp_path, method):
    cfg = _config(tmp_path / "ddp", method=method)
    _run_two_processes(cfg)
    ddp = load_checkpoint(str(tmp_path / "ddp" / "last.pt"))
    assert ddp["step"] == 3
    single = train_model(TrainConfig(**_config(tmp_path / "single", method=method)))
    start = train_model(TrainConfig(**_config(tmp_path / "start", method=method, max_steps=3, lam=0.0, lr=0.0)))
    one = {k: v for k, v in single.model.state_dict().items()}
    # the runs moved the parameters, and both moved them the same way
    assert _max_rel_diff(one, start.model.state_dict()) > 1e-3
    assert _max_rel_diff(ddp["model"], one) <= 1e-6


@pytest.mark.slow
def test_two_process_finite_difference_runs(tmp_path):
    """FD under DDP: one backward per step does the all-reduce, and h comes from all-reduced norms, so the
    two-process run reproduces the single-process one."""
    cfg = _config(tmp_path / "ddp", jacobian_mode="finite_difference")
    _run_two_processes(cfg)
    ddp = load_checkpoint(str(tmp_path / "ddp" / "last.pt"))
    single = train_model(TrainConfig(**_config(tmp_path / "single", jacobian_mode="finite_difference"))).model.state_dict()
    assert all(torch.isfinite(v).all() for v in ddp["model"].values())
    assert _max_rel_diff(ddp["model"], single) <= 1e-6
