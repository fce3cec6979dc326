"""The JaFR study: train several methods over several seeds (and λ / cutoff values), evaluate each, report.

:func:`run_study` plans one run per (method, λ, cutoff, seed) of a :class:`StudyConfig` (methods without
JaFR once per seed), trains each through :mod:`jafr_kernels.train` and evaluates it with
:func:`evaluate_model`, writing ``runs/<name>/<arm>/seed<k>/eval.json`` plus the study-level files read by
:func:`jafr_kernels.eval.report.build_report`. Finished runs are reused: a run whose ``eval.json`` was made
from the same training configuration and evaluation settings is neither retrained nor re-evaluated, so
adding a seed or a λ value to a finished study trains only what is new.

Every run of a study is evaluated on the same test images, with the same corruption draws and attack
starts (``eval_seed``); the seeds vary only training (initialisation, data order, augmentation, attacks).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn

from jafr_kernels.eval import corruptions as C
from jafr_kernels.eval.adversarial import autoattack_accuracy, clean_accuracy, eps_key, evaluate_adversarial
from jafr_kernels.eval.frequency import default_heat_map_eps, fourier_heat_map, jacobian_spectrum, spectrum_summary
from jafr_kernels.train.loop import RESULT_NEUTRAL_FIELDS, NonFiniteLossError, TrainConfig
from jafr_kernels.train.methods import DEFAULT_STUDY, RunSpec, parse

DEFAULT_METHODS = DEFAULT_STUDY
EPS_SCALES = (0.25, 0.5, 1.0, 2.0)  # PGD radii as multiples of the training eps: {2, 4, 8, 16}/255 on CIFAR
# The radius of the adversarial claims, as a multiple of the training eps: at the training eps (0.1 on
# Fashion-MNIST) every model without adversarial training is at 0 % PGD accuracy and no difference can show;
# at a quarter of it (0.025) the standard model keeps a measurable accuracy (docs/study.md, "Budgets").
CLAIM_EPS_SCALE = 0.25
# The study's training template (one place; StudyConfig.train and `jafr study`'s defaults): peak LR 0.2 (on
# Fashion-MNIST the small CNN gains 1-2 points over 0.05 in 2-3 epochs; docs/study.md; the paper's value on
# the other datasets), JaFR's parameter gradient by finite differences (about 2x a standard step; the double
# backward about 3.5x), the term at every jafr_every-th step.
STUDY_TRAIN = dict(lr=0.2, jacobian_mode="finite_difference", jafr_every=1, channels_last=True)
ALL = "all"  # eval_subset / adv_subset: every image


@dataclass(frozen=True)
class Budget:
    """How big a study is: seeds, training epochs and evaluation sizes (``None`` images: all of them)."""

    seeds: int
    epochs: int
    eval_subset: Optional[int]
    adv_subset: Optional[int]
    heat_map_images: int
    pgd_steps: int
    pgd_restarts: int

    def describe(self) -> str:
        evaluated = "the full test set" if self.eval_subset is None else f"{self.eval_subset} test images"
        attacked = "all of them" if self.adv_subset is None else f"the first {self.adv_subset}"
        return (f"{self.seeds} seed(s), {self.epochs} epoch(s) per run, {evaluated} (clean, corruptions, Jacobian),"
                f" PGD-{self.pgd_steps} x {self.pgd_restarts} on {attacked}, Fourier heat map on {self.heat_map_images}")


# Device defaults, sized from measured per-run CPU times (docs/study.md, "Budgets"): the CPU default keeps
# `make study` (setup included) within 15 minutes on 2 idle cores; the CUDA default takes about 4 minutes
# on one H100/H200.
BUDGETS = {
    "cpu": Budget(seeds=4, epochs=2, eval_subset=1000, adv_subset=500, heat_map_images=50, pgd_steps=10, pgd_restarts=1),
    "cuda": Budget(seeds=4, epochs=3, eval_subset=None, adv_subset=1000, heat_map_images=500, pgd_steps=10, pgd_restarts=1),
}
# --full: the paper's setting (PreAct ResNet-18, 30 epochs, full test set, PGD-50 x 10, 1000 heat-map images).
FULL = dict(epochs=30, eval_subset=None, adv_subset=None, heat_map_images=1000, pgd_steps=50, pgd_restarts=10)


def resolve_device(device: str) -> str:
    """The device a study runs on: ``"auto"`` is the GPU when one is visible, else the CPU (``train.device``)."""
    from jafr_kernels.train.device import choose_device

    return str(choose_device(str(device)))


@dataclass
class StudyConfig:
    """Settings of a study.

    ``train`` is the template of every run's :class:`TrainConfig` (model, batch size, lr and schedule, eps,
    formulation, jacobian mode, bf16, dtype, fd_h, freeze_bn, augmentation, GradAlign weight, ...); the study
    sets per run its method, target, λ, cutoff, seed and folder, and resets the fields a method does not use
    (:attr:`jafr_kernels.train.methods.Method.unused_fields`). ``train.model=None`` picks small_cnn on
    Fashion-MNIST and preact_resnet18 otherwise; ``train.device="auto"`` picks CUDA when present.

    The size fields (``seeds``, ``epochs``, ``eval_subset``, ``adv_subset``, ``heat_map_images``,
    ``pgd_steps``, ``pgd_restarts``) default to ``None``: the device's :data:`BUDGETS` entry (``epochs``
    replaces ``train.epochs``). ``seeds`` is a count (seeds ``train.seed``, ``train.seed + 1``, ...) or a list;
    ``eval_subset`` / ``adv_subset`` take ``"all"``. ``lams`` / ``cutoffs``: lists of JaFR weights and cutoffs
    (default: ``train.lam`` or the formulation's λ, and ``train.cutoff``); every JaFR method runs at each.
    ``full=True`` is the paper's setting (:data:`FULL`, PreAct ResNet-18).
    """

    name: str = "study"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(model=None, device="auto", **STUDY_TRAIN))
    methods: tuple = DEFAULT_METHODS
    seeds: Union[int, tuple, None] = None
    lams: Optional[tuple] = None
    cutoffs: Optional[tuple] = None
    epochs: Optional[int] = None
    eval_subset: Union[int, str, None] = None
    adv_subset: Union[int, str, None] = None
    heat_map_images: Optional[int] = None
    pgd_steps: Optional[int] = None
    pgd_restarts: Optional[int] = None
    cw: bool = True
    heat_map_eps: Optional[float] = None  # default: Yin et al.'s 4.0 at 32x32, scaled by image size
    severities: tuple = (1, 2, 3, 4, 5)
    corruptions: Optional[tuple] = None  # default: every generated one that applies to the channel count
    corruption_dir: Optional[str] = None  # published CIFAR-10-C / -100-C / Tiny-ImageNet-C files, if any
    autoattack: bool = False
    eval_seed: int = 0  # evaluation subset, corruption draws, attack starts, heat-map signs
    out_root: str = "runs"
    retrain: bool = False
    progress: bool = True
    full: bool = False
    workers: Optional[int] = None  # runs at a time; None: one per CPU core on a CPU (one thread each), 1 on a GPU
    # filled by resolved()
    budget: Optional[Budget] = None
    budget_origin: str = ""
    seed_list: tuple = ()
    specs: tuple = ()

    def worker_count(self, runs: int) -> int:
        """How many runs train at once: ``workers``, or on a CPU one per core (a small model trains about 1.6x
        faster on two threads than on one, but two one-thread runs go twice as fast as one); 1 on a GPU."""
        if self.workers is not None:
            return max(1, min(self.workers, runs))
        if not str(self.train.device).startswith("cpu"):
            return 1
        return max(1, min(os.cpu_count() or 1, runs))

    def resolved(self) -> "StudyConfig":
        """A copy with every default filled in: device, budget, model, eps, λ and cutoff lists, seeds, specs."""
        from jafr_kernels.train import dataset_info

        cfg = dataclasses.replace(self)
        device = resolve_device(cfg.train.device)
        kind = "cuda" if device.startswith("cuda") else "cpu"
        base = dataclasses.asdict(BUDGETS[kind])
        origin = f"{kind.upper()} default"
        if cfg.full:
            base.update(FULL)
            origin = f"--full (the paper's setting) on {kind.upper()}"
        given = {}
        for key in ("epochs", "eval_subset", "adv_subset", "heat_map_images", "pgd_steps", "pgd_restarts"):
            value = getattr(cfg, key)
            if value is not None:
                given[key] = None if value == ALL else int(value)
        if cfg.seeds is not None:
            given["seeds"] = cfg.seeds if isinstance(cfg.seeds, int) else len(tuple(cfg.seeds))
        base.update(given)
        cfg.budget = Budget(**base)
        cfg.budget_origin = origin + (f"; given: {', '.join(sorted(given))}" if given else "")

        info = dataset_info(cfg.train.dataset)
        model = cfg.train.model or ("small_cnn" if info.name == "fashion_mnist" and not cfg.full else "preact_resnet18")
        cfg.train = dataclasses.replace(cfg.train, device=device, model=model, epochs=cfg.budget.epochs,
                                        progress=cfg.progress).resolved()
        first = cfg.train.seed
        if cfg.seeds is None or isinstance(cfg.seeds, int):
            cfg.seed_list = tuple(range(first, first + cfg.budget.seeds))
        else:
            cfg.seed_list = tuple(int(s) for s in cfg.seeds)
        if not cfg.seed_list or len(set(cfg.seed_list)) != len(cfg.seed_list):
            raise ValueError(f"seeds must be at least one distinct integer, got {cfg.seeds!r}")
        cfg.lams = tuple(float(v) for v in (cfg.lams or (cfg.train.lam,)))
        cfg.cutoffs = tuple(float(v) for v in (cfg.cutoffs or (cfg.train.cutoff,)))
        if any(v < 0 for v in cfg.lams) or any(not 0 < c <= 2**0.5 for c in cfg.cutoffs):
            raise ValueError(f"λ values must be >= 0 and cutoffs in (0, sqrt(2)]; got {cfg.lams}, {cfg.cutoffs}")
        if cfg.train.formulation == "official" and len(cfg.cutoffs) > 1:
            raise ValueError("the official formulation has no cutoff: give one --cutoff (it sets only the analyses' band)")
        cfg.specs = tuple(s if isinstance(s, RunSpec) else parse(s) for s in cfg.methods)
        labels = [s.label for s in cfg.specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"methods give duplicate run names: {labels}")
        cfg.methods = tuple(str(s) for s in cfg.specs)
        cfg.heat_map_eps = default_heat_map_eps(info.image_size, info.image_size) if cfg.heat_map_eps is None else cfg.heat_map_eps
        cfg.severities = tuple(cfg.severities)
        if cfg.workers is not None and (isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1):
            raise ValueError(f"workers must be an integer >= 1 (runs trained at once), got {cfg.workers!r}")
        return cfg

    @property
    def eps(self) -> float:
        return self.train.eps

    @property
    def eps_list(self) -> list[float]:
        return [s * self.train.eps for s in EPS_SCALES]

    @property
    def claim_eps(self) -> float:
        """The PGD radius of the adversarial claims (:data:`CLAIM_EPS_SCALE` times the training eps)."""
        return CLAIM_EPS_SCALE * self.train.eps

    @property
    def primary_lam(self) -> float:
        """The λ of the headline and verdict tables: the formulation's default if listed, else the first."""
        from jafr_kernels.train.methods import default_lambda

        default = default_lambda(self.train.formulation)
        return default if default in self.lams else self.lams[0]

    @property
    def primary_cutoff(self) -> float:
        """The cutoff of the headline and verdict tables (and of every analysis): 0.25 if listed, else the first."""
        default = TrainConfig.cutoff
        return default if default in self.cutoffs else self.cutoffs[0]


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One training run of a study: a method spec at one seed (and, for JaFR methods, one λ and cutoff)."""

    spec: RunSpec
    seed: int
    lam: Optional[float] = None
    cutoff: Optional[float] = None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def arm(self) -> str:
        """The run without its seed: ``"standard"``, ``"jafr_low_lam0.1_cut0.25"`` (also its parent folder)."""
        return self.label if self.lam is None else f"{self.label}_lam{self.lam:g}_cut{self.cutoff:g}"

    @property
    def folder(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    def record(self) -> dict:
        return {"folder": self.folder, "arm": self.arm, "label": self.label, "method": self.spec.method,
                "target": self.spec.target if self.spec.info.jafr else None, "lam": self.lam, "cutoff": self.cutoff,
                "seed": self.seed}


def plan_runs(cfg: StudyConfig) -> list[Run]:
    """Every run of a resolved study, seed by seed (so an interrupted study holds whole seeds)."""
    runs = []
    for seed in cfg.seed_list:
        for spec in cfg.specs:
            if spec.info.jafr:
                runs += [Run(spec, seed, lam, cut) for lam in cfg.lams for cut in cfg.cutoffs]
            else:
                runs.append(Run(spec, seed))
    return runs


def run_train_config(cfg: StudyConfig, run: Run, root: str) -> TrainConfig:
    """The resolved TrainConfig of ``run``: the study's template with the run's method, target, λ, cutoff and
    seed, and the fields the method does not use reset to TrainConfig's defaults."""
    info = run.spec.info
    tc = dataclasses.replace(cfg.train, method=info.name, target=run.spec.target, seed=run.seed,
                             lam=run.lam if run.lam is not None else cfg.train.lam,
                             cutoff=run.cutoff if run.cutoff is not None else cfg.train.cutoff,
                             out_dir=os.path.join(root, run.folder), progress=cfg.progress)
    defaults = TrainConfig()
    tc = dataclasses.replace(tc, **{f: getattr(defaults, f) for f in info.unused_fields})
    return tc.resolved()


def _result_fields(tc) -> dict:
    """The fields of a (resolved) training config that decide its result; a field missing from a saved config
    (one written before the field existed) counts as TrainConfig's default."""
    d = tc if isinstance(tc, dict) else dataclasses.asdict(tc)
    return {k: d.get(k, default) for k, default in _TRAIN_DEFAULTS.items() if k not in RESULT_NEUTRAL_FIELDS}


_TRAIN_DEFAULTS = dataclasses.asdict(TrainConfig())


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
    """Corruptions generated on the fly by :func:`jafr_kernels.eval.corruptions.generate` (seeded per name and
    severity), kept as 8-bit images (the published files' format) so every run of a study reuses them."""

    source = "generated in torch with the CIFAR-10-C severity parameters (stored as 8-bit images)"

    def __init__(self, x: Tensor, names, seed: int, cache_bytes: float = 4e9):
        self.x, self.names, self.seed = x, list(names), seed
        self.cache: dict = {}
        self.cache_bytes = cache_bytes

    def prepare(self, severities) -> None:
        """Generate (and keep) every corruption at ``severities`` now."""
        for name in self.names:
            for severity in severities:
                self.load(name, severity)

    def load(self, name: str, severity: int) -> Tensor:
        key = (name, severity)
        if key in self.cache:
            return self.cache[key].to(self.x.dtype) / 255
        img = (C.generate(self.x, name, severity, self.seed) * 255).round().to(torch.uint8)
        if (len(self.cache) + 1) * img.numel() <= self.cache_bytes:
            self.cache[key] = img
        return img.to(self.x.dtype) / 255


class PublishedCorruptions:
    """The published -C files of a dataset, restricted to the evaluation subset's test-set indices."""

    def __init__(self, root: str, indices: Tensor):
        from jafr_kernels.eval.corruption_data import open_published

        self.data = open_published(root)
        self.names = list(self.data.names)
        self.indices = indices
        self.source = f"published files read from {root}"

    def load(self, name: str, severity: int) -> Tensor:
        return self.data.load(name, severity, self.indices)[0]


def corruption_source(cfg: StudyConfig, x: Tensor, idx: Tensor, channels: int):
    """The study's corruptions: the published files when ``corruption_dir`` is set, else generated ones."""
    names = list(cfg.corruptions) if cfg.corruptions else C.available_corruptions(channels)
    if cfg.corruption_dir:
        source = PublishedCorruptions(cfg.corruption_dir, idx)
        if cfg.corruptions:
            source.names = [n for n in source.names if n in names]
        return source
    return GeneratedCorruptions(x, names, cfg.eval_seed)


def corruption_character(cfg: StudyConfig, x: Tensor, source) -> dict:
    """Frequency character of the study's corruptions (:func:`jafr_kernels.eval.corruptions.frequency_character`),
    measured on what the models are evaluated on: every evaluation image ``x`` and ``source.load``'s corrupted
    images (the same draws, stored as 8-bit images, that :func:`evaluate_model` scores)."""
    return C.frequency_character(x, source.names, cutoff=cfg.primary_cutoff, severities=cfg.severities,
                                 corrupted=lambda name, sev: source.load(name, sev).to(x.device))


# --------------------------------------------------------------------------- one model
def evaluation_key(cfg: StudyConfig, idx: Tensor, source) -> dict:
    """Everything an evaluation's numbers depend on besides the model (a finished evaluation is reused only
    when its key matches)."""
    b = cfg.budget
    return {
        "dataset": cfg.train.dataset, "images": hashlib.sha256(idx.numpy().tobytes()).hexdigest()[:16], "n": int(idx.numel()),
        "eval_seed": cfg.eval_seed, "corruptions": list(source.names), "corruption_source": source.source,
        "severities": list(cfg.severities), "eps": [eps_key(e) for e in cfg.eps_list],
        "adv_n": None if b.adv_subset is None else min(b.adv_subset, int(idx.numel())),
        "pgd_steps": b.pgd_steps, "pgd_restarts": b.pgd_restarts, "cw": cfg.cw,
        "heat_map_n": min(b.heat_map_images, int(idx.numel())), "heat_map_eps": cfg.heat_map_eps,
        "cutoff": cfg.primary_cutoff, "autoattack": cfg.autoattack,
    }


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

    ``cfg`` is a resolved :class:`StudyConfig`. Returns a JSON-ready dict: ``{"clean", "corruptions": {name:
    {"1".."5", "mean"}}, "adversarial": {...} (see :func:`evaluate_adversarial`), "jacobian": {...},
    "heat_map": {...}, "seconds": {...}}``.
    """
    from tqdm.auto import tqdm

    device, b = cfg.train.device, cfg.budget
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format).eval()
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
    n_adv = x.shape[0] if b.adv_subset is None else min(b.adv_subset, x.shape[0])
    xa, ya = x[:n_adv], y[:n_adv]
    out["adversarial"] = evaluate_adversarial(
        model, xa, ya, cfg.eps_list, steps=b.pgd_steps, restarts=b.pgd_restarts,
        losses=("ce", "cw") if cfg.cw else ("ce",), cw_eps=[cfg.eps], seed=cfg.eval_seed, device=device,
        progress=cfg.progress,
    )
    if cfg.autoattack:
        out["autoattack"] = autoattack_accuracy(model, xa, ya, cfg.eps, n_classes=num_classes, seed=cfg.eval_seed, device=device)
    seconds["adversarial"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out["jacobian"] = jacobian_spectrum(model, x, y, cutoff=cfg.primary_cutoff, cutoffs=cfg.cutoffs, device=device)
    n_heat = min(b.heat_map_images, x.shape[0])
    out["heat_map"] = fourier_heat_map(
        model, x[:n_heat], y[:n_heat], cfg.heat_map_eps, seed=cfg.eval_seed, bases_per_batch=16, device=device,
        progress=cfg.progress,
    )
    seconds["frequency"] = time.perf_counter() - t0
    out["seconds"] = seconds
    return out


# --------------------------------------------------------------------------- the study
def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()} CPU ({threads} thread{'s' if threads != 1 else ''})"


def _study_record(cfg: StudyConfig, x: Tensor, runs: list[Run], status: dict) -> dict:
    b = cfg.budget
    rec = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("train", "specs", "budget")}
    rec.update(
        train=dataclasses.asdict(cfg.train), budget=dataclasses.asdict(b), budget_text=b.describe(),
        seeds=list(cfg.seed_list), lams=list(cfg.lams), cutoffs=list(cfg.cutoffs), primary_lam=cfg.primary_lam,
        primary_cutoff=cfg.primary_cutoff, labels=[s.label for s in cfg.specs], methods=list(cfg.methods),
        dataset=cfg.train.dataset, model=cfg.train.model, epochs=cfg.train.epochs, formulation=cfg.train.formulation,
        eps=cfg.eps, eps_key=eps_key(cfg.eps), claim_eps_key=eps_key(cfg.claim_eps), eval_n=int(x.shape[0]),
        eval_full=b.eval_subset is None,
        adversarial={"steps": b.pgd_steps, "restarts": b.pgd_restarts, "eps_keys": [eps_key(e) for e in cfg.eps_list],
                     "n": int(x.shape[0]) if b.adv_subset is None else min(b.adv_subset, int(x.shape[0]))},
        heat_map_n=min(b.heat_map_images, int(x.shape[0])), device=cfg.train.device,
        device_name=_device_name(cfg.train.device), torch_version=torch.__version__,
        runs=[dict(r.record(), **status.get(r.folder, {"status": "pending"})) for r in runs],
    )
    return rec


def _reusable_eval(path: str, tc: dict, key: dict) -> Optional[dict]:
    ev = _read_json(path)
    if ev is None or ev.get("evaluation_key") != key or _result_fields(ev.get("train_config", {})) != _result_fields(tc):
        return None
    return ev


def _finished_model(run_dir: str, tc: TrainConfig):
    """The trained model of ``run_dir`` if its config matches ``tc`` and its checkpoint is at the last step."""
    from jafr_kernels.train import load_latest, load_trained_model

    saved = _read_json(os.path.join(run_dir, "config.json"))
    if saved is None or _result_fields(saved) != _result_fields(tc):
        return None
    found = load_latest(run_dir)
    if found is None or int(found[0]["step"]) != int(saved.get("total_steps", -1)):
        return None
    return load_trained_model(run_dir, device=tc.device)


def _train(run_dir: str, tc: TrainConfig, retrain: bool, train_set):
    """Train (or continue an interrupted run with the same settings); a run with other settings starts afresh."""
    from jafr_kernels.train import train_model

    saved = _read_json(os.path.join(run_dir, "config.json"))
    same = saved is not None and _result_fields(saved) == _result_fields(tc)
    started = same and any(os.path.exists(os.path.join(run_dir, f)) for f in ("last.pt", "prev.pt"))
    if os.path.isdir(run_dir) and (retrain or not started):
        if saved is not None and not same:
            changed = sorted(k for k, v in _result_fields(tc).items() if saved.get(k) != v)
            print(f"[study]   settings changed ({', '.join(changed)}): training afresh", flush=True)
        shutil.rmtree(run_dir)
    return train_model(dataclasses.replace(tc, resume=started and not retrain), train_set=train_set).model


@dataclass
class _RunContext:
    """What every run of a study shares: the resolved config, its folder, the evaluation images, corruptions
    and key, and the training set (loaded once, when a run first trains, or before worker processes fork)."""

    cfg: StudyConfig
    root: str
    key: dict
    x: Tensor
    y: Tensor
    source: object
    num_classes: int
    total: int
    train_set: object = None

    def training_set(self):
        if self.train_set is None:
            from jafr_kernels.train import load_dataset

            self.train_set = load_dataset(self.cfg.train.dataset, True, self.cfg.train.data_dir)
        return self.train_set


def _previous_outcome(cfg: StudyConfig, run: Run, root: str, key: dict) -> Optional[dict]:
    """The status of a run that needs no work (evaluated with the same settings, or diverged before with
    them), else ``None``."""
    if cfg.retrain:
        return None
    run_dir = os.path.join(root, run.folder)
    tc_dict = dataclasses.asdict(run_train_config(cfg, run, root))
    if _reusable_eval(os.path.join(run_dir, "eval.json"), tc_dict, key) is not None:
        return {"status": "ok", "reused": True}
    failed = _read_json(os.path.join(run_dir, "failed.json"))
    if failed is not None and _result_fields(failed.get("train_config", {})) == _result_fields(tc_dict):
        print(f"[study] {run.folder}: diverged before with these settings ({failed['error']}); not retried"
              " (--retrain retries)", flush=True)
        return {"status": "failed", "error": failed["error"], "reused": True}
    return None


def _train_and_evaluate(ctx: _RunContext, i: int, run: Run) -> tuple[dict, dict]:
    """Train ``run`` (unless its training finished) and evaluate it; writes its ``eval.json`` (or
    ``failed.json`` when training diverges). Returns (status, time spent)."""
    cfg = ctx.cfg
    run_dir = os.path.join(ctx.root, run.folder)
    tc = run_train_config(cfg, run, ctx.root)
    tc_dict = dataclasses.asdict(tc)
    eval_path, failed_path = os.path.join(run_dir, "eval.json"), os.path.join(run_dir, "failed.json")
    tag = f"[study] {i}/{ctx.total} {run.folder}"
    t0, c0 = time.perf_counter(), time.process_time()
    model = None if cfg.retrain else _finished_model(run_dir, tc)
    trained = model is None
    if trained:
        print(f"{tag}: training", flush=True)
        try:
            model = _train(run_dir, tc, cfg.retrain, ctx.training_set())
        except NonFiniteLossError as exc:
            print(f"{tag}: training diverged: {exc}", flush=True)
            os.makedirs(run_dir, exist_ok=True)
            _write_json(failed_path, {"train_config": tc_dict, "error": str(exc)})
            return {"status": "failed", "error": str(exc)}, {"failed": 1}
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    ev = evaluate_model(model, ctx.x, ctx.y, cfg, ctx.source, num_classes=ctx.num_classes)
    eval_s, eval_cpu = time.perf_counter() - t0, time.process_time() - c0
    ev.update(run.record(), evaluation_key=ctx.key, train_config=tc_dict, trained_now=trained,
              train_seconds=train_s if trained else None, train_cpu_seconds=train_cpu if trained else None,
              eval_seconds=eval_s, eval_cpu_seconds=eval_cpu)
    if os.path.exists(failed_path):
        os.remove(failed_path)
    _write_json(eval_path, ev)
    adv = ev["adversarial"]
    print(f"{tag}: clean {100 * ev['clean']:.1f}%, PGD at {eps_key(cfg.eps)} {100 * adv['pgd_ce'][eps_key(cfg.eps)]:.1f}%,"
          f" J low-freq ratio {ev['jacobian']['low_freq_ratio']:.3f};"
          + (f" train {train_s:.0f} s," if trained else " (trained before),") + f" eval {eval_s:.0f} s", flush=True)
    spent = {"train_seconds": train_s, "eval_seconds": eval_s, "evaluated": 1, "trained": int(trained)}
    return {"status": "ok", "reused": False}, spent


def _relative_cost(method) -> int:
    """A run's training cost in standard runs, roughly: an attack doubles a step, a gradient term doubles it."""
    return (2 if method.attack else 1) * (2 if method.jafr or method.gradalign else 1)


_CONTEXT: Optional[_RunContext] = None  # set in the parent before worker processes fork from it


def _worker_run(job: tuple[int, Run]) -> tuple[str, dict, dict]:
    torch.set_num_threads(1)
    return (job[1].folder, *_train_and_evaluate(_CONTEXT, *job))


def _run_all(ctx: _RunContext, todo: list, workers: int):
    """Yield (folder, status, time spent) per run: in this process, or in ``workers`` forked processes of one
    thread each (the evaluation images, corruptions and training set are shared with them by the fork)."""
    if workers <= 1:
        for i, run in todo:
            yield (run.folder, *_train_and_evaluate(ctx, i, run))
        return
    # seed by seed, the costliest runs first, so that the last runs to finish are short ones
    todo = sorted(todo, key=lambda job: (ctx.cfg.seed_list.index(job[1].seed), -_relative_cost(job[1].spec.info)))
    global _CONTEXT
    ctx = dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, progress=False))  # one line per run instead
    ctx.training_set()  # loaded once here, not once per worker
    if hasattr(ctx.source, "prepare"):
        ctx.source.prepare(ctx.cfg.severities)  # generate once here, not once per worker
    _CONTEXT = ctx
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap_unordered(_worker_run, todo)
    finally:
        _CONTEXT = None


