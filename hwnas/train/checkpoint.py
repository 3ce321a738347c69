"""Atomic, versioned checkpoints: a run killed at any moment keeps its last complete checkpoint.

A checkpoint is written to a temporary file in the same directory, flushed to disk (fsync) and
renamed over the old one with ``os.replace``, so the file on disk is always either the previous
or the new checkpoint. It is read with ``torch.load(weights_only=True)`` (tensors and plain
Python values only); anything truncated, foreign or of another format version is one HwnasError.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from hwnas.errors import HwnasError

MAGIC = "hwnas-checkpoint"
FORMAT_VERSION = 1
FILENAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"magic": MAGIC, "format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def check_resume(run_dir: Path, resume: bool, what: str = "run") -> None:
    """Refuse to resume a directory without a checkpoint, or to start afresh over one."""
    has_checkpoint = (run_dir / FILENAME).exists()
    if resume and not has_checkpoint:
        raise HwnasError(f"nothing to resume: no checkpoint in {run_dir}")
    if not resume and has_checkpoint:
        raise HwnasError(f"{run_dir} already holds a {what}; pass --resume to continue it or choose another --out")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise one clear HwnasError."""
    if not path.is_file():
        raise HwnasError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a damaged file; all mean the same here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HwnasError(
            f"{path}: not a readable hwnas checkpoint (truncated or foreign file: {first[:120]})"
        ) from None
    if not isinstance(state, dict) or state.get("magic") != MAGIC:
        raise HwnasError(f"{path}: not an hwnas checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise HwnasError(
            f"{path}: checkpoint format version {state.get('format_version')!r}, this hwnas reads {FORMAT_VERSION}"
        )
    return state


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
