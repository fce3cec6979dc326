"""The training loop: ``TrainConfig`` -> ``train_model`` -> ``TrainResult``.

A run directory holds ``config.json``, ``metrics.jsonl`` (one record per step, one per epoch) and the
verified checkpoints ``last.pt`` / ``prev.pt`` (model, optimizer, LR schedule, RNG state, step). The data
order of epoch ``e`` is a permutation drawn from ``seed + e`` (``DistributedSampler``) and every other random
draw of step ``s`` comes from a generator seeded by ``(seed, s, rank)``, so ``resume=True`` continues
bit-exactly on CPU, skipping the batches of the interrupted epoch that were already used.

Multi-process: run under ``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on GPU). ``batch_size`` is the
global batch; each process takes ``batch_size / N`` samples of it, the objective is per process (see
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
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Subset

from jafr_kernels import attacks
from jafr_kernels.train import checkpoint as ckpt
from jafr_kernels.train.data import augment, dataset_info, get_batch, load_dataset, TensorImageDataset
from jafr_kernels.train.methods import METHOD_NAMES as METHODS, default_lambda, get_method
from jafr_kernels.train.models import build_model
from jafr_kernels.train.objective import JACOBIAN_MODES, frozen_bn_stats, gradalign_objective, jafr_objective


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN/Inf; the message names the step and the last checkpoint."""


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
    of training.
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
    jacobian_mode: str = "double_backward"
    eps: Optional[float] = None
    seed: int = 0
    out_dir: str = "runs/train"
    data_dir: Optional[str] = None
    train_subset: Optional[int] = None
    device: str = "cpu"
    lr: Optional[float] = None
    progress: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cyclic"
    gradalign_lambda: float = 0.2
    pgd_steps: int = 10
    fd_h: float = 0.01
    freeze_bn: bool = True
    bf16: bool = False
    sync_bn: bool = False
    augment: bool = True
    dtype: str = "float32"
    ckpt_every: int = 100
    resume: bool = False

    def resolved(self) -> "TrainConfig":
        """A copy with the ``None`` defaults filled in and every field checked."""
        info = dataset_info(self.dataset)
        cfg = dataclasses.replace(self, dataset=info.name)
        if cfg.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
        if cfg.jacobian_mode not in JACOBIAN_MODES:
            raise ValueError(f"jacobian_mode must be one of {JACOBIAN_MODES}; got {cfg.jacobian_mode!r}")
        if cfg.target not in ("low", "high"):
            raise ValueError(f"target must be 'low' or 'high'; got {cfg.target!r}")
        if cfg.formulation not in ("ratio", "official"):
            raise ValueError(f"formulation must be 'ratio' or 'official'; got {cfg.formulation!r}")
        if cfg.lr_schedule not in ("cyclic", "constant"):
            raise ValueError(f"lr_schedule must be 'cyclic' or 'constant'; got {cfg.lr_schedule!r}")
        if cfg.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {cfg.dtype!r}")
        if cfg.epochs < 1 or cfg.batch_size < 1 or (cfg.max_steps is not None and cfg.max_steps < 1):
            raise ValueError(f"need epochs >= 1, batch_size >= 1, max_steps >= 1 or None; got {cfg.epochs}, {cfg.batch_size}, {cfg.max_steps}")
        if cfg.ckpt_every < 1:
            raise ValueError(f"ckpt_every must be >= 1 step, got {cfg.ckpt_every}")
        if cfg.lam is None:
            cfg.lam = default_lambda(cfg.formulation)
        if cfg.lr is None:
            cfg.lr = 0.05 if info.name == "fashion_mnist" else 0.2
        if cfg.eps is None:
            cfg.eps = info.eps
        return cfg


@dataclass
class TrainResult:
    """``model``: the trained module (unwrapped, eval mode); ``history``: the metrics.jsonl records;
    ``run_dir``: where config, metrics and checkpoints live; ``step``: optimizer steps done."""

    model: nn.Module
    history: list = field(default_factory=list)
    run_dir: str = ""
    step: int = 0


