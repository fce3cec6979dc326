"""``jafr train``: parse arguments into a TrainConfig, train, report. Works under ``torchrun``."""
from __future__ import annotations

import argparse
import json
import os
import sys

from jafr_kernels.cli import DefaultsFormatter
from jafr_kernels.train.data import DATASETS


def register(subparsers) -> None:
    """Add the ``train`` subcommand to the ``jafr`` command's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train a classifier with JaFR, adversarial training or plain CE",
        description="Train a model; writes config.json, metrics.jsonl and verified checkpoints (last.pt, prev.pt) "
        "to --out. Under torchrun each process takes batch-size/N samples of every global batch.",
        formatter_class=DefaultsFormatter,
    )
    from jafr_kernels.train.loop import CHOICES

    p.add_argument("--method", default="jafr", choices=CHOICES["method"], help="training method")
    p.add_argument("--dataset", default="fashion_mnist", choices=DATASETS,
                   help="fashion_mnist is embedded; the others are read from --data-dir")
    p.add_argument("--model", default="small_cnn", choices=CHOICES["model"],
                   help="preact_resnet18: the paper's network with the standard pre-activation head; "
                   "preact_resnet18_authors: the authors' exact head (needs the paper's long warmup); default: small_cnn")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training set")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (default: the epochs' steps)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--lam", "--lambda", dest="lam", type=float, default=None,
                   help="JaFR weight, >= 0 (default 0.1 for --formulation ratio, 0.001 for official)")
    p.add_argument("--cutoff", type=float, default=0.25, help="low-band radius (1 = Nyquist)")
    p.add_argument("--target", default="low", choices=CHOICES["target"], help="push J's spectrum to low or high frequencies")
    p.add_argument("--formulation", default="ratio", choices=CHOICES["formulation"],
                   help="ratio: energy share outside/inside the band; official: the authors' log-spectrum score")
    p.add_argument("--jacobian-mode", default="finite_difference", choices=CHOICES["jacobian_mode"],
                   help="how the penalty's parameter gradient is taken: finite_difference (two forward and two backward "
                   "passes) or double_backward (the paper's double backprop, 1.5x dearer)")
    p.add_argument("--fd-h", type=float, default=0.01, help="finite-difference step, relative to ||x||/||v||")
    p.add_argument("--jafr-every", type=int, default=4, metavar="K",
                   help="lazy regularisation: the JaFR term every K-th step, weighted K * lam (1: every step)")
    p.add_argument("--jafr-fraction", type=float, default=1.0, metavar="F",
                   help="sub-batch regularisation: J and the JaFR term on a fraction F of each batch (1: all of it)")
    p.add_argument("--eps", type=float, default=None, help="L-inf radius (default: 0.1 Fashion-MNIST, 8/255 others)")
    p.add_argument("--lr", type=float, default=None, help="peak LR (default 0.05 Fashion-MNIST, 0.2 others)")
    p.add_argument("--lr-schedule", default="cyclic", choices=CHOICES["lr_schedule"], help="cyclic: triangular, as in the paper")
    p.add_argument("--warmup-min", type=int, default=100,
                   help="cyclic LR: warm up over at least this many steps (2/5 of training when longer; at most half the run)")
    p.add_argument("--seed", type=int, default=0, help="seeds the model, data order and attacks")
    p.add_argument("--out", default="runs/train", help="run directory (new or empty, unless --resume or --overwrite)")
    p.add_argument("--data-dir", default=None, help="dataset root (Fashion-MNIST: /usr/share/datasets/fashion-mnist by default)")
    p.add_argument("--train-subset", type=int, default=None, help="use only the first N training samples (default: all)")
    p.add_argument("--device", default="auto", help="auto (GPU if visible, else CPU; cuda:LOCAL_RANK under torchrun), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=CHOICES["dtype"], help="model and data precision")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the model (spectral maths stay fp32)")
    p.add_argument("--channels-last", action="store_true", help="model and batches in channels_last (NHWC) memory format")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (needs --jacobian-mode finite_difference for JaFR: no double backward)")
    p.add_argument("--sync-bn", action="store_true", help="convert BatchNorm to SyncBatchNorm under DDP")
    p.add_argument("--update-bn-in-extra-passes", dest="freeze_bn", action="store_false",
                   help="let attack/Jacobian/finite-difference passes update BN running stats (as the authors' code does; "
                   "by default only the main pass does)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    p.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every N steps (and at epoch ends)")
    p.add_argument("--log-every", type=int, default=20,
                   help="read metrics back from the device every N steps (and at checkpoints and epoch ends)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out (its config, metrics, checkpoints, eval.json)")
    p.add_argument("--init-from", default=None, metavar="RUN_OR_CKPT",
                   help="start from the model weights of a run folder or checkpoint (fresh optimizer and schedule)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="after training, report the accuracy on the first N test images (0: skip; default: the whole test set)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` the arguments describe (not yet checked)."""
    from jafr_kernels.train.loop import TrainConfig

    return TrainConfig(
        method=args.method, dataset=args.dataset, model=args.model, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, lam=args.lam, cutoff=args.cutoff, target=args.target, formulation=args.formulation,
        jacobian_mode=args.jacobian_mode, fd_h=args.fd_h, jafr_every=args.jafr_every,
        jafr_fraction=args.jafr_fraction, channels_last=args.channels_last, compile=args.compile, eps=args.eps, lr=args.lr, lr_schedule=args.lr_schedule,
        warmup_min=args.warmup_min, seed=args.seed, out_dir=args.out, data_dir=args.data_dir,
        train_subset=args.train_subset, device=args.device, dtype=args.dtype, bf16=args.bf16, sync_bn=args.sync_bn,
        freeze_bn=args.freeze_bn, augment=args.augment, ckpt_every=args.ckpt_every, log_every=args.log_every,
        resume=args.resume, overwrite=args.overwrite, init_from=args.init_from, progress=args.progress,
    )


