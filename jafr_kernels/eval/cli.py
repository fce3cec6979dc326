"""``jafr study`` and ``jafr eval``: argument parsing and checks only; the work is in :mod:`jafr_kernels.eval.study`.

Every argument is checked (methods, settings, data and corruption folders, the run or study to read) before
any training, evaluation or folder creation; a mistake is a one-line ``ValueError`` that
:func:`jafr_kernels.cli.run_command` prints.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from jafr_kernels.eval.study import ALL, DEFAULT_METHODS, STUDY_TRAIN, StudyConfig
from jafr_kernels.train.cli import add_train_options, int_or_none, option_flags, train_fields
from jafr_kernels.train.loop import TrainConfig


def _count(text: str):
    return ALL if text.lower() in ("none", "all", "full") else int_or_none(text)


# TrainConfig fields the study sets itself (per run, or through the study's own options).
_STUDY_SET = {"method", "target", "seed", "lam", "cutoff", "epochs", "out_dir", "resume", "progress", "dataset",
              "data_dir", "eps", "device", "overwrite", "init_from"}
_STUDY_MODEL = "small_cnn on Fashion-MNIST, preact_resnet18 otherwise or with --full"


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """jafr train's options for the TrainConfig fields a study does not set per run, with the study's defaults."""
    changed = ", ".join(f"{option_flags(k)[0]} {v}" for k, v in STUDY_TRAIN.items())
    g = p.add_argument_group(f"training (as in jafr train; the study's defaults: {changed})")
    add_train_options(g, skip=_STUDY_SET, defaults={"model": None, **STUDY_TRAIN}, notes={"model": _STUDY_MODEL})


def _train_config(args) -> TrainConfig:
    return TrainConfig(dataset=args.dataset, data_dir=args.data_dir, eps=args.eps, device=args.device, seed=args.seed,
                       lam=args.lam[0] if args.lam else None, cutoff=args.cutoff[0], **train_fields(args, _STUDY_SET))


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
        full=args.full, workers=getattr(args, "workers", None),  # jafr eval has no --workers
    )


# --------------------------------------------------------------------------- checks (before any work)
def _check_eval_args(args, dataset: str) -> None:
    from jafr_kernels.eval import corruptions as C
    from jafr_kernels.train import dataset_info

    for name in ("eval_subset", "adv_subset"):
        value = getattr(args, name)
        if value not in (None, ALL) and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 or 'all'; got {value}")
    for name in ("pgd_steps", "pgd_restarts", "heat_map_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {value}")
    if args.heat_map_eps is not None and not args.heat_map_eps > 0:
        raise ValueError(f"--heat-map-eps must be > 0; got {args.heat_map_eps}")
    if args.eps is not None and not args.eps > 0:
        raise ValueError(f"--eps must be > 0; got {args.eps}")
    if args.corruption_dir is not None:
        from jafr_kernels.eval.corruption_data import open_published

        if not os.path.isdir(args.corruption_dir):
            raise ValueError(f"--corruption-dir {args.corruption_dir} is not a folder")
        known = open_published(args.corruption_dir).names
        if not known:
            raise ValueError(f"--corruption-dir {args.corruption_dir} holds no corruption (<name>.npy + labels.npy, "
                             "or <name>/<severity>/ folders)")
    else:
        known = C.available_corruptions(dataset_info(dataset).channels)
    unknown = [n for n in args.corruptions or () if n not in known]
    if unknown:
        raise ValueError(f"--corruptions: unknown {', '.join(map(repr, unknown))}; available: {', '.join(known)}")


def check_study_args(args) -> StudyConfig | None:
    """Check a ``jafr study`` command line before any work; returns its :class:`StudyConfig` (None for
    ``--report-only``, whose study must exist)."""
    from jafr_kernels.train.data import check_dataset
    from jafr_kernels.train.methods import parse

    root = os.path.join(args.out_root, args.name)
    if args.report_only:
        if not os.path.isfile(os.path.join(root, "study.json")):
            raise ValueError(f"no study at {root} (study.json missing): run jafr study --name {args.name} without --report-only first")
        return None
    for spec in args.methods:
        try:
            parse(spec)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"--methods: {exc.args[0] if exc.args else exc}") from None
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"{root} is a file; the study needs a folder (--out-root / --name)")
    cfg = _study_config(args)
    resolved = cfg.resolved()  # every setting checked: device, seeds, λ and cutoff lists, the training template
    check_dataset(resolved.train.dataset, resolved.train.data_dir)
    _check_eval_args(args, resolved.train.dataset)
    return cfg


def check_eval_args(args):
    """Check a ``jafr eval`` command line before any work; returns (StudyConfig, the run's config dict)."""
    from jafr_kernels.train import dataset_info
    from jafr_kernels.train.checkpoint import load_latest
    from jafr_kernels.train.data import check_dataset

    run_dir = args.run_dir
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir} is not a run folder (it does not exist or is a file); for a model file or state dict, "
                         f"use jafr analyze {run_dir}")
    conf_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(conf_path):
        raise ValueError(f"{run_dir} holds no config.json: not a training run folder (jafr train --out writes one)")
    with open(conf_path) as f:
        train_cfg = json.load(f)
    if load_latest(run_dir) is None:
        raise ValueError(f"{run_dir} holds no checkpoint (last.pt / prev.pt): the run never saved one")
    if args.dataset is not None and dataset_info(args.dataset).name != train_cfg["dataset"]:
        raise ValueError(f"{run_dir} was trained on {train_cfg['dataset']}; --dataset {args.dataset} cannot evaluate it "
                         "(omit --dataset to use the run's)")
    args.dataset = train_cfg["dataset"]
    check_dataset(args.dataset, args.data_dir or train_cfg.get("data_dir"))
    _check_eval_args(args, args.dataset)
    cfg = _study_config(args)
    cfg.resolved()
    return cfg, train_cfg