class TriangularLR:
    """LR factor for update ``k`` (0-based): linear 0 -> 1 at 2/5 of ``total`` updates, then -> 0 (authors' schedule,
    evaluated after the update, so the first update has a positive LR)."""

    def __init__(self, total: int, peak: float = 0.4):
        self.total, self.peak = int(total), float(peak)

    def __call__(self, k: int) -> float:
        t, top = k + 1, self.peak * self.total
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
    if n < 1:
        raise ValueError(f"train_subset must be >= 1, got {n}")
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


# Fields a resumed run may change without changing the result.
_RESUME_FREE = {"progress", "resume", "out_dir", "data_dir", "device", "ckpt_every"}


def _check_same_run(saved: dict, current: dict, path: str) -> None:
    diff = {k: (saved[k], current.get(k)) for k in saved if k not in _RESUME_FREE and saved[k] != current.get(k)}
    if diff:
        listed = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"cannot resume from {path}: the run's settings differ ({listed})")


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("JAFR_DIST_BACKEND", "") != "gloo" else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _objective(cfg: TrainConfig, model, raw_model, x, y, gen, autocast_dtype):
    """The method's loss for one batch (see TrainConfig for the attacks' settings)."""
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
                              autocast_dtype=autocast_dtype)
    from jafr_kernels.train.objective import ObjectiveResult, _upcast

    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(x if x_adv is None else x_adv)
    loss = F.cross_entropy(_upcast(logits), y)
    return ObjectiveResult(loss, loss.detach(), logits.detach())