# λ far beyond its formulation's default swamps the classification loss: training then mostly shapes J.
LAM_WARN_FACTOR = 100


def lam_warning(lam, formulation: str, method: str):
    """A one-line warning when ``lam`` is over LAM_WARN_FACTOR times the formulation's default, else None."""
    from jafr_kernels.train.methods import default_lambda, get_method

    if lam is None or not get_method(method).jafr:
        return None
    usual = default_lambda(formulation)
    if lam <= LAM_WARN_FACTOR * usual:
        return None
    return (f"warning: --lam {lam:g} is over {LAM_WARN_FACTOR}x the usual {usual:g} for --formulation {formulation}: "
            f"the penalty will dominate the classification loss and accuracy may stay near chance "
            f"(typical: {usual / 10:g} to {usual * 10:g})")


def test_accuracy(model, dataset: str, data_dir, n=None) -> tuple[float, int]:
    """(top-1 accuracy, images) of ``model`` on the first ``n`` images of ``dataset``'s test split (all if None)."""
    import torch

    from jafr_kernels.eval.adversarial import clean_accuracy
    from jafr_kernels.train.data import get_batch, load_dataset

    test_set = load_dataset(dataset, train=False, data_dir=data_dir)
    count = len(test_set) if n is None else min(n, len(test_set))
    x, y = get_batch(test_set, torch.arange(count))
    param = next(model.parameters())
    return clean_accuracy(model, x.to(param.dtype), y, device=param.device), count


def main(args: argparse.Namespace) -> int:
    """Train, then report the test accuracy; errors are turned into one-line messages by
    :func:`jafr_kernels.cli.run_command`."""
    from jafr_kernels.train.loop import train_model

    if args.test_subset is not None and args.test_subset < 0:
        raise ValueError(f"--test-subset must be >= 0; got {args.test_subset}")
    warning = lam_warning(args.lam, args.formulation, args.method)
    if warning and os.environ.get("RANK", "0") == "0":
        print(f"jafr train: {warning}", file=sys.stderr)
    try:
        result = train_model(config_from_args(args))
    except KeyboardInterrupt:
        print(f"jafr train: interrupted; {_kept(args.out)}", file=sys.stderr)
        return 130
    steps = [r for r in result.history if r.get("type") == "step"]
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    if steps:
        last = steps[-1]
        print(f"done: {result.step} steps, last loss {last['loss']:.4f}, acc {last['acc']:.3f}; run dir {result.run_dir}")
    else:
        print(f"done: the run in {result.run_dir} had already finished ({result.step} steps)")
    if args.test_subset != 0:
        with open(os.path.join(result.run_dir, "config.json")) as f:
            dataset = json.load(f)["dataset"]
        acc, n = test_accuracy(result.model, dataset, args.data_dir, args.test_subset)
        print(f"test accuracy {100 * acc:.2f}% ({n} {dataset} test images)")
    return 0


def _kept(run_dir: str) -> str:
    if os.path.exists(os.path.join(run_dir, "last.pt")):
        return f"the last checkpoint in {run_dir} is kept; continue with --resume"
    return "no checkpoint was written"