def run_study(cfg: StudyConfig) -> str:
    """Train and evaluate every run of ``cfg`` that is not finished yet, then write the report; returns its path.

    A run diverging (a non-finite loss) is recorded as failed and the study goes on; the report lists it.
    """
    from tqdm.auto import tqdm

    from jafr_kernels.eval.report import build_report
    from jafr_kernels.train import dataset_info

    start, cpu_start = time.perf_counter(), time.process_time()
    cfg = cfg.resolved()
    info = dataset_info(cfg.train.dataset)
    root = os.path.join(cfg.out_root, cfg.name)
    os.makedirs(root, exist_ok=True)
    runs = plan_runs(cfg)
    jafr_arms = sum(1 for s in cfg.specs if s.info.jafr)
    print(f"[study] {cfg.name}: {info.name}, {cfg.train.model}, on {_device_name(cfg.train.device)}", flush=True)
    print(f"[study] budget ({cfg.budget_origin}): {cfg.budget.describe()}", flush=True)
    print(f"[study] {len(cfg.specs)} method(s) ({jafr_arms} with JaFR at {len(cfg.lams)} λ x {len(cfg.cutoffs)} cutoff(s)),"
          f" seeds {list(cfg.seed_list)}: {len(runs)} runs", flush=True)

    x, y, idx = eval_set(cfg.train.dataset, cfg.train.data_dir, cfg.budget.eval_subset, cfg.eval_seed)
    x, y = x.to(cfg.train.device), y.to(cfg.train.device)
    source = corruption_source(cfg, x, idx, info.channels)
    key = evaluation_key(cfg, idx, source)
    corr_path = os.path.join(root, "corruptions.json")
    saved = _read_json(corr_path)
    if saved is None or saved.get("evaluation_key") != key:  # measured once per evaluation setting
        character = corruption_character(cfg, x, source)
        _write_json(corr_path, {
            "source": source.source, "cutoff": cfg.primary_cutoff, "threshold": C.LOW_FREQ_THRESHOLD,
            "n": int(x.shape[0]), "character": character, "groups": C.frequency_groups(character),
            "not_generated": C.NOT_GENERATED if isinstance(source, GeneratedCorruptions) else {}, "evaluation_key": key,
        })
    _write_json(os.path.join(root, "images.json"), spectrum_summary(x.cpu(), cutoff=cfg.primary_cutoff))
    status: dict = {}
    _write_json(os.path.join(root, "study.json"), _study_record(cfg, x, runs, status))

    timing = {"train_seconds": 0.0, "eval_seconds": 0.0, "trained": 0, "evaluated": 0, "reused": 0, "failed": 0}
    todo = []
    for i, run in enumerate(runs, 1):
        done = _previous_outcome(cfg, run, root, key)
        if done is None:
            todo.append((i, run))
            continue
        status[run.folder] = done
        timing["failed" if done["status"] == "failed" else "reused"] += 1
    workers = cfg.worker_count(len(todo))
    if todo:
        print(f"[study] {len(todo)} run(s) to train or evaluate"
              + (f", {workers} at a time (one CPU thread each)" if workers > 1 else ""), flush=True)
    context = _RunContext(cfg, root, key, x, y, source, info.num_classes, len(runs))
    bar = tqdm(total=len(todo), desc="study", unit="run", disable=not cfg.progress, dynamic_ncols=True)
    for folder, outcome, spent in _run_all(context, todo, workers):
        status[folder] = outcome
        for k, v in spent.items():
            timing[k] += v
        bar.update()
    bar.close()

    record = _study_record(cfg, x, runs, status)
    record.update(timing, total_seconds=time.perf_counter() - start, total_cpu_seconds=time.process_time() - cpu_start,
                  runs_at_a_time=workers)
    _write_json(os.path.join(root, "study.json"), record)
    print(f"[study] trained {timing['trained']}, evaluated {timing['evaluated']}, reused {timing['reused']},"
          f" failed {timing['failed']}; {record['total_seconds']:.0f} s", flush=True)
    return build_report(root)


