"""The training loop: ``TrainConfig`` -> ``train_model`` -> ``TrainResult``.

A run directory holds ``config.json``, ``metrics.jsonl`` (one record per step, one per epoch) and the
verified checkpoints ``last.pt`` / ``prev.pt`` (model, optimizer, LR schedule, RNG state, step). The data
order of epoch ``e`` is a permutation drawn from ``seed + e`` (``DistributedSampler``) and every other random
draw of step ``s`` comes from a generator seeded by ``(seed, s, rank)``, so ``resume=True`` continues
bit-exactly on CPU, skipping the batches of the interrupted epoch that were already used.

Host reads: a step's metrics (loss, CE, penalty, J's low-frequency ratio, accuracy) stay on the device and
are read back together every ``log_every`` steps, at every checkpoint, at epoch ends and at the last step
(the *logging steps*); between two logging steps the loop reads no tensor value. A non-finite loss, CE or
penalty (a NaN/Inf Jacobian gives a NaN penalty) is therefore found at the next logging step, which always
comes before the next checkpoint: training stops with :class:`NonFiniteLossError` naming the first bad step,
and nothing computed after the last good checkpoint is saved.

Multi-process: run under ``torchrun --nproc_per_node=N``. Each process takes ``cuda:LOCAL_RANK`` with NCCL on
GPUs, or the CPU with gloo (see :mod:`jafr_kernels.train.device`). ``batch_size`` is the global batch; each
process takes ``batch_size / N`` samples of it, the objective is per process (see
:mod:`jafr_kernels.train.objective`) and DDP averages the gradients in the one ``backward()`` of each step.
Rank 0 writes the run directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Subset

from jafr_kernels import attacks
from jafr_kernels.train import checkpoint as ckpt
from jafr_kernels.train.data import augment, dataset_info, get_batch, load_dataset, TensorImageDataset
from jafr_kernels.train.device import choose_device, init_distributed, world_from_env
from jafr_kernels.train.methods import FORMULATIONS, METHOD_NAMES, TARGETS, default_lambda, get_method
from jafr_kernels.train.models import MODELS, build_model
from jafr_kernels.train.objective import (JACOBIAN_MODES, ce_objective, frozen_bn_stats, gradalign_objective,
                                          jafr_objective)

RUN_FILES = ("config.json", "metrics.jsonl", ckpt.LAST, ckpt.PREV, "eval.json")  # what --overwrite removes


LR_SCHEDULES = ("cyclic", "constant")
DTYPES = ("float32", "float64")
# The allowed values of every TrainConfig field that has a fixed set (checked here, offered by the CLIs).
CHOICES = {"method": METHOD_NAMES, "model": MODELS, "jacobian_mode": JACOBIAN_MODES, "target": TARGETS,
           "formulation": FORMULATIONS, "lr_schedule": LR_SCHEDULES, "dtype": DTYPES}


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/Inf loss, CE or penalty); the one-line message names the first bad step, its
    values, the last good checkpoint and what to change."""


