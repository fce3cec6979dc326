"""``jafr train``: parse arguments into a TrainConfig, train, report. Works under ``torchrun``.

Its options for the TrainConfig fields come from :func:`add_train_options`, which ``jafr study`` uses too, so a
field is spelled, explained and parsed the same way in every command.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from jafr_kernels.cli import DefaultsFormatter
from jafr_kernels.train.data import DATASETS


# --------------------------------------------------------------------------- one option per TrainConfig field
# The command line's side of each TrainConfig field, for every command that offers it (jafr train, jafr study).
HELP = {
    "method": "training method",
    "dataset": "fashion_mnist is embedded; the others are read from --data-dir",
    "model": "preact_resnet18: the paper's network with the standard pre-activation head; preact_resnet18_authors: "
             "the authors' exact head (needs the paper's long warmup)",
    "epochs": "passes over the training set",
    "max_steps": "stop after this many optimizer steps",
    "batch_size": "global batch size",
    "lam": "JaFR weight, >= 0",
    "cutoff": "low-band radius (1 = Nyquist)",
    "target": "push J's spectrum to low or high frequencies",
    "formulation": "ratio: energy share outside/inside the band; official: the authors' log-spectrum score",
    "jacobian_mode": "how the penalty's parameter gradient is taken: finite_difference (two forward and two backward "
                     "passes) or double_backward (the paper's double backprop, 1.5x dearer)",
    "jafr_every": "lazy regularisation: the JaFR term every K-th step, weighted K * lam (1: every step)",
    "jafr_fraction": "sub-batch regularisation: J and the JaFR term on a fraction F of each batch (1: all of it)",
    "eps": "L-inf radius",
    "seed": "seeds the model, data order and attacks",
    "out_dir": "run directory (new or empty, unless --resume or --overwrite)",
    "data_dir": "dataset root",
    "train_subset": "use only the first N training samples",
    "device": "auto (GPU if visible, else CPU; cuda:LOCAL_RANK under torchrun), cpu, cuda, cuda:N",
    "lr": "peak LR",
    "progress": "progress bar",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "lr_schedule": "cyclic: triangular, as in the paper",
    "warmup_min": "cyclic LR: warm up over at least this many steps (2/5 of training when longer; at most half the run)",
    "gradalign_lambda": "weight of GradAlign's 1 - cos term (method gradalign)",
    "pgd_steps": "steps of the training PGD attack, each eps/4 (methods pgd, pgd+jafr)",
    "fd_h": "finite-difference step, relative to ||x||/||v||",
    "freeze_bn": "only the main pass updates BN running stats; --no-freeze-bn (or --update-bn-in-extra-passes): "
                 "attack/Jacobian/finite-difference passes update them too, as the authors' code does",
    "bf16": "bf16 autocast for the model (spectral maths stay fp32)",
    "channels_last": "model and batches in channels_last (NHWC) memory format",
    "compile": "torch.compile the model (needs --jacobian-mode finite_difference for JaFR: no double backward)",
    "sync_bn": "convert BatchNorm to SyncBatchNorm under DDP",
    "augment": "random crop / flip",
    "dtype": "model and data precision",
    "ckpt_every": "checkpoint every N steps (and at epoch ends)",
    "log_every": "read metrics back from the device every N steps (and at checkpoints and epoch ends)",
    "resume": "continue from the newest valid checkpoint in --out",
    "overwrite": "replace the run in --out (its config, metrics, checkpoints, eval.json)",
    "init_from": "start from the model weights of a run folder or checkpoint (fresh optimizer and schedule)",
}
# What a None default stands for (shown as the option's default).
NONE_MEANS = {
    "max_steps": "the epochs' steps",
    "lam": "0.1 for --formulation ratio, 0.001 for official",
    "eps": "0.1 Fashion-MNIST, 8/255 others",
    "data_dir": "/usr/share/datasets/fashion-mnist for Fashion-MNIST",
    "train_subset": "all",
    "lr": "0.05 Fashion-MNIST, 0.2 others",
}
# Spellings other than "--" + the field's name with dashes; the first one names the parsed attribute.
# The training attack's steps are --train-pgd-steps everywhere: jafr study's --pgd-steps is the evaluation's.
FLAGS = {"out_dir": ("--out",), "lam": ("--lam", "--lambda"), "pgd_steps": ("--train-pgd-steps",)}
NEGATIONS = {"freeze_bn": "--update-bn-in-extra-passes"}  # a further flag that sets the field False
METAVARS = {"jafr_every": "K", "jafr_fraction": "F", "init_from": "RUN_OR_CKPT"}
EXCLUSIVE = frozenset({"resume", "overwrite"})  # at most one of them on a command line


def int_or_none(text: str):
    """An integer, or None for 'none', 'all' or 'full' (an optional count's "no limit")."""
    if text.lower() in ("none", "all", "full"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None


def option_flags(name: str) -> tuple:
    """The command-line flags of TrainConfig field ``name`` (``"pgd_steps"`` -> ``("--train-pgd-steps",)``)."""
    return FLAGS.get(name, ("--" + name.replace("_", "-"),))


def _dest(name: str) -> str:
    return option_flags(name)[0][2:].replace("-", "_")


def add_train_options(parser, skip=(), defaults=None, notes=None) -> None:
    """Add one option per TrainConfig field not in ``skip`` to ``parser`` (a parser or an argument group).

    Flags, type, choices and help come from this module's tables and :data:`jafr_kernels.train.loop.CHOICES`, so
    every command offers a field the same way; ``defaults`` replaces TrainConfig's defaults and ``notes`` says
    what a None default stands for, where a command differs (jafr study).
    """
    from jafr_kernels.train.loop import CHOICES, TrainConfig

    defaults, notes = defaults or {}, {**NONE_MEANS, **(notes or {})}
    choices = {**CHOICES, "dataset": DATASETS}
    hints = typing.get_type_hints(TrainConfig)
    exclusive = None
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        target = parser
        if f.name in EXCLUSIVE and EXCLUSIVE.isdisjoint(skip):
            exclusive = exclusive or parser.add_mutually_exclusive_group()
            target = exclusive
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        default = defaults.get(f.name, f.default)
        text = HELP[f.name]
        if default is None and f.name in notes:
            text += f" (default: {notes[f.name]})"
        flags, dest = option_flags(f.name), _dest(f.name)
        if kind is bool:
            target.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=default,
                                help=text + " (default: %(default)s)")
            if f.name in NEGATIONS:
                target.add_argument(NEGATIONS[f.name], dest=dest, action="store_false", default=default,
                                    help=f"the same as --no-{flags[0][2:]}")
            continue
        convert = int_or_none if kind is int and f.default is None else kind
        target.add_argument(*flags, dest=dest, type=convert, default=default, choices=choices.get(f.name),
                            metavar=METAVARS.get(f.name), help=text)


def train_fields(args: argparse.Namespace, skip=()) -> dict:
    """``{field: value}`` of the TrainConfig fields not in ``skip`` that :func:`add_train_options` gave ``args``."""
    from jafr_kernels.train.loop import TrainConfig

    return {f.name: getattr(args, _dest(f.name)) for f in dataclasses.fields(TrainConfig)
            if f.name not in skip and hasattr(args, _dest(f.name))}


def register(subparsers) -> None:
    """Add the ``train`` subcommand to the ``jafr`` command's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train a classifier with JaFR, adversarial training or plain CE",
        description="Train a model; writes config.json, metrics.jsonl and verified checkpoints (last.pt, prev.pt) "
        "to --out. Under torchrun each process takes batch-size/N samples of every global batch.",
        formatter_class=DefaultsFormatter,
    )
    add_train_options(p)
    p.add_argument("--test-subset", type=int, default=None,
                   help="after training, report the accuracy on the first N test images (0: skip; default: the whole test set)")
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` the arguments describe (not yet checked)."""
    from jafr_kernels.train.loop import TrainConfig

    return TrainConfig(**train_fields(args))


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

    from jafr_kernels.train.accuracy import clean_accuracy
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