def evaluate_run(run_dir: str, cfg: StudyConfig) -> str:
    """Evaluate a saved training run (its ``config.json`` and newest checkpoint); writes ``run_dir/eval.json``.

    The run's dataset, model and eps are taken from its config; ``cfg`` supplies the evaluation settings.
    """
    from jafr_kernels.train import dataset_info, load_trained_model

    saved = _read_json(os.path.join(run_dir, "config.json"))
    if saved is None:
        raise FileNotFoundError(f"no readable config.json in {run_dir}: not a training run folder")
    train = dataclasses.replace(cfg.train, dataset=saved["dataset"], data_dir=cfg.train.data_dir or saved.get("data_dir"),
                                eps=cfg.train.eps if cfg.train.eps is not None else saved.get("eps"), model=saved["model"])
    cfg = dataclasses.replace(cfg, train=train, seeds=1).resolved()
    info = dataset_info(cfg.train.dataset)
    model = load_trained_model(run_dir, device=cfg.train.device)
    x, y, idx = eval_set(cfg.train.dataset, cfg.train.data_dir, cfg.budget.eval_subset, cfg.eval_seed)
    x, y = x.to(cfg.train.device), y.to(cfg.train.device)
    source = corruption_source(cfg, x, idx, info.channels)
    t0 = time.perf_counter()
    ev = evaluate_model(model, x, y, cfg, source, num_classes=info.num_classes)
    ev.update(method=saved.get("method"), target=saved.get("target"), run_dir=run_dir, train_config=saved,
              evaluation_key=evaluation_key(cfg, idx, source), eval_seconds=time.perf_counter() - t0)
    path = os.path.join(run_dir, "eval.json")
    _write_json(path, ev)
    return path
