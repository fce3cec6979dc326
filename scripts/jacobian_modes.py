"""Measurements behind the training layer's claims (``python -m jafr_kernels.train.measure``).

* ``spectrum``: same seed, steps and data; held-out low-frequency ratio of J for standard, JaFR (low, high)
  and JaFR with finite differences, and the share of the double-backward increase that FD reaches.
* ``cost``: interleaved timing of one standard, double-backward and finite-difference step on a batch.
* ``cosine``: cosine between the FD and the exact (double-backward) parameter gradient of lam * P, float64.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import jafr_kernels as jk
from jafr_kernels.train.data import load_dataset
from jafr_kernels.train.loop import TrainConfig, train_model
from jafr_kernels.train.models import build_model
from jafr_kernels.train.objective import jacobian_low_freq_ratio, jafr_objective


def spectrum(steps: int = 100, lam: float = 0.1, seed: int = 0, fd_h: float = 0.01, out_dir: str = "runs/measure") -> dict:
    """Held-out (first 1000 test images) J low-frequency ratio and median step time after ``steps`` steps."""
    train, test = load_dataset("fashion_mnist", True), load_dataset("fashion_mnist", False)
    xt, yt = test.batch(torch.arange(1000))
    runs = {"standard": dict(method="standard"), "jafr_low": dict(method="jafr", target="low"),
            "jafr_high": dict(method="jafr", target="high"),
            "jafr_low_fd": dict(method="jafr", target="low", jacobian_mode="finite_difference", fd_h=fd_h)}
    result = {}
    for name, kw in runs.items():
        cfg = TrainConfig(max_steps=steps, lam=lam, seed=seed, out_dir=f"{out_dir}/{name}", progress=False, ckpt_every=10**9,
                          overwrite=True, **kw)
        res = train_model(cfg, train_set=train)
        times = [r["time_s"] for r in res.history if r["type"] == "step"][3:]
        result[name] = {"heldout_lf_ratio": jacobian_low_freq_ratio(res.model, xt, yt, 0.25),
                        "median_step_s": statistics.median(times) if times else None}
    gain_db = result["jafr_low"]["heldout_lf_ratio"] - result["standard"]["heldout_lf_ratio"]
    gain_fd = result["jafr_low_fd"]["heldout_lf_ratio"] - result["standard"]["heldout_lf_ratio"]
    result["fd_share_of_db_increase"] = gain_fd / gain_db if gain_db else None
    return result


def cost(width: int = 8, batch: int = 128, repeats: int = 12) -> dict:
    """Median seconds per step (forward + backward) of standard CE, double-backward and FD JaFR, interleaved."""
    train = load_dataset("fashion_mnist", True)
    x, y = train.batch(torch.arange(batch))
    torch.manual_seed(0)
    model = build_model("small_cnn", width=width)
    steps = {"standard": lambda: F.cross_entropy(model(x), y).backward(),
             "double_backward": lambda: jafr_objective(model, x, y, 0.1).loss.backward(),
             "finite_difference": lambda: jafr_objective(model, x, y, 0.1, jacobian_mode="finite_difference").loss.backward()}
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            t = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v[2:]) for k, v in times.items()}
    med["fd_over_db"] = med["finite_difference"] / med["double_backward"]
    med["db_over_standard"] = med["double_backward"] / med["standard"]
    med["fd_over_standard"] = med["finite_difference"] / med["standard"]
    return med


def _flat_grad(model, loss):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def cosine(hs=(1e-1, 1e-2, 1e-3, 1e-4), lam: float = 0.1) -> dict:
    """FD vs exact penalty gradient, float64, on 64 Fashion-MNIST images, for smooth and ReLU models."""
    x, y = load_dataset("fashion_mnist", True).batch(torch.arange(64))
    x = x.double()

    def net(act, pool):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), act(), pool(2), nn.Conv2d(8, 16, 3, padding=1),
                             act(), pool(2), nn.Flatten(), nn.Linear(16 * 49, 10)).double()

    models = {"silu_avgpool": net(nn.SiLU, nn.AvgPool2d), "tanh_avgpool": net(nn.Tanh, nn.AvgPool2d),
              "relu_avgpool": net(nn.ReLU, nn.AvgPool2d), "relu_maxpool(small_cnn)": net(nn.ReLU, nn.MaxPool2d)}
    out = {}
    for name, model in models.items():
        xr = x.clone().requires_grad_(True)
        (jac,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr, create_graph=True)
        exact = _flat_grad(model, lam * jk.freq_penalty(jac))
        g_ce = _flat_grad(model, F.cross_entropy(model(x), y))
        out[name] = {}
        for h in hs:
            fd = _flat_grad(model, jafr_objective(model, x, y, lam, jacobian_mode="finite_difference", fd_h=h).loss) - g_ce
            out[name][str(h)] = float(F.cosine_similarity(fd, exact, dim=0))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jafr_kernels.train.measure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("spectrum", "cost", "cosine", "all"))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--out", default="runs/measure")
    args = p.parse_args(argv)
    if args.what in ("cosine", "all"):
        print(json.dumps({"cosine": cosine()}, indent=1), flush=True)
    if args.what in ("cost", "all"):
        print(json.dumps({"cost": cost(args.width)}, indent=1), flush=True)
    if args.what in ("spectrum", "all"):
        print(json.dumps({"spectrum": spectrum(args.steps, args.lam, out_dir=args.out)}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
