"""``jafr train``: parse arguments into a TrainConfig, train, report. Works under ``torchrun``."""
from __future__ import annotations

import argparse
import sys

from jafr_kernels.train.data import DATASETS
from jafr_kernels.train.models import MODELS


def register(subparsers) -> None:
    """Add the ``train`` subcommand to the ``jafr`` command's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train a classifier with JaFR, adversarial training or plain CE",
        description="Train a model; writes config.json, metrics.jsonl and verified checkpoints (last.pt, prev.pt) "
        "to --out. Under torchrun each process takes batch-size/N samples of every global batch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from jafr_kernels.train.loop import METHODS

    p.add_argument("--method", default="jafr", choices=METHODS)
    p.add_argument("--dataset", default="fashion_mnist", choices=DATASETS)
    p.add_argument("--model", default="small_cnn", choices=MODELS)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--lam", "--lambda", dest="lam", type=float, default=None,
                   help="JaFR weight (default 0.1 for --formulation ratio, 0.001 for official)")
    p.add_argument("--cutoff", type=float, default=0.25, help="low-band radius (1 = Nyquist)")
    p.add_argument("--target", default="low", choices=("low", "high"))
    p.add_argument("--formulation", default="ratio", choices=("ratio", "official"))
    p.add_argument("--jacobian-mode", default="double_backward", choices=("double_backward", "finite_difference"))
    p.add_argument("--fd-h", type=float, default=0.01, help="finite-difference step, relative to ||x||/||v||")
    p.add_argument("--eps", type=float, default=None, help="L-inf radius (default: 0.1 Fashion-MNIST, 8/255 others)")
    p.add_argument("--lr", type=float, default=None, help="peak LR (default 0.05 Fashion-MNIST, 0.2 others)")
    p.add_argument("--lr-schedule", default="cyclic", choices=("cyclic", "constant"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train", help="run directory")
    p.add_argument("--data-dir", default=None, help="dataset root (Fashion-MNIST default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--train-subset", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the model (spectral maths stay fp32)")
    p.add_argument("--sync-bn", action="store_true", help="convert BatchNorm to SyncBatchNorm under DDP")
    p.add_argument("--update-bn-in-extra-passes", dest="freeze_bn", action="store_false",
                   help="let attack/Jacobian/finite-difference passes update BN running stats (authors' code)")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every N steps (and at epoch ends)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from jafr_kernels.train.checkpoint import CheckpointError
    from jafr_kernels.train.data import DatasetError
    from jafr_kernels.train.loop import DoubleBackwardError, NonFiniteLossError, TrainConfig, train_model

    cfg = TrainConfig(
        method=args.method, dataset=args.dataset, model=args.model, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, lam=args.lam, cutoff=args.cutoff, target=args.target, formulation=args.formulation,
        jacobian_mode=args.jacobian_mode, fd_h=args.fd_h, eps=args.eps, lr=args.lr, lr_schedule=args.lr_schedule,
        seed=args.seed, out_dir=args.out, data_dir=args.data_dir, train_subset=args.train_subset, device=args.device,
        dtype=args.dtype, bf16=args.bf16, sync_bn=args.sync_bn, freeze_bn=args.freeze_bn, augment=args.augment,
        ckpt_every=args.ckpt_every, resume=args.resume, progress=args.progress,
    )
    try:
        result = train_model(cfg)
    except (DatasetError, CheckpointError, NonFiniteLossError, DoubleBackwardError, ValueError) as exc:
        print(f"jafr train: error: {exc}", file=sys.stderr)
        return 1
    steps = [r for r in result.history if r.get("type") == "step"]
    if steps:
        last = steps[-1]
        print(f"done: {result.step} steps, last loss {last['loss']:.4f}, acc {last['acc']:.3f}; run dir {result.run_dir}")
    return 0
