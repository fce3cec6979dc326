"""How the ways of taking the JaFR gradient compare (``python scripts/jacobian_modes.py``).

* ``effect``: for each seed, the same data, steps and initialisation; the held-out low-frequency ratio of J
  (first 1000 test images) after a standard run and after JaFR (low target) with the exact double-backward
  gradient, finite differences, lazy finite differences (every 4th step, weight 4 lam) and sub-batch finite
  differences (a quarter of each batch). Each mode's *shift* is its ratio minus the standard run's; its
  share is that shift over the exact mode's, per seed and over seeds.
* ``cosine``: cosine between the finite-difference and the exact parameter gradient of lam * P, float64,
  for smooth and ReLU models.

The training steps' cost is measured by the benchmark suite (``python -m benchmarks --only training``).
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import jafr_kernels as jk
from jafr_kernels.train.data import load_dataset
from jafr_kernels.train.loop import TrainConfig, train_model
from jafr_kernels.eval.frequency import jacobian_low_freq_ratio
from jafr_kernels.train.objective import jafr_objective

MODES = {
    "exact": dict(jacobian_mode="double_backward", jafr_every=1),
    "fd": dict(jacobian_mode="finite_difference", jafr_every=1),
    "lazy_fd_k4": dict(jacobian_mode="finite_difference", jafr_every=4),
    "sub_fd_f0.25": dict(jacobian_mode="finite_difference", jafr_every=1, jafr_fraction=0.25),
}
SEEDS = (0, 1, 2, 3, 4)


def effect(seeds=SEEDS, steps: int = 300, lam: float = 0.1, out_dir: str = "runs/jacobian_modes") -> dict:
    """Held-out J low-frequency ratio per seed and mode, and each mode's shift as a share of the exact one's."""
    train, test = load_dataset("fashion_mnist", True), load_dataset("fashion_mnist", False)
    xt, yt = test.batch(torch.arange(1000))
    ratios: dict = {}
    for seed in seeds:
        runs = {"standard": dict(method="standard")} | {m: dict(method="jafr", **kw) for m, kw in MODES.items()}
        for name, kw in runs.items():
            cfg = TrainConfig(max_steps=steps, lam=lam, seed=seed, out_dir=f"{out_dir}/{name}/seed{seed}", progress=False,
                              ckpt_every=10**9, overwrite=True, **kw)
            model = train_model(cfg, train_set=train).model
            ratios.setdefault(name, []).append(jacobian_low_freq_ratio(model, xt, yt, 0.25))
            print(f"seed {seed} {name}: held-out lf ratio {ratios[name][-1]:.4f}", flush=True)
    shifts = {m: [r - s for r, s in zip(ratios[m], ratios["standard"])] for m in MODES}
    share = {m: [a / e for a, e in zip(shifts[m], shifts["exact"])] for m in MODES}
    return {"steps": steps, "lam": lam, "seeds": list(seeds), "lf_ratio": ratios, "shift": shifts,
            "share_of_exact_per_seed": share,
            "share_of_exact_mean_shift": {m: statistics.mean(shifts[m]) / statistics.mean(shifts["exact"]) for m in MODES}}


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
    p = argparse.ArgumentParser(prog="python scripts/jacobian_modes.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("effect", "cosine", "all"))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--out", default="runs/jacobian_modes")
    args = p.parse_args(argv)
    if args.what in ("cosine", "all"):
        print(json.dumps({"cosine": cosine(lam=args.lam)}, indent=1), flush=True)
    if args.what in ("effect", "all"):
        print(json.dumps({"effect": effect(tuple(args.seeds), args.steps, args.lam, args.out)}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
