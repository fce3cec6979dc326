"""Crash-safe checkpoints: atomic writes, a verified format, and a previous good copy.

File format: ``MAGIC`` + payload length (8 bytes, little endian) + SHA-256 of the payload + the payload
(``torch.save`` of the state dict). A write goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over ``last.pt`` with ``os.replace`` (atomic); the previous ``last.pt`` is kept as
``prev.pt``. Loading checks magic, length and digest, so a truncated or corrupted file is detected and the
previous good one is used instead.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import warnings

import torch

MAGIC = b"JAFRCKPT\x01\n"
_HEADER = len(MAGIC) + 8 + 32
LAST, PREV = "last.pt", "prev.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupt; the message names the file."""


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same dir, flush, fsync, os.replace).

    The environment variable ``JAFR_TEST_CKPT_SLEEP`` (seconds) pauses half-way through the write; crash
    tests use it to kill a process while a checkpoint is being written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    pause = float(os.environ.get("JAFR_TEST_CKPT_SLEEP", "0") or 0)
    with open(tmp, "wb") as f:
        half = len(payload) // 2
        f.write(payload[:half])
        if pause > 0:
            f.flush()
            time.sleep(pause)
        f.write(payload[half:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(directory)


def encode(state: dict) -> bytes:
    """Serialise a state dict into the verified checkpoint format."""
    buf = io.BytesIO()
    torch.save(state, buf)
    body = buf.getvalue()
    return MAGIC + struct.pack("<Q", len(body)) + hashlib.sha256(body).digest() + body


def decode(data: bytes, path: str = "<bytes>") -> dict:
    """Verify and deserialise checkpoint bytes; raises :class:`CheckpointError` naming ``path``."""
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise CheckpointError(f"checkpoint {path} is not a jafr checkpoint or is truncated in its header ({len(data)} bytes)")
    (length,) = struct.unpack("<Q", data[len(MAGIC):len(MAGIC) + 8])
    digest = data[len(MAGIC) + 8:_HEADER]
    body = data[_HEADER:]
    if len(body) != length:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(body)} of {length} payload bytes")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: SHA-256 of its payload does not match its header")
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # a payload that verifies but does not unpickle: report it as corrupt
        raise CheckpointError(f"checkpoint {path} could not be deserialised: {exc}") from None


def save_checkpoint(state: dict, run_dir: str) -> str:
    """Write ``state`` to ``run_dir/last.pt`` atomically, keeping the previous ``last.pt`` as ``prev.pt``.

    ``last.pt`` exists and is complete at every instant after the first save (the old file is hard-linked
    to ``prev.pt`` before the new one replaces it). Returns the path written.
    """
    last, prev = os.path.join(run_dir, LAST), os.path.join(run_dir, PREV)
    data = encode(state)
    if os.path.exists(last):
        link = prev + f".tmp.{os.getpid()}"
        try:
            if os.path.exists(link):
                os.remove(link)
            os.link(last, link)
        except OSError:  # no hard links on this file system: copy
            with open(last, "rb") as f:
                write_atomic(link, f.read())
        os.replace(link, prev)
    write_atomic(last, data)
    return last


def load_checkpoint(path: str) -> dict:
    """Load and verify one checkpoint file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    return decode(data, path)


def load_latest(run_dir: str):
    """The newest valid checkpoint of ``run_dir`` as ``(state, path)``, or ``None`` if there is none at all.

    Tries ``last.pt`` then ``prev.pt``; a corrupt or truncated file is reported with a warning naming it and
    skipped (and left on disk for inspection). Raises :class:`CheckpointError` when checkpoint files exist but
    none is valid.
    """
    errors = []
    for name in (LAST, PREV):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        try:
            return load_checkpoint(path), path
        except CheckpointError as exc:
            errors.append(str(exc))
            warnings.warn(f"{exc}; trying the previous checkpoint", RuntimeWarning, stacklevel=2)
    if errors:
        raise CheckpointError("no valid checkpoint in " + run_dir + ": " + "; ".join(errors))
    return None
