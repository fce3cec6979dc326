"""Crash-safe checkpoints: atomic writes, a verified format, and a previous good copy.

A checkpoint is an ordinary ``torch.save`` file (open it with ``torch.load(path, weights_only=False)``)
whose zip comment carries the SHA-256 of the archive: ``jafr-sha256:<64 hex digits>``. The digest is taken
over the archive as ``torch.save`` wrote it (comment length 0), so a truncated, bit-flipped or foreign file
is detected before it is unpickled.

A write goes to a temporary file in the same directory, is flushed and fsynced, then renamed over
``last.pt`` with ``os.replace`` (atomic). Before that, the previous ``last.pt`` becomes ``prev.pt``, but only
if it verifies: a corrupt ``last.pt`` is never rotated over a good ``prev.pt``.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import warnings

import torch

LAST, PREV = "last.pt", "prev.pt"
_TAG = b"jafr-sha256:"
_COMMENT_LEN = len(_TAG) + 64
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory signature; its last 2 bytes are the comment length


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

    An exception (Ctrl-C included) removes the temporary file and leaves ``path`` as it was. The environment
    variable ``JAFR_TEST_CKPT_SLEEP`` (seconds) pauses half-way through the write; crash tests use it to kill
    a process while a checkpoint is being written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    pause = float(os.environ.get("JAFR_TEST_CKPT_SLEEP", "0") or 0)
    try:
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
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def encode(state: dict) -> bytes:
    """``torch.save(state)`` bytes with the archive's SHA-256 in the zip comment."""
    buf = io.BytesIO()
    torch.save(state, buf)
    body = buf.getvalue()
    if body[-22:-18] != _EOCD or body[-2:] != b"\x00\x00":
        raise CheckpointError("torch.save did not write a zip archive with an empty comment; cannot sign it")
    comment = _TAG + hashlib.sha256(body).hexdigest().encode()
    return body[:-2] + struct.pack("<H", _COMMENT_LEN) + comment


def verify(data: bytes, path: str = "<bytes>") -> None:
    """Raise :class:`CheckpointError` (naming ``path``) unless ``data`` is a complete, unmodified checkpoint."""
    comment = data[-_COMMENT_LEN:]
    if len(data) < _COMMENT_LEN + 22 or not comment.startswith(_TAG):
        raise CheckpointError(f"checkpoint {path} is truncated or not a jafr checkpoint (no SHA-256 in its zip comment; {len(data)} bytes)")
    eocd = len(data) - _COMMENT_LEN - 22
    if data[eocd:eocd + 4] != _EOCD or struct.unpack("<H", data[-_COMMENT_LEN - 2:-_COMMENT_LEN])[0] != _COMMENT_LEN:
        raise CheckpointError(f"checkpoint {path} is corrupt: its zip trailer is damaged")
    body = data[:-_COMMENT_LEN - 2] + b"\x00\x00"
    if hashlib.sha256(body).hexdigest().encode() != comment[len(_TAG):]:
        raise CheckpointError(f"checkpoint {path} is corrupt: the SHA-256 of its contents does not match the one it was written with")


def decode(data: bytes, path: str = "<bytes>") -> dict:
    """Verify and deserialise checkpoint bytes; raises :class:`CheckpointError` naming ``path``."""
    verify(data, path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a file that verifies but does not unpickle: report it as corrupt
        raise CheckpointError(f"checkpoint {path} could not be deserialised: {exc}") from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None


def is_valid(path: str) -> bool:
    """Whether ``path`` exists and verifies (digest only; nothing is unpickled)."""
    try:
        verify(_read(path), path)
        return True
    except CheckpointError:
        return False


def save_checkpoint(state: dict, run_dir: str) -> str:
    """Write ``state`` to ``run_dir/last.pt`` atomically; the previous ``last.pt`` becomes ``prev.pt`` if it verifies.

    A ``last.pt`` that fails verification is replaced without touching ``prev.pt`` (with a warning), so a
    good ``prev.pt`` is never lost. ``last.pt`` exists and is complete at every instant after the first save
    (the old file is hard-linked to ``prev.pt`` before the new one replaces it). Returns the path written.
    """
    last, prev = os.path.join(run_dir, LAST), os.path.join(run_dir, PREV)
    data = encode(state)
    if os.path.exists(last):
        if is_valid(last):
            link = prev + f".tmp.{os.getpid()}"
            try:
                if os.path.exists(link):
                    os.remove(link)
                os.link(last, link)
            except OSError:  # no hard links on this file system: copy
                write_atomic(link, _read(last))
            os.replace(link, prev)
        else:
            warnings.warn(f"{last} does not verify; replacing it and keeping {prev} as it is", RuntimeWarning, stacklevel=2)
    write_atomic(last, data)
    return last


def load_checkpoint(path: str) -> dict:
    """Load and verify one checkpoint file."""
    return decode(_read(path), path)


def load_latest(run_dir: str):
    """The newest valid checkpoint of ``run_dir`` as ``(state, path)``, or ``None`` if there is none at all.

    Tries ``last.pt`` then ``prev.pt``; a corrupt or truncated file is reported with a warning naming it and
    skipped. Raises :class:`CheckpointError` when checkpoint files exist but none is valid.
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