class DoubleBackwardError(RuntimeError):
    """The model cannot be differentiated twice; the message suggests jacobian_mode='finite_difference'."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved as ``config.json``).

    ``lam=None`` picks 0.1 for the ratio formulation and 0.001 (the paper's CIFAR value) for the official
    one; ``lr=None`` picks lr_max 0.05 on Fashion-MNIST and 0.2 otherwise; ``eps=None`` the dataset's
    default (0.1 Fashion-MNIST, 8/255 others). FGSM: zero init, step 1.25 eps. PGD: 10 steps of eps/4
    (2/255 at eps 8/255), zero init as in the authors' code. GradAlign: FGSM of step eps plus
    ``gradalign_lambda * (1 - cos)``. SGD (momentum 0.9, weight decay 5e-4), triangular LR peaking at 2/5
    of training but never before update ``warmup_min`` (when the run is long enough; see
    :class:`TriangularLR`). ``device="auto"``: the GPU when one is visible, else the CPU.
    Defaults follow measurements (``scripts/jacobian_modes.py``; README, "Cheaper JaFR steps"): finite
    differences with the term every 4th step move J's low-frequency ratio by 91% of what the exact
    double-backward term does, at about 1.3 standard steps per step instead of 2.8-3.5.
    ``jafr_every=k``: the JaFR term every k-th step, weighted ``k * lam`` (lazy regularisation);
    ``jafr_fraction=f``: J and the term on ``ceil(f * B)`` samples of each batch (sub-batch regularisation); see
    :func:`jafr_kernels.train.objective.jafr_objective`. ``channels_last``: model and batches in NHWC memory
    format; ``compile``: ``torch.compile`` the model (not with a double backward, which aot_autograd cannot
    compile: use ``jacobian_mode="finite_difference"``).
    ``log_every``: steps between host reads of the metrics. ``resume`` continues the run in ``out_dir``;
    ``overwrite`` replaces it; with neither, ``out_dir`` must be new or empty. ``init_from``: a run folder or
    checkpoint whose model weights start this run (fresh optimizer and schedule).
    """

    method: str = "jafr"
    dataset: str = "fashion_mnist"
    model: str = "small_cnn"
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 128
    lam: Optional[float] = None
    cutoff: float = 0.25
    target: str = "low"
    formulation: str = "ratio"
    jacobian_mode: str = "finite_difference"
    jafr_every: int = 4
    jafr_fraction: float = 1.0
    eps: Optional[float] = None
    seed: int = 0
    out_dir: str = "runs/train"
    data_dir: Optional[str] = None
    train_subset: Optional[int] = None
    device: str = "auto"
    lr: Optional[float] = None
    progress: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cyclic"
    warmup_min: int = 100
    gradalign_lambda: float = 0.2
    pgd_steps: int = 10
    fd_h: float = 0.01
    freeze_bn: bool = True
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    augment: bool = True
    dtype: str = "float32"
    ckpt_every: int = 100
    log_every: int = 20
    resume: bool = False
    overwrite: bool = False
    init_from: Optional[str] = None

    def resolved(self) -> "TrainConfig":
        """A copy with the ``None`` defaults filled in and every field checked (``ValueError`` naming it)."""
        info = dataset_info(self.dataset)
        cfg = dataclasses.replace(self, dataset=info.name)
        for name, allowed in CHOICES.items():
            _choice(name, getattr(cfg, name), allowed)
        for name in ("epochs", "batch_size", "ckpt_every", "log_every", "pgd_steps", "jafr_every"):
            _at_least(name, getattr(cfg, name), 1)
        for name in ("max_steps", "train_subset"):
            if getattr(cfg, name) is not None:
                _at_least(name, getattr(cfg, name), 1)
        _at_least("warmup_min", cfg.warmup_min, 0)
        if not 0 < cfg.cutoff <= math.sqrt(2):
            raise ValueError(f"cutoff must lie in (0, 1.414] (radius, 1 = Nyquist); got {cfg.cutoff}")
        for name in ("lam", "eps", "lr", "weight_decay", "gradalign_lambda"):
            value = getattr(cfg, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                hint = " (use --target high to push J to high frequencies)" if name == "lam" else ""
                raise ValueError(f"{name} must be a finite number >= 0; got {value}{hint}")
        if not (math.isfinite(cfg.fd_h) and cfg.fd_h > 0):
            raise ValueError(f"fd_h must be a finite number > 0; got {cfg.fd_h}")
        if not (isinstance(cfg.jafr_fraction, (int, float)) and 0 < cfg.jafr_fraction <= 1):
            raise ValueError(f"jafr_fraction must lie in (0, 1] (the share of each batch that gets the JaFR term); "
                             f"got {cfg.jafr_fraction}")
        method = get_method(cfg.method)
        if cfg.compile and (method.gradalign or (method.jafr and cfg.jacobian_mode == "double_backward")):
            raise ValueError(f"compile: a compiled model cannot be differentiated twice (aot_autograd has no double "
                             f"backward), which method {cfg.method!r} with jacobian_mode={cfg.jacobian_mode!r} needs; "
                             "use jacobian_mode='finite_difference' (--jacobian-mode finite_difference) or drop --compile")
        if not 0 <= cfg.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1); got {cfg.momentum}")
        if cfg.resume and cfg.overwrite:
            raise ValueError("resume and overwrite exclude each other: --resume continues the run, --overwrite replaces it")
        if cfg.init_from is not None and not os.path.exists(cfg.init_from):
            raise ValueError(f"init_from: {cfg.init_from} does not exist (give a run folder or a checkpoint file)")
        _, local_rank, world = world_from_env()
        choose_device(cfg.device, local_rank=local_rank, world_size=world)
        if cfg.lam is None:
            cfg.lam = default_lambda(cfg.formulation)
        if cfg.lr is None:
            cfg.lr = 0.05 if info.name == "fashion_mnist" else 0.2
        if cfg.eps is None:
            cfg.eps = info.eps
        if cfg.eps == 0 and get_method(cfg.method).attack is not None:
            raise ValueError(f"eps must be > 0 for method {cfg.method!r}")
        return cfg


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _at_least(name: str, value, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")


@dataclass
class TrainResult:
    """``model``: the trained module (unwrapped, eval mode); ``history``: the metrics.jsonl records;
    ``run_dir``: where config, metrics and checkpoints live; ``step``: optimizer steps done."""

    model: nn.Module
    history: list = field(default_factory=list)
    run_dir: str = ""
    step: int = 0


class TriangularLR:
    """LR factor for update ``k`` (0-based): linear 0 -> 1 over the warmup, then linear -> 0 at ``total``
    (the authors' cyclic schedule, evaluated after the update, so the first update has a positive LR).

    The warmup is ``peak * total`` updates (2/5 of training, as in the paper), but at least ``warmup_min``
    updates as long as that leaves half of the run for the decay: short runs do not jump to the peak LR
    within a few dozen steps.
    """

    def __init__(self, total: int, peak: float = 0.4, warmup_min: int = 0):
        self.total = int(total)
        self.warmup = max(peak * self.total, min(float(warmup_min), self.total / 2))

    def __call__(self, k: int) -> float:
        t, top = k + 1, self.warmup
        if t <= top:
            return t / top
        return max(0.0, (self.total - t) / (self.total - top))


class _ConstantLR:
    def __call__(self, k: int) -> float:
        return 1.0


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _subset(dataset: Dataset, n: Optional[int]) -> Dataset:
    if n is None or n >= len(dataset):
        return dataset
    if isinstance(dataset, TensorImageDataset):
        return TensorImageDataset(dataset.images[:n], dataset.labels[:n])
    return Subset(dataset, range(n))


def _read_history(path: str, max_step: int) -> list:
    records = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if rec.get("step", 0) <= max_step:
                    records.append(rec)
    return records


def _write_history(path: str, records: list) -> None:
    ckpt.write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def _epoch_record(history: list, epoch: int, step: int) -> dict:
    steps = [r for r in history if r.get("type") == "step" and r["epoch"] == epoch]
    rec = {"type": "epoch", "epoch": epoch, "step": step}
    for key in ("loss", "ce", "penalty", "lf_ratio", "acc"):
        vals = [r[key] for r in steps if r.get(key) is not None]
        rec[key] = sum(vals) / len(vals) if vals else None
    return rec


# Fields of TrainConfig that do not change a run's result: a run may be resumed with any of them changed, and a
# study reuses a finished run whatever their values (the one list for both).
RESULT_NEUTRAL_FIELDS = frozenset({"progress", "resume", "overwrite", "out_dir", "data_dir", "device", "ckpt_every",
                                   "log_every"})


def _check_same_run(saved: dict, current: dict, path: str) -> None:
    diff = {k: (saved[k], current.get(k)) for k in saved
            if k not in RESULT_NEUTRAL_FIELDS and saved[k] != current.get(k)}
    if not diff:
        return
    listed = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in sorted(diff.items()))
    if set(diff) <= {"epochs", "max_steps"}:
        run = os.path.dirname(path)
        raise ValueError(f"cannot resume {run} with a different length ({listed}): its LR schedule spans the steps it was "
                         f"started with. To train on from its weights, start a new run with --init-from {run} --out NEW_DIR "
                         "(fresh optimizer and schedule), or retrain it with --overwrite")
    raise ValueError(f"cannot resume from {path}: the run's settings differ ({listed}); resume with the same settings, "
                     "or start over with --overwrite")


