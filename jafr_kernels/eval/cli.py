"""``jafr study`` and ``jafr eval``: argument parsing only; the work is in :mod:`jafr_kernels.eval.study`."""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing

from jafr_kernels.eval.study import ALL, DEFAULT_METHODS, StudyConfig
from jafr_kernels.train.loop import TrainConfig


def _int_or_none(text: str):
    return None if text.lower() in ("none", "all", "full") else int(text)


def _count(text: str):
    return ALL if text.lower() in ("none", "all", "full") else int(text)


# TrainConfig fields the study sets itself (per run, or through the study's own options).
_STUDY_SET = {"method", "target", "seed", "lam", "cutoff", "epochs", "out_dir", "resume", "progress", "dataset",
              "data_dir", "eps", "device"}
_TRAIN_RENAMED = {"pgd_steps": "train_pgd_steps"}  # the study's --pgd-steps is the evaluation attack's
_STUDY_DEFAULTS = {"model": (None, "small_cnn on Fashion-MNIST, preact_resnet18 otherwise (or with --full)")}


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """One option per remaining TrainConfig field (--batch-size, --bf16/--no-bf16, --fd-h, ...), default: TrainConfig's."""
    g = p.add_argument_group("training (every TrainConfig field; see jafr train --help)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _STUDY_SET:
            continue
        dest = _TRAIN_RENAMED.get(f.name, f.name)
        flag = "--" + dest.replace("_", "-")
        kind = typing.get_args(hints[f.name]) or (hints[f.name],)
        kind = next(t for t in kind if t is not type(None))
        default, text = _STUDY_DEFAULTS.get(f.name, (f.default, f"default {f.default}"))
        if kind is bool:
            g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            g.add_argument(flag, dest=dest, type=_int_or_none if kind is int else kind, default=default, help=text)


def _train_config(args) -> TrainConfig:
    fields = {f.name: getattr(args, _TRAIN_RENAMED.get(f.name, f.name)) for f in dataclasses.fields(TrainConfig)
              if f.name not in _STUDY_SET and hasattr(args, _TRAIN_RENAMED.get(f.name, f.name))}
    return TrainConfig(dataset=args.dataset, data_dir=args.data_dir, eps=args.eps, device=args.device, seed=args.seed,
                       lam=args.lam[0] if args.lam else None, cutoff=args.cutoff[0], **fields)


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-subset", type=_count, default=None, help="test images evaluated ('all': the full test set; default: the device budget)")
    g.add_argument("--adv-subset", type=_count, default=None, help="of those, how many are attacked ('all': every one; default: the device budget)")
    g.add_argument("--pgd-steps", type=int, default=None, help="PGD steps (default: the device budget, 10; --full: 50)")
    g.add_argument("--pgd-restarts", type=int, default=None, help="PGD random restarts (default 1; --full: 10)")
    g.add_argument("--no-cw", action="store_true", help="skip the CW-margin PGD")
    g.add_argument("--heat-map-images", type=int, default=None, help="images for the Fourier heat map (default: the device budget; --full: 1000)")
    g.add_argument("--heat-map-eps", type=float, default=None, help="L2 norm of the Fourier basis (default 4.0 scaled to the image size)")
    g.add_argument("--corruption-dir", default=None, help="published CIFAR-10-C/-100-C (.npy) or Tiny-ImageNet-C folder; default: generate")
    g.add_argument("--corruptions", nargs="+", default=None, help="corruption names (default: all that apply)")
    g.add_argument("--autoattack", action="store_true", help="also run standard AutoAttack (needs torchattacks)")


def _seeds(values):
    """``--seeds N`` -> N seeds from --seed; ``--seeds 0 3 7`` -> those seeds."""
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _study_config(args) -> StudyConfig:
    return StudyConfig(
        name=args.name, train=_train_config(args), methods=tuple(args.methods), seeds=_seeds(args.seeds),
        lams=tuple(args.lam) if args.lam else None, cutoffs=tuple(args.cutoff), epochs=args.epochs,
        corruption_dir=args.corruption_dir, eval_subset=args.eval_subset, adv_subset=args.adv_subset,
        pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts, cw=not args.no_cw,
        heat_map_images=args.heat_map_images, heat_map_eps=args.heat_map_eps,
        corruptions=tuple(args.corruptions) if args.corruptions else None, autoattack=args.autoattack,
        eval_seed=args.eval_seed, out_root=args.out_root, retrain=args.retrain, progress=not args.no_progress,
        full=args.full,
    )


def _run_study(args) -> int:
    from jafr_kernels.eval.report import build_report
    from jafr_kernels.eval.study import run_study

    if args.report_only:
        path = build_report(os.path.join(args.out_root, args.name))
    else:
        path = run_study(_study_config(args))
    print(f"report: {path}")
    return 0


def _run_eval(args) -> int:
    from jafr_kernels.eval.study import evaluate_run

    path = evaluate_run(args.run_dir, _study_config(args))
    print(f"evaluation: {path}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (embedded), cifar10, cifar100, svhn, tinyimagenet")
    p.add_argument("--data-dir", default=None, help="local dataset directory (non-embedded datasets)")
    p.add_argument("--eps", type=float, default=None, help="L-inf radius (default: 0.1 Fashion-MNIST, 8/255 otherwise)")
    p.add_argument("--cutoff", type=float, nargs="+", default=[0.25],
                   help="low-band radius (1 = Nyquist); a list runs every JaFR method at each (study)")
    p.add_argument("--seed", type=int, default=0, help="first training seed")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation subset, corruption draws and attack starts")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--full", action="store_true", help="the paper's setting: PreAct ResNet-18, 30 epochs, full test set, PGD-50x10")


def register(subparsers) -> None:
    """Add ``jafr study`` and ``jafr eval`` to the ``jafr`` command."""
    p = subparsers.add_parser(
        "study",
        help="train several methods and write a robustness report (runs/<name>/report.md)",
        description="Train standard, JaFR (low/high target) and adversarially trained models on the same data and seed, "
        "evaluate clean / corruption / adversarial accuracy and frequency analyses, and write runs/<name>/report.md. "
        "The default is sized by the device and printed at the start: on a CPU, 3 seeds on Fashion-MNIST (under 10 "
        "minutes on 2 idle cores); on a GPU, 3 seeds of a larger study (about 5 minutes). Finished runs are reused.",
    )
    p.add_argument("--name", default="study", help="study folder name under --out-root (default: study)")
    p.add_argument("--out-root", default="runs")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help="methods, target after a colon: standard jafr:low jafr:high fgsm fgsm+jafr pgd pgd+jafr gradalign")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="N: N seeds from --seed; a list (two or more): those seeds (default: the device budget)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run (default: the device budget; --full: 30)")
    p.add_argument("--lam", type=float, nargs="+", default=None,
                   help="JaFR weight(s); a list gives the trade-off section (default 0.1 ratio, 0.001 official)")
    p.add_argument("--retrain", action="store_true", help="retrain and re-evaluate runs that already have results")
    p.add_argument("--report-only", action="store_true", help="rebuild report.md and figures from the runs on disk")
    _add_common(p)
    _add_train_args(p)
    _add_eval_args(p)
    p.set_defaults(func=_run_study)

    e = subparsers.add_parser("eval", help="evaluate one saved training run (writes <run_dir>/eval.json)")
    e.add_argument("run_dir", help="a training run folder (holds the config and checkpoint)")
    _add_common(e)
    _add_eval_args(e)
    e.set_defaults(func=_run_eval, name="eval", out_root="runs", methods=["standard"], seeds=None, epochs=None, lam=None,
                   retrain=False)
