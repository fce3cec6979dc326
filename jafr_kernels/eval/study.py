"""The JaFR study: train several methods on the same data and seed, evaluate each, write a report.

:func:`run_study` trains (through :mod:`jafr_kernels.train`) and evaluates every method of a
:class:`StudyConfig`, writing ``runs/<name>/<label>/eval.json`` per method plus the study-level files read by
:func:`jafr_kernels.eval.report.build_report`. :func:`evaluate_model` is the per-model evaluation (clean,
every corruption x severity, FGSM/PGD at several radii, Jacobian spectrum, Fourier heat map) and works on
any classifier.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from jafr_kernels.eval import corruptions as C
from jafr_kernels.eval.adversarial import autoattack_accuracy, clean_accuracy, eps_key, evaluate_adversarial
from jafr_kernels.eval.frequency import default_heat_map_eps, fourier_heat_map, jacobian_spectrum, spectrum_summary

DEFAULT_METHODS = ("standard", "jafr:low", "jafr:high", "fgsm", "fgsm+jafr")
EPS_SCALES = (0.5, 1.0, 1.5, 2.0)  # PGD radii as multiples of the dataset eps: {4, 8, 12, 16}/255 on CIFAR

# λ for the ratio formulation, from the sweep in docs/study.md (the paper's 0.001 is the official scale)
DEFAULT_LAMBDA = {"ratio": 0.1, "official": 0.001}


def parse_method(spec: str) -> tuple[str, str, str]:
    """``"jafr:high"`` -> (label ``"jafr_high"``, method ``"jafr"``, target ``"high"``); target defaults to low.

    Methods without JaFR (standard, fgsm, pgd, gradalign) keep their name as the label.
    """
    method, sep, target = spec.partition(":")
    if "jafr" not in method:
        if sep:
            raise ValueError(f"only JaFR methods take a target (method:low|high), got {spec!r}")
        return method, method, "low"
    target = target or "low"
    if target not in ("low", "high"):
        raise ValueError(f"method target must be 'low' or 'high', got {spec!r}")
    label = f"{method}_{target}" if (sep or method == "jafr") else method
    return label, method, target


@dataclass
class StudyConfig:
    """Settings of a study. Defaults are the embedded CPU study (within 15 minutes on 2 cores): one epoch
    over the 60000 training images per method; 2000 evaluation images (clean, corruptions, Jacobian
    spectrum), of which the first 500 are attacked with PGD-10 and the first 100 give the Fourier heat map.

    ``full=True`` switches to the paper's setting: PreAct ResNet-18, 30 epochs, the full test set (clean,
    corruptions and attacks), PGD-50 x 10 restarts, 1000 images for the Fourier heat map.
    """

    name: str = "study"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    corruption_dir: str | None = None  # published CIFAR-10-C / -100-C / Tiny-ImageNet-C files, if any
    model: str | None = None  # default: small_cnn (Fashion-MNIST), preact_resnet18 otherwise
    methods: tuple = DEFAULT_METHODS
    epochs: int = 1
    max_steps: int | None = None
    train_subset: int | None = None  # first N training images (one epoch over them); None: all
    batch_size: int = 128
    lam: float | None = None  # default from DEFAULT_LAMBDA[formulation]
    cutoff: float = 0.25
    formulation: str = "ratio"
    jacobian_mode: str = "double_backward"
    lr: float | None = None
    eps: float | None = None  # default: the dataset's (0.1 Fashion-MNIST, 8/255 otherwise)
    eval_subset: int | None = 2000  # clean, corruptions, Jacobian spectrum; None: full test set
    adv_subset: int | None = 500  # first images of the evaluation set attacked; None: all of them
    pgd_steps: int = 10
    pgd_restarts: int = 1
    cw: bool = True
    heat_map_images: int = 100
    heat_map_eps: float | None = None  # default: Yin et al.'s 4.0 at 32x32, scaled by image size
    severities: tuple = (1, 2, 3, 4, 5)
    corruptions: tuple | None = None  # default: every one that applies to the channel count
    autoattack: bool = False
    seed: int = 0
    device: str = "cpu"
    out_root: str = "runs"
    retrain: bool = False
    progress: bool = True
    full: bool = False
    extra: dict = field(default_factory=dict)

    def resolved(self) -> "StudyConfig":
        """A copy with every default filled in (dataset eps, model, λ, and the ``full`` setting)."""
        from jafr_kernels.train import dataset_info

        info = dataset_info(self.dataset)
        cfg = dataclasses.replace(self)
        if cfg.full:
            cfg.epochs, cfg.eval_subset, cfg.adv_subset, cfg.train_subset = max(cfg.epochs, 30), None, None, None
            cfg.pgd_steps, cfg.pgd_restarts, cfg.heat_map_images = 50, 10, 1000
            cfg.model = cfg.model or "preact_resnet18"
        cfg.model = cfg.model or ("small_cnn" if info.name == "fashion_mnist" else "preact_resnet18")
        cfg.eps = info.eps if cfg.eps is None else cfg.eps
        cfg.lam = DEFAULT_LAMBDA[cfg.formulation] if cfg.lam is None else cfg.lam
        cfg.heat_map_eps = default_heat_map_eps(info.image_size, info.image_size) if cfg.heat_map_eps is None else cfg.heat_map_eps
        cfg.methods = tuple(cfg.methods)
        cfg.severities = tuple(cfg.severities)
        return cfg

    @property
    def eps_list(self) -> list[float]:
        return [s * self.eps for s in EPS_SCALES]


# --------------------------------------------------------------------------- data
def eval_set(dataset: str, data_dir: str | None, n: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(x (N, C, H, W) float32 in [0, 1], y (N,), test-set indices (N,)): a seeded random subset, or all."""
    from jafr_kernels.train import load_dataset
    from jafr_kernels.train.data import get_batch

    ds = load_dataset(dataset, train=False, data_dir=data_dir)
    total = len(ds)
    if n is None or n >= total:
        idx = torch.arange(total)
    else:
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x, y = get_batch(ds, idx)
    return x.float(), y.long(), idx