def check_run_dir(run_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse (``ValueError``) an ``out_dir`` that is a file, or a non-empty folder without ``resume`` or
    ``overwrite`` (and, with ``overwrite``, one that holds no run); with ``resume``, refuse
    (:class:`CheckpointError`) a folder without a checkpoint. Reads only; nothing is created."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"--out {run_dir} is a file, not a folder; choose a folder for the run")
    entries = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    if resume and ckpt.LAST not in entries and ckpt.PREV not in entries:
        what = "it does not exist" if not os.path.isdir(run_dir) else "it holds no checkpoint (last.pt / prev.pt)"
        todo = "start it afresh with --overwrite" if "config.json" in entries else "check the path, or start a new run without --resume"
        raise ckpt.CheckpointError(f"--resume: nothing to resume in --out {run_dir}: {what}; {todo}")
    if not entries or resume:
        return
    if not overwrite:
        raise ValueError(f"--out {run_dir} is not empty; continue that run with --resume, replace it with --overwrite, "
                         "or choose another --out")
    if not any(name in entries for name in RUN_FILES):
        raise ValueError(f"--out {run_dir} holds files but no run (config.json, metrics.jsonl, last.pt); "
                         "--overwrite only replaces runs: choose another --out")


def _clear_run(run_dir: str) -> None:
    for name in os.listdir(run_dir):
        if name in RUN_FILES or name.startswith((".last.pt.tmp", ".metrics.jsonl.tmp", "prev.pt.tmp")):
            os.remove(os.path.join(run_dir, name))


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _init_weights(model: nn.Module, source: str) -> None:
    """Load model weights from a run folder's newest checkpoint or from a checkpoint file."""
    if os.path.isdir(source):
        found = ckpt.load_latest(source)
        if found is None:
            raise ckpt.CheckpointError(f"init_from: no checkpoint (last.pt / prev.pt) in {source}")
        state = found[0]
    else:
        state = ckpt.load_checkpoint(source)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"init_from: {source} does not hold weights for this model ({first})") from None


