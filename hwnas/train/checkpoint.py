"""Atomic, versioned checkpoints: a run killed at any moment keeps its last complete checkpoint.

A checkpoint is written with :func:`hwnas.files.atomic_path` (a temporary file in the same
directory, fsynced, renamed over the old one), so the file on disk is always either the previous
or the new checkpoint. It is read with ``torch.load(weights_only=True)`` (tensors and plain
Python values only); anything truncated, foreign or of another format version is one HwnasError.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from hwnas.errors import HwnasError
from hwnas.files import atomic_path
from hwnas.locks import dir_lock

MAGIC = "hwnas-checkpoint"
FORMAT_VERSION = 1
FILENAME = "checkpoint.pt"
_log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        try:
            torch.save({"magic": MAGIC, "format_version": FORMAT_VERSION, **state}, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a full disk as a RuntimeError
            raise OSError(errno.EIO, f"{str(exc).strip()[:120]}") from None


def check_resume(run_dir: Path, resume: bool, what: str = "run") -> bool:
    """Whether to resume: refuse to resume a directory without a checkpoint, or to start afresh over one.

    A run stopped before its first checkpoint (its ``config.json`` was written, no checkpoint
    yet) has nothing to resume from, but a plain ``--resume`` starts it again from the beginning,
    which is what it would have done.
    """
    has_checkpoint = (run_dir / FILENAME).exists()
    if resume and not has_checkpoint:
        if (run_dir / "config.json").is_file():
            return False
        raise HwnasError(f"nothing to resume: no checkpoint in {run_dir}")
    if not resume and has_checkpoint:
        raise HwnasError(f"{run_dir} already holds a {what}; pass --resume to continue it or choose another --out")
    return resume


@contextmanager
def claim(run_dir: Path, resume: bool, what: str = "run", main: bool = True) -> Iterator[bool]:
    """Hold ``run_dir``'s lock (the main process) and check it can be started or resumed; yields
    whether to resume (see :func:`check_resume`).

    A resume of a directory without a checkpoint fails before anything is created; the check is
    repeated under the lock, since another command may have written a checkpoint meanwhile.
    """
    if resume:
        check_resume(run_dir, resume, what)
    with dir_lock(run_dir) if main else nullcontext():
        resumes = check_resume(run_dir, resume, what)
        if resume and not resumes and main:
            _log.warning(f"{run_dir} stopped before its first checkpoint: starting the {what} from the beginning")
        yield resumes


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
