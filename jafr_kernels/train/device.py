"""Device choice and process-group setup, the same for ``jafr train``, ``jafr study`` and ``jafr eval``.

``--device auto`` (the default) takes the GPU when one is visible and the CPU otherwise. Under ``torchrun``
(``WORLD_SIZE > 1``) each process takes ``cuda:LOCAL_RANK`` and the process group uses NCCL; on CPUs it uses
gloo. ``JAFR_DIST_BACKEND`` overrides the backend.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def world_from_env() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment variables; ``(0, 0, 1)`` outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def choose_device(requested: str = "auto", *, local_rank: int = 0, world_size: int = 1,
                  cuda_available: Optional[bool] = None, cuda_count: Optional[int] = None) -> torch.device:
    """The device for ``requested`` (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``).

    ``"auto"`` is ``cuda`` when a GPU is visible, else ``cpu``. A bare ``cuda`` (or ``auto`` on a GPU) means
    ``cuda:LOCAL_RANK`` (``cuda:0`` in a single process). ``cuda_available`` / ``cuda_count`` default to what
    torch reports (tests pass them to fake a machine).

    Raises:
        ValueError: an unknown device, a GPU requested where none is visible, or more processes per node
            than GPUs.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if cuda_available else 0
    name = str(requested).strip().lower()
    if name == "auto":
        name = "cuda" if cuda_available else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not cuda_available:
            raise ValueError(f"--device {requested}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                             "use --device cpu or --device auto")
        index = local_rank if name == "cuda" else _index(name, requested)
        if index >= cuda_count:
            who = f"LOCAL_RANK {local_rank} of {world_size} processes" if name == "cuda" and world_size > 1 else f"device index {index}"
            raise ValueError(f"--device {requested}: {who} needs cuda:{index}, but only {cuda_count} GPU(s) are visible")
        return torch.device("cuda", index)
    raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got {requested!r}")


def _index(name: str, requested: str) -> int:
    try:
        index = int(name.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got {requested!r}") from None
    if index < 0:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got {requested!r}")
    return index


def dist_backend(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise (``JAFR_DIST_BACKEND`` overrides)."""
    return os.environ.get("JAFR_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join torchrun's process group (once) with the backend for ``device``; returns ``(rank, world_size)``."""
    _, _, world = world_from_env()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(dist_backend(device))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