class GeneratedCorruptions:
    """Corruptions generated on the fly by :mod:`jafr_kernels.eval.corruptions`, deterministic by seed."""

    source = "generated in torch with the CIFAR-10-C severity parameters"

    def __init__(self, x: Tensor, names, seed: int, batch_size: int = 1000):
        self.x, self.names, self.seed, self.batch_size = x, list(names), seed, batch_size

    def load(self, name: str, severity: int) -> Tensor:
        gen = torch.Generator(device=self.x.device).manual_seed(self.seed * 100003 + list(C.CORRUPTIONS).index(name) * 10 + severity)
        parts = [C.corrupt(self.x[i : i + self.batch_size], name, severity, gen) for i in range(0, self.x.shape[0], self.batch_size)]
        return torch.cat(parts)


class PublishedCorruptions:
    """The published -C files of a dataset, restricted to the evaluation subset's test-set indices."""

    def __init__(self, root: str, dataset: str, indices: Tensor):
        from jafr_kernels.eval.corruption_data import open_published

        self.data = open_published(dataset, root)
        self.names = list(self.data.names)
        self.indices = indices
        self.source = f"published files read from {root}"

    def load(self, name: str, severity: int) -> Tensor:
        return self.data.load(name, severity, self.indices)[0]


# --------------------------------------------------------------------------- one model
def evaluate_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: StudyConfig,
    corruption_source,
    *,
    num_classes: int,
) -> dict:
    """Evaluate one classifier: clean, corruptions, adversarial, Jacobian spectrum, Fourier heat map.

    Returns a JSON-ready dict: ``{"clean", "corruptions": {name: {"1".."5", "mean"}}, "adversarial": {...}
    (see :func:`evaluate_adversarial`), "jacobian": {...}, "heat_map": {...}, "seconds": {...}}``.
    """
    from tqdm.auto import tqdm

    device = cfg.device
    model = model.to(device).eval()
    seconds = {}
    t0 = time.perf_counter()
    out: dict = {"n": x.shape[0], "clean": clean_accuracy(model, x, y, device=device)}
    corr = {}
    jobs = [(n, s) for n in corruption_source.names for s in cfg.severities]
    for name, sev in tqdm(jobs, desc="corruptions", disable=not cfg.progress, leave=False):
        xc = corruption_source.load(name, sev)
        corr.setdefault(name, {})[str(sev)] = clean_accuracy(model, xc, y, device=device)
    for name, per in corr.items():
        per["mean"] = sum(per.values()) / len(per)
    out["corruptions"] = corr
    seconds["corruptions"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_adv = x.shape[0] if cfg.adv_subset is None else min(cfg.adv_subset, x.shape[0])
    xa, ya = x[:n_adv], y[:n_adv]
    out["adversarial"] = evaluate_adversarial(
        model, xa, ya, cfg.eps_list, steps=cfg.pgd_steps, restarts=cfg.pgd_restarts,
        losses=("ce", "cw") if cfg.cw else ("ce",), cw_eps=[cfg.eps], seed=cfg.seed, device=device,
        progress=cfg.progress,
    )
    if cfg.autoattack:
        out["autoattack"] = autoattack_accuracy(model, xa, ya, cfg.eps, n_classes=num_classes, seed=cfg.seed, device=device)
    seconds["adversarial"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out["jacobian"] = jacobian_spectrum(model, x, y, cutoff=cfg.cutoff, device=device)
    n_heat = min(cfg.heat_map_images, x.shape[0])
    out["heat_map"] = fourier_heat_map(
        model, x[:n_heat], y[:n_heat], cfg.heat_map_eps, seed=cfg.seed, bases_per_batch=16, device=device,
        progress=cfg.progress,
    )
    seconds["frequency"] = time.perf_counter() - t0
    out["seconds"] = seconds
    return out


# --------------------------------------------------------------------------- the study
def _train_config(cfg: StudyConfig, method: str, target: str, out_dir: str):
    from jafr_kernels.train import TrainConfig

    return TrainConfig(
        method=method, dataset=cfg.dataset, model=cfg.model, epochs=cfg.epochs, max_steps=cfg.max_steps,
        batch_size=cfg.batch_size, lam=cfg.lam, cutoff=cfg.cutoff, target=target, formulation=cfg.formulation,
        jacobian_mode=cfg.jacobian_mode, eps=cfg.eps, seed=cfg.seed, out_dir=out_dir, data_dir=cfg.data_dir,
        train_subset=cfg.train_subset, device=cfg.device, lr=cfg.lr, progress=cfg.progress,
        resume=not cfg.retrain, overwrite=cfg.retrain,
    )


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _study_record(cfg: StudyConfig, labels: list[str], x: Tensor) -> dict:
    rec = dataclasses.asdict(cfg)
    rec.update(
        labels=labels, eps_key=eps_key(cfg.eps), eval_n=int(x.shape[0]), eval_full=cfg.eval_subset is None,
        adversarial={"steps": cfg.pgd_steps, "restarts": cfg.pgd_restarts, "eps_keys": [eps_key(e) for e in cfg.eps_list],
                     "n": int(x.shape[0]) if cfg.adv_subset is None else min(cfg.adv_subset, int(x.shape[0]))},
        heat_map_n=min(cfg.heat_map_images, int(x.shape[0])),
        device_name=f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)" if cfg.device == "cpu" else cfg.device,
        torch_version=torch.__version__,
    )
    return rec


def run_study(cfg: StudyConfig) -> str:
    """Train and evaluate every method of ``cfg``, then write the report; returns the report's path.

    Methods whose folder already holds ``eval.json`` are not retrained or re-evaluated (unless ``retrain``).
    """
    from jafr_kernels.eval.report import build_report
    from jafr_kernels.train import NonFiniteLossError, dataset_info, train_model

    start = time.perf_counter()
    cfg = cfg.resolved()
    info = dataset_info(cfg.dataset)
    root = os.path.join(cfg.out_root, cfg.name)
    os.makedirs(root, exist_ok=True)
    specs = [parse_method(m) for m in cfg.methods]
    labels = [s[0] for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods give duplicate run names: {labels}")

    x, y, idx = eval_set(cfg.dataset, cfg.data_dir, cfg.eval_subset, cfg.seed)
    names = list(cfg.corruptions) if cfg.corruptions else C.available_corruptions(info.channels)
    if cfg.corruption_dir:
        source = PublishedCorruptions(cfg.corruption_dir, cfg.dataset, idx)
        if cfg.corruptions:
            source.names = [n for n in source.names if n in names]
    else:
        source = GeneratedCorruptions(x, names, cfg.seed)

    # frequency character of the corruptions, measured on (at most) 500 evaluation images
    n_char = min(500, x.shape[0])
    character = {}
    for name in source.names:
        per = {}
        for sev in cfg.severities:
            xc = source.load(name, sev)[:n_char]
            per[str(sev)] = C.difference_low_freq_ratio(x[:n_char], xc, cfg.cutoff)
        vals = [v for v in per.values() if not math.isnan(v)]
        per["mean"] = sum(vals) / len(vals) if vals else float("nan")
        character[name] = per
    _write_json(os.path.join(root, "corruptions.json"), {
        "source": source.source, "cutoff": cfg.cutoff, "threshold": C.LOW_FREQ_THRESHOLD,
        "character": character, "groups": C.frequency_groups(character),
    })
    _write_json(os.path.join(root, "images.json"), spectrum_summary(x, cutoff=cfg.cutoff))
    record = _study_record(cfg, labels, x)
    _write_json(os.path.join(root, "study.json"), record)

    train_s = eval_s = 0.0
    failed = {}
    for label, method, target in specs:
        run_dir = os.path.join(root, label)
        eval_path = os.path.join(run_dir, "eval.json")
        if os.path.exists(eval_path) and not cfg.retrain:
            print(f"[study] {label}: evaluated already ({eval_path}); skipping")
            continue
        print(f"[study] {label}: training ({method}, target {target})", flush=True)
        t0 = time.perf_counter()
        try:
            result = train_model(_train_config(cfg, method, target, run_dir))
        except NonFiniteLossError as exc:  # a diverged method is reported as failed; the others go on
            failed[label] = str(exc)
            print(f"[study] {label}: failed: {exc}", flush=True)
            continue
        run_train_s = time.perf_counter() - t0
        train_s += run_train_s
        print(f"[study] {label}: evaluating", flush=True)
        t0 = time.perf_counter()
        ev = evaluate_model(result.model, x, y, cfg, source, num_classes=info.num_classes)
        run_eval_s = time.perf_counter() - t0
        eval_s += run_eval_s
        ev.update(label=label, method=method, target=target, run_dir=str(result.run_dir),
                  train_seconds=run_train_s, eval_seconds=run_eval_s)
        _write_json(eval_path, ev)
        adv = ev["adversarial"]
        print(f"[study] {label}: clean {100 * ev['clean']:.1f}% ({ev['n']} images), PGD at {eps_key(cfg.eps)}"
              f" {100 * adv['pgd_ce'][eps_key(cfg.eps)]:.1f}% ({adv['n']} images), J low-freq ratio"
              f" {ev['jacobian']['low_freq_ratio']:.3f}; train {run_train_s:.0f} s, eval {run_eval_s:.0f} s", flush=True)

    record.update(train_seconds=train_s, eval_seconds=eval_s, total_seconds=time.perf_counter() - start, failed=failed)
    _write_json(os.path.join(root, "study.json"), record)
    return build_report(root)


def evaluate_run(run_dir: str, cfg: StudyConfig) -> str:
    """Evaluate a saved training run (its ``config.json`` and newest checkpoint); writes ``run_dir/eval.json``.

    The run's dataset, model and eps are taken from its config; ``cfg`` supplies the evaluation settings.
    """
    from jafr_kernels.train import dataset_info, load_trained_model

    with open(os.path.join(run_dir, "config.json")) as f:
        train_cfg = json.load(f)
    cfg = dataclasses.replace(cfg, dataset=train_cfg["dataset"], data_dir=cfg.data_dir or train_cfg.get("data_dir"),
                              eps=cfg.eps if cfg.eps is not None else train_cfg.get("eps"), model=train_cfg["model"]).resolved()
    info = dataset_info(cfg.dataset)
    model = load_trained_model(run_dir, device=cfg.device)
    x, y, idx = eval_set(cfg.dataset, cfg.data_dir, cfg.eval_subset, cfg.seed)
    if cfg.corruption_dir:
        source = PublishedCorruptions(cfg.corruption_dir, cfg.dataset, idx)
    else:
        source = GeneratedCorruptions(x, list(cfg.corruptions) if cfg.corruptions else C.available_corruptions(info.channels), cfg.seed)
    t0 = time.perf_counter()
    ev = evaluate_model(model, x, y, cfg, source, num_classes=info.num_classes)
    ev.update(method=train_cfg.get("method"), target=train_cfg.get("target"), run_dir=run_dir,
              eval_seconds=time.perf_counter() - t0, eval_config=dataclasses.asdict(cfg))
    path = os.path.join(run_dir, "eval.json")
    _write_json(path, ev)
    return path