# --------------------------------------------------------------------------- commands
def _run_study(args) -> int:
    from jafr_kernels.eval.report import build_report
    from jafr_kernels.eval.study import run_study

    cfg = check_study_args(args)
    try:
        path = build_report(os.path.join(args.out_root, args.name)) if cfg is None else run_study(cfg)
    except KeyboardInterrupt:
        print(f"jafr study: interrupted; finished runs and checkpoints are kept in {os.path.join(args.out_root, args.name)}; "
              "run the same command again to go on", file=sys.stderr)
        return 130
    print(f"report: {path}")
    return 0


def _run_eval(args) -> int:
    from jafr_kernels.eval.adversarial import eps_key
    from jafr_kernels.eval.study import evaluate_run

    cfg, train_cfg = check_eval_args(args)
    path = evaluate_run(args.run_dir, cfg)
    with open(path) as f:
        ev = json.load(f)
    corr = [c["mean"] for c in ev.get("corruptions", {}).values()]
    key = eps_key(cfg.train.eps if cfg.train.eps is not None else train_cfg["eps"])
    pgd = ev.get("adversarial", {}).get("pgd_ce", {}).get(key)
    print(f"clean {100 * ev['clean']:.1f}% ({ev['n']} images)"
          + (f", corruptions {100 * sum(corr) / len(corr):.1f}% (mean of {len(corr)})" if corr else "")
          + (f", PGD at eps {key} {100 * pgd:.1f}%" if pgd is not None else "")
          + f", J low-freq ratio {ev['jacobian']['low_freq_ratio']:.3f}")
    print(f"evaluation: {path}")
    return 0


def _add_common(p: argparse.ArgumentParser, dataset_default) -> None:
    from jafr_kernels.train.data import DATASETS

    p.add_argument("--dataset", default=dataset_default, choices=DATASETS,
                   help="fashion_mnist is embedded; the others are read from --data-dir"
                   + (f" (default {dataset_default})" if dataset_default else " (default: the run's)"))
    p.add_argument("--data-dir", default=None, help="local dataset directory (non-embedded datasets)")
    p.add_argument("--eps", type=float, default=None, help="L-inf radius (default: " + (
        "0.1 Fashion-MNIST, 8/255 otherwise)" if dataset_default else "the run's)"))
    p.add_argument("--cutoff", type=float, nargs="+", default=[0.25],
                   help="low-band radius (1 = Nyquist); a list runs every JaFR method at each (study) (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="first training seed (default 0)")
    p.add_argument("--eval-seed", type=int, default=0,
                   help="seed of the evaluation subset, corruption draws and attack starts (default 0)")
    p.add_argument("--device", default="auto", help="auto (the GPU when one is visible, else the CPU; default), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if dataset_default:
        p.add_argument("--full", action="store_true",
                       help="the paper's setting: preact_resnet18 (standard pre-activation head; --model preact_resnet18_authors "
                       "for the authors' exact head), 30 epochs, full test set, PGD-50x10")
    else:
        p.add_argument("--full", action="store_true", help="the paper's evaluation: full test set, PGD-50x10, 1000 heat-map images")


def register(subparsers) -> None:
    """Add ``jafr study`` and ``jafr eval`` to the ``jafr`` command."""
    from jafr_kernels.cli import DefaultsFormatter

    p = subparsers.add_parser(
        "study",
        help="train several methods and write a robustness report (runs/<name>/report.md)",
        description="Train standard, JaFR (low/high target) and adversarially trained models over several seeds, "
        "evaluate clean / corruption / adversarial accuracy and frequency analyses, and write runs/<name>/report.md "
        "with mean ± 95% CI and paired verdicts. The default is sized by the device and printed at the start: on a "
        "CPU, 4 seeds on Fashion-MNIST (about 9 minutes on 2 idle cores); on a GPU, 4 seeds of a larger study "
        "(about 4 minutes). Finished runs are reused.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--name", default="study", help="study folder name under --out-root")
    p.add_argument("--out-root", default="runs", help="folder holding the studies")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help="methods, target after a colon: standard jafr:low jafr:high fgsm fgsm+jafr pgd pgd+jafr gradalign "
                   f"(default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="N: N seeds from --seed; a list (two or more): those seeds (default: the device budget)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run (default: the device budget; --full: 30)")
    p.add_argument("--lam", type=float, nargs="+", default=None,
                   help="JaFR weight(s); a list gives the trade-off section (default 0.1 ratio, 0.001 official)")
    p.add_argument("--retrain", action="store_true", help="retrain and re-evaluate runs that already have results")
    p.add_argument("--report-only", action="store_true", help="rebuild report.md and figures from the runs on disk")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained at once (default: one per CPU core on a CPU, each on one thread; 1 on a GPU)")
    _add_common(p, "fashion_mnist")
    _add_train_args(p)
    _add_eval_args(p)
    p.set_defaults(func=_run_study)

    e = subparsers.add_parser("eval", help="evaluate one saved training run (writes <run_dir>/eval.json)",
                              description="Evaluate a run folder's newest checkpoint on the run's dataset (clean, corruptions, "
                              "attacks, frequency analyses); writes <run_dir>/eval.json and prints the headline numbers.",
                              formatter_class=DefaultsFormatter)
    e.add_argument("run_dir", help="a training run folder (holds the config and checkpoint)")
    _add_common(e, None)
    _add_eval_args(e)
    e.set_defaults(func=_run_eval, name="eval", out_root="runs", methods=["standard"], seeds=None, epochs=None, lam=None,
                   retrain=False)
