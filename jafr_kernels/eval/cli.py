"""``jafr study`` and ``jafr eval``: argument parsing only; the work is in :mod:`jafr_kernels.eval.study`."""
from __future__ import annotations

import argparse
import os

from jafr_kernels.eval.study import DEFAULT_METHODS, StudyConfig


def _int_or_none(text: str):
    return None if text.lower() in ("none", "all", "full") else int(text)


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-subset", type=_int_or_none, default=2000, help="test images evaluated ('all': the full test set; default 2000)")
    g.add_argument("--adv-subset", type=_int_or_none, default=500, help="of those, how many are attacked ('all': every one; default 500)")
    g.add_argument("--pgd-steps", type=int, default=10, help="PGD steps (default 10; --full: 50)")
    g.add_argument("--pgd-restarts", type=int, default=1, help="PGD random restarts (default 1; --full: 10)")
    g.add_argument("--no-cw", action="store_true", help="skip the CW-margin PGD")
    g.add_argument("--heat-map-images", type=int, default=100, help="images for the Fourier heat map (default 100; --full: 1000)")
    g.add_argument("--heat-map-eps", type=float, default=None, help="L2 norm of the Fourier basis (default 4.0 scaled to the image size)")
    g.add_argument("--corruption-dir", default=None, help="published CIFAR-10-C/-100-C (.npy) or Tiny-ImageNet-C folder; default: generate")
    g.add_argument("--corruptions", nargs="+", default=None, help="corruption names (default: all that apply)")
    g.add_argument("--autoattack", action="store_true", help="also run standard AutoAttack (needs torchattacks)")


def _study_config(args) -> StudyConfig:
    return StudyConfig(
        name=args.name, dataset=args.dataset, data_dir=args.data_dir, corruption_dir=args.corruption_dir,
        model=args.model, methods=tuple(args.methods), epochs=args.epochs if args.epochs is not None else (30 if args.full else 1),
        max_steps=args.max_steps, train_subset=args.train_subset, batch_size=args.batch_size, lam=args.lam,
        cutoff=args.cutoff, formulation=args.formulation, jacobian_mode=args.jacobian_mode, lr=args.lr, eps=args.eps,
        eval_subset=args.eval_subset, adv_subset=args.adv_subset, pgd_steps=args.pgd_steps,
        pgd_restarts=args.pgd_restarts, cw=not args.no_cw, heat_map_images=args.heat_map_images,
        heat_map_eps=args.heat_map_eps, corruptions=tuple(args.corruptions) if args.corruptions else None,
        autoattack=args.autoattack, seed=args.seed, device=args.device, out_root=args.out_root,
        retrain=args.retrain, progress=not args.no_progress, full=args.full,
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
    p.add_argument("--cutoff", type=float, default=0.25, help="low-band radius for ratios (1 = Nyquist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--full", action="store_true", help="the paper's setting: PreAct ResNet-18, 30 epochs, full test set, PGD-50x10")


def register(subparsers) -> None:
    """Add ``jafr study`` and ``jafr eval`` to the ``jafr`` command."""
    p = subparsers.add_parser(
        "study",
        help="train several methods and write a robustness report (runs/<name>/report.md)",
        description="Train standard, JaFR (low/high target) and adversarially trained models on the same data and seed, "
        "evaluate clean / corruption / adversarial accuracy and frequency analyses, and write runs/<name>/report.md. "
        "The default is a CPU study on Fashion-MNIST finishing within about 15 minutes.",
    )
    p.add_argument("--name", default="study", help="study folder name under --out-root (default: study)")
    p.add_argument("--out-root", default="runs")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help="methods, target after a colon: standard jafr:low jafr:high fgsm fgsm+jafr pgd pgd+jafr gradalign")
    p.add_argument("--model", default=None, help="small_cnn (Fashion-MNIST default) or preact_resnet18")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 1; --full: 30)")
    p.add_argument("--max-steps", type=int, default=None, help="stop each training run after this many steps")
    p.add_argument("--train-subset", type=_int_or_none, default=None, help="train on the first N training images (default: all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lam", type=float, default=None, help="JaFR weight (default 0.1 for the ratio formulation)")
    p.add_argument("--formulation", default="ratio", choices=["ratio", "official"])
    p.add_argument("--jacobian-mode", default="double_backward", help="double_backward or finite_difference")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--retrain", action="store_true", help="retrain and re-evaluate methods that already have results")
    p.add_argument("--report-only", action="store_true", help="rebuild report.md and figures from the runs on disk")
    _add_common(p)
    _add_eval_args(p)
    p.set_defaults(func=_run_study)

    e = subparsers.add_parser("eval", help="evaluate one saved training run (writes <run_dir>/eval.json)")
    e.add_argument("run_dir", help="a training run folder (holds the config and checkpoint)")
    _add_common(e)
    _add_eval_args(e)
    e.set_defaults(func=_run_eval, name="eval", out_root="runs", methods=[], model=None, epochs=1, max_steps=None,
                   train_subset=None, batch_size=128, lam=None, formulation="ratio", jacobian_mode="double_backward",
                   lr=None, retrain=False)