def _to_device(t: torch.Tensor, device: torch.device, dtype=None) -> torch.Tensor:
    """Host batch -> device without a blocking copy (pinned memory, non_blocking) on GPUs."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device=device, dtype=dtype, non_blocking=device.type == "cuda")


def _objective(cfg: TrainConfig, model, raw_model, x, y, gen, autocast_dtype, step: int = 0):
    """The method's loss for step ``step``'s batch (see TrainConfig for the attacks' settings)."""
    method, eps = get_method(cfg.method), cfg.eps
    x_adv = None
    if method.attack is not None:
        with frozen_bn_stats(raw_model, cfg.freeze_bn):
            if method.attack == "pgd":
                x_adv = attacks.pgd(raw_model, x, y, eps, eps / 4, cfg.pgd_steps, random_start=False, generator=gen)
            else:
                x_adv = attacks.fgsm(raw_model, x, y, eps, eps if method.gradalign else 1.25 * eps)
    if method.gradalign:
        return gradalign_objective(model, x, y, x_adv, eps, cfg.gradalign_lambda, generator=gen, freeze_bn=cfg.freeze_bn,
                                   autocast_dtype=autocast_dtype)
    if method.jafr:
        return jafr_objective(model, x, y, cfg.lam, cutoff=cfg.cutoff, target=cfg.target, formulation=cfg.formulation,
                              jacobian_mode=cfg.jacobian_mode, x_main=x_adv, fd_h=cfg.fd_h, freeze_bn=cfg.freeze_bn,
                              autocast_dtype=autocast_dtype, every=cfg.jafr_every, step=step,
                              fraction=cfg.jafr_fraction)
    return ce_objective(model, x if x_adv is None else x_adv, y, autocast_dtype)


def train_model(cfg: TrainConfig, model: Optional[nn.Module] = None, train_set: Optional[Dataset] = None) -> TrainResult:
    """Train one model as configured; returns a :class:`TrainResult` (model in eval mode).

    Everything is checked (settings, run folder, data) before the run folder is created or written.

    Args:
        cfg: the run's :class:`TrainConfig` (``cfg.resume`` continues from ``out_dir``'s newest valid checkpoint).
        model: optional module to train instead of ``build_model(cfg.model)`` (its initial weights are used).
        train_set: optional dataset of (x (C, H, W) in [0, 1], y) instead of ``load_dataset(cfg.dataset)``.

    Raises:
        ValueError: a bad setting, or an ``out_dir`` that is a file or holds another run (see ``resume``/``overwrite``).
        NonFiniteLossError: training diverged (nothing after the last good checkpoint is saved).
        DatasetError / CheckpointError: missing data, or no valid checkpoint to resume from.
    """
    return _Run(cfg, model, train_set).train()


class _Run:
    """One training run, in named steps: :meth:`__init__` checks and builds everything (nothing written yet),
    :meth:`open` prepares the folder and restores a checkpoint, :meth:`train` runs the steps, logging through
    :meth:`flush` (the one host read of a window of steps) and checkpointing through :meth:`save`."""

    def __init__(self, cfg: TrainConfig, model: Optional[nn.Module], train_set: Optional[Dataset]):
        cfg = self.cfg = cfg.resolved()
        _, local_rank, world_size = world_from_env()
        self.device = choose_device(cfg.device, local_rank=local_rank, world_size=world_size)
        self.rank, self.world = init_distributed(self.device)
        self.info = dataset_info(cfg.dataset)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.autocast_dtype = torch.bfloat16 if cfg.bf16 else None
        self.run_dir = cfg.out_dir
        check_run_dir(self.run_dir, cfg.resume, cfg.overwrite)
        self._data(train_set)
        self._model(model)
        self.optimizer = torch.optim.SGD(self.raw_model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        factor = TriangularLR(self.total, warmup_min=cfg.warmup_min) if cfg.lr_schedule == "cyclic" else _ConstantLR()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        self.step, self.history, self.saved_step = 0, [], None
        # Metrics of the steps since the last logging step: (loss, CE, penalty, J ratio, accuracy) as one float64
        # device tensor per step (NaN where a method has no penalty or ratio), with host-side (epoch, lr,
        # has_penalty, has_ratio). ``flush`` reads them all back at once.
        self.pending: list = []
        self.window_start = time.perf_counter()

    def _data(self, train_set: Optional[Dataset]) -> None:
        cfg, world = self.cfg, self.world
        source = train_set if train_set is not None else load_dataset(cfg.dataset, True, cfg.data_dir)
        self.dataset = _subset(source, cfg.train_subset)
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
        self.local_batch = cfg.batch_size // world
        self.sampler = DistributedSampler(self.dataset, num_replicas=world, rank=self.rank, shuffle=True, seed=cfg.seed,
                                          drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set ({len(self.dataset)} samples) is smaller than one batch of {cfg.batch_size}")
        epochs_steps = cfg.epochs * self.steps_per_epoch
        self.total = epochs_steps if cfg.max_steps is None else min(cfg.max_steps, epochs_steps)

    def _model(self, model: Optional[nn.Module]) -> None:
        """``raw_model`` (trained, checkpointed) and ``model`` (what the objective calls: DDP and/or compiled)."""
        cfg, info, device = self.cfg, self.info, self.device
        if model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = build_model(cfg.model, info.channels, info.num_classes)
        if cfg.init_from is not None:
            _init_weights(model, cfg.init_from)
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        model = model.to(device=device, dtype=self.dtype, memory_format=memory_format).train()
        if cfg.sync_bn and self.world > 1:
            # SyncBatchNorm (GPU only) has no double backward: JaFR must use finite differences with it.
            method = get_method(cfg.method)
            if method.gradalign or (method.jafr and cfg.jacobian_mode == "double_backward"):
                raise ValueError(f"sync_bn: SyncBatchNorm has no double backward, so method {cfg.method!r} with "
                                 f"jacobian_mode={cfg.jacobian_mode!r} cannot use it; use jacobian_mode='finite_difference'")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.raw_model = model
        if self.world > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = torch.compile(model) if cfg.compile else model

    def open(self) -> None:
        """Create (or clear, with ``overwrite``) the run folder, restore the newest checkpoint when resuming, and
        write config.json and the metrics kept so far."""
        cfg, run_dir, rank = self.cfg, self.run_dir, self.rank
        _barrier(self.world)  # every process has checked the folder before rank 0 changes it
        if rank == 0:
            if cfg.overwrite and os.path.isdir(run_dir):
                _clear_run(run_dir)
            os.makedirs(run_dir, exist_ok=True)
        _barrier(self.world)
        found = ckpt.load_latest(run_dir) if cfg.resume else None
        if found is not None:
            self._restore(*found)
        elif cfg.resume and rank == 0:
            print(f"no checkpoint in {run_dir}: starting from step 0")
        if rank == 0:
            self.history = _read_history(self.metrics_path, self.step) if self.step > 0 else []
            _write_history(self.metrics_path, self.history)
            with open(os.path.join(run_dir, "config.json"), "w") as f:
                json.dump(dataclasses.asdict(cfg) | {"world_size": self.world, "total_steps": self.total,
                                                     "steps_per_epoch": self.steps_per_epoch,
                                                     "device_used": str(self.device)}, f, indent=2)

    def _restore(self, state: dict, path: str) -> None:
        _check_same_run(state.get("config", {}), dataclasses.asdict(self.cfg), path)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = self.saved_step = int(state["step"])
        if self.rank == 0:
            print(f"resuming {self.run_dir} from {path} at step {self.step}/{self.total}")

    def save(self) -> None:
        """A verified checkpoint of the current step (refused, as divergence, if any weight is non-finite)."""
        cfg, step = self.cfg, self.step
        weights = [t for t in self.raw_model.state_dict().values() if t.is_floating_point()]
        if not bool(torch.stack([torch.isfinite(t).all() for t in weights]).all()):  # one host read per checkpoint
            raise NonFiniteLossError(_divergence_message(cfg, step, (step - 1) // self.steps_per_epoch,
                                                         "the weights became non-finite", self.run_dir, self.saved_step))
        self.saved_step = step
        if self.rank != 0:
            return
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        epoch = step // self.steps_per_epoch
        ckpt.save_checkpoint({"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "scheduler": self.scheduler.state_dict(), "rng": rng, "step": step, "epoch": epoch,
                              "data_order": {"sampler_seed": cfg.seed, "epoch": epoch,
                                             "batches_done_in_epoch": step % self.steps_per_epoch, "world_size": self.world},
                              "config": dataclasses.asdict(cfg)}, self.run_dir)

    def flush(self, log) -> None:
        """Read the pending steps' metrics back (one host read), check them, and write their records."""
        pending = self.pending
        if not pending:
            return
        rows = torch.stack([p[0] for p in pending])
        if self.world > 1:
            dist.all_reduce(rows)
            rows /= self.world
        rows = rows.tolist()  # the one host read of the window
        self.pending = []
        seconds = (time.perf_counter() - self.window_start) / len(rows)
        first = self.step - len(rows) + 1
        for i, ((loss, ce, pen, lf, acc), (epoch, lr, has_pen, has_lf)) in enumerate(zip(rows, (p[1:] for p in pending))):
            if not (math.isfinite(loss) and math.isfinite(ce) and (math.isfinite(pen) or not has_pen)):
                log.flush()
                values = f"loss {loss:.4g}, CE {ce:.4g}" + (f", penalty {pen:.4g}" if has_pen else "")
                raise NonFiniteLossError(_divergence_message(self.cfg, first + i, epoch, values, self.run_dir,
                                                             self.saved_step))
            rec = {"type": "step", "step": first + i, "epoch": epoch, "lr": lr, "loss": loss, "ce": ce,
                   "penalty": pen if has_pen else None, "lf_ratio": lf if has_lf else None, "acc": acc, "time_s": seconds}
            self.history.append(rec)
            log.write(json.dumps(rec) + "\n")
            if rec["step"] % self.steps_per_epoch == 0 or rec["step"] == self.total:
                erec = _epoch_record(self.history, epoch, rec["step"])
                self.history.append(erec)
                log.write(json.dumps(erec) + "\n")
        log.flush()
        self.bar.set_postfix(loss=f"{self.history[-1]['loss']:.3f}", acc=f"{self.history[-1]['acc']:.2f}")
        self.window_start = time.perf_counter()

    def _batch(self, order: torch.Tensor, k: int, gen: torch.Generator):
        x, y = get_batch(self.dataset, order[k * self.local_batch:(k + 1) * self.local_batch])
        if self.cfg.augment:
            x = augment(x, self.info, gen)
        x, y = _to_device(x, self.device, self.dtype), _to_device(y, self.device)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _optimizer_step(self, out) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        try:
            out.loss.backward()
        except RuntimeError as exc:
            if "differentiate twice" in str(exc) or "double backward" in str(exc).lower():
                raise DoubleBackwardError(f"the model has an op without a double backward ({exc}); method "
                                          f"{self.cfg.method!r} needs one with jacobian_mode='double_backward': use "
                                          "jacobian_mode='finite_difference' (--jacobian-mode finite_difference)") from exc
            raise
        self.optimizer.step()
        self.scheduler.step()

    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, device = self.cfg, self.device
        self.open()
        nan = torch.tensor(math.nan, dtype=torch.float64, device=device)
        self.bar = tqdm(total=self.total, initial=self.step, desc=f"train {cfg.method}",
                        disable=not cfg.progress or self.rank != 0, dynamic_ncols=True)
        order, order_epoch = None, -1
        try:
            with open(self.metrics_path, "a") if self.rank == 0 else open(os.devnull, "w") as log:
                while self.step < self.total:
                    step = self.step
                    epoch, k = divmod(step, self.steps_per_epoch)
                    if epoch != order_epoch:
                        self.sampler.set_epoch(epoch)
                        order, order_epoch = torch.tensor(list(iter(self.sampler)), dtype=torch.long), epoch
                    gen = _step_generator(cfg.seed, step, self.rank)
                    x, y = self._batch(order, k, gen)
                    out = _objective(cfg, self.model, self.raw_model, x, y, gen, self.autocast_dtype, step)
                    acc = (out.logits.argmax(1) == y).to(torch.float64).mean()
                    stats = torch.stack([out.loss.detach().to(torch.float64), out.ce.to(torch.float64),
                                         nan if out.penalty is None else out.penalty.to(torch.float64),
                                         nan if out.lf_ratio is None else out.lf_ratio.to(torch.float64), acc])
                    lr = self.optimizer.param_groups[0]["lr"]
                    self._optimizer_step(out)
                    self.step += 1
                    self.pending.append((stats, epoch, lr, out.penalty is not None, out.lf_ratio is not None))
                    self.bar.update(1)
                    save_now = (self.step % cfg.ckpt_every == 0 or self.step % self.steps_per_epoch == 0
                                or self.step == self.total)
                    if save_now or self.step % cfg.log_every == 0:
                        self.flush(log)  # before any checkpoint: a diverged model is never saved
                    if save_now:
                        self.save()
        finally:
            self.bar.close()
        if self.world > 1:
            dist.barrier()
        return TrainResult(self.raw_model.eval(), self.history, self.run_dir, self.step)


def _divergence_message(cfg: TrainConfig, step: int, epoch: int, values: str, run_dir: str, saved_step: Optional[int]) -> str:
    """One line: where training diverged, the values, what was kept, what to change."""
    if saved_step is None:
        kept = "no checkpoint was written"
    else:
        kept = f"the last good checkpoint (step {saved_step}) is kept in {run_dir}"
    hint = f"lower --lr (now {cfg.lr:g})"
    if get_method(cfg.method).jafr:
        hint += f" or --lam (now {cfg.lam:g})"
    return f"training diverged at step {step} (epoch {epoch}): {values}; {kept}; try a {hint}"


def load_trained_model(run_dir: str, device: str = "cpu") -> nn.Module:
    """Rebuild a model from ``run_dir``'s config.json and its newest valid checkpoint (eval mode)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        conf = json.load(f)
    info = dataset_info(conf["dataset"])
    model = build_model(conf["model"], info.channels, info.num_classes)
    found = ckpt.load_latest(run_dir)
    if found is None:
        raise ckpt.CheckpointError(f"no checkpoint (last.pt / prev.pt) in {run_dir}")
    model.load_state_dict(found[0]["model"])
    return model.to(device=device, dtype=torch.float64 if conf.get("dtype") == "float64" else torch.float32).eval()