def train_model(cfg: TrainConfig, model: Optional[nn.Module] = None, train_set: Optional[Dataset] = None) -> TrainResult:
    """Train one model as configured; returns a :class:`TrainResult` (model in eval mode).

    Args:
        cfg: the run's :class:`TrainConfig` (``cfg.resume`` continues from ``out_dir``'s newest valid checkpoint).
        model: optional module to train instead of ``build_model(cfg.model)`` (its initial weights are used).
        train_set: optional dataset of (x (C, H, W) in [0, 1], y) instead of ``load_dataset(cfg.dataset)``.

    Raises:
        NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint is kept).
        DatasetError / CheckpointError: missing data, or no valid checkpoint to resume from.
    """
    from tqdm.auto import tqdm

    cfg = cfg.resolved()
    rank, world = _distributed()
    info = dataset_info(cfg.dataset)
    device = torch.device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    autocast_dtype = torch.bfloat16 if cfg.bf16 else None

    dataset = _subset(train_set if train_set is not None else load_dataset(cfg.dataset, True, cfg.data_dir), cfg.train_subset)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    local_batch = cfg.batch_size // world
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // local_batch
    if steps_per_epoch < 1:
        raise ValueError(f"the training set ({len(dataset)} samples) is smaller than one batch of {cfg.batch_size}")
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)

    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.model, info.channels, info.num_classes)
    model = model.to(device=device, dtype=dtype).train()
    if cfg.sync_bn and world > 1:
        # SyncBatchNorm (GPU only) has no double backward: JaFR must use finite differences with it.
        if get_method(cfg.method).gradalign or (get_method(cfg.method).jafr and cfg.jacobian_mode == "double_backward"):
            raise ValueError(f"sync_bn: SyncBatchNorm has no double backward, so method {cfg.method!r} with "
                             f"jacobian_mode={cfg.jacobian_mode!r} cannot use it; use jacobian_mode='finite_difference'")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    raw_model = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.SGD(raw_model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    factor = TriangularLR(total) if cfg.lr_schedule == "cyclic" else _ConstantLR()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    run_dir = cfg.out_dir
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
    step, history = 0, []
    state = ckpt.load_latest(run_dir) if cfg.resume and os.path.isdir(run_dir) else None
    if state is not None:
        state, path = state
        _check_same_run(state.get("config", {}), dataclasses.asdict(cfg), path)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        step = int(state["step"])
        if rank == 0:
            print(f"resuming {run_dir} from {path} at step {step}/{total}")
    elif cfg.resume and rank == 0:
        print(f"no checkpoint in {run_dir}: starting from step 0")
    if rank == 0:
        history = _read_history(metrics_path, step) if step > 0 else []
        _write_history(metrics_path, history)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg) | {"world_size": world, "total_steps": total, "steps_per_epoch": steps_per_epoch}, f, indent=2)

    def save():
        if rank != 0:
            return
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        ckpt.save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "rng": rng, "step": step,
                              "epoch": step // steps_per_epoch,
                              "data_order": {"sampler_seed": cfg.seed, "epoch": step // steps_per_epoch,
                                             "batches_done_in_epoch": step % steps_per_epoch, "world_size": world}, "config": dataclasses.asdict(cfg)}, run_dir)

    bar = tqdm(total=total, initial=step, desc=f"train {cfg.method}", disable=not cfg.progress or rank != 0, dynamic_ncols=True)
    order, order_epoch = None, -1
    with open(metrics_path, "a") if rank == 0 else open(os.devnull, "w") as log:
        while step < total:
            epoch, k = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                sampler.set_epoch(epoch)
                order, order_epoch = torch.tensor(list(iter(sampler)), dtype=torch.long), epoch
            x, y = get_batch(dataset, order[k * local_batch:(k + 1) * local_batch])
            gen = _step_generator(cfg.seed, step, rank)
            if cfg.augment:
                x = augment(x, info, gen)
            x, y = x.to(device=device, dtype=dtype), y.to(device)
            t0 = time.perf_counter()
            out = _objective(cfg, model, raw_model, x, y, gen, autocast_dtype)
            stats = torch.tensor([out.loss.detach().item(), out.ce.item(),
                                  math.nan if out.penalty is None else out.penalty.item(),
                                  math.nan if out.lf_ratio is None else out.lf_ratio.item(),
                                  (out.logits.argmax(1) == y).double().mean().item()], dtype=torch.float64)
            if world > 1:
                dist.all_reduce(stats)
                stats /= world
            if not math.isfinite(stats[0]):
                bar.close()
                last = os.path.join(run_dir, ckpt.LAST)
                where = f"last good checkpoint: {last}" if os.path.exists(last) else "no checkpoint was written yet"
                raise NonFiniteLossError(f"non-finite loss ({stats[0].item()}) at step {step} (epoch {epoch}, batch {k}); "
                                         f"training stopped before the update; {where}")
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            try:
                out.loss.backward()
            except RuntimeError as exc:
                if "differentiate twice" in str(exc) or "double backward" in str(exc).lower():
                    raise DoubleBackwardError(f"the model has an op without a double backward ({exc}); method {cfg.method!r} "
                                              "needs one with jacobian_mode='double_backward': use "
                                              "jacobian_mode='finite_difference' (--jacobian-mode finite_difference)") from exc
                raise
            optimizer.step()
            scheduler.step()
            step += 1
            rec = {"type": "step", "step": step, "epoch": epoch, "lr": lr, "loss": stats[0].item(), "ce": stats[1].item(),
                   "penalty": None if math.isnan(stats[2]) else stats[2].item(),
                   "lf_ratio": None if math.isnan(stats[3]) else stats[3].item(), "acc": stats[4].item(),
                   "time_s": time.perf_counter() - t0}
            history.append(rec)
            log.write(json.dumps(rec) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.2f}")
            if step % steps_per_epoch == 0 or step == total:
                erec = _epoch_record(history, epoch, step)
                history.append(erec)
                log.write(json.dumps(erec) + "\n")
            log.flush()
            if step % cfg.ckpt_every == 0 or step % steps_per_epoch == 0 or step == total:
                save()
    bar.close()
    if world > 1:
        dist.barrier()
    return TrainResult(raw_model.eval(), history, run_dir, step)


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
