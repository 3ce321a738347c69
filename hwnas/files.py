"""Atomic file writes: a file that outlives a command is either its old self or wholly new.

Each write goes to a temporary file in the same directory, is flushed and fsynced, then renamed
over the target with ``os.replace`` (atomic on POSIX), and the directory is fsynced so the
rename survives a power cut. A kill or a full disk mid-write leaves the old file untouched and at
most a stray ``.tmp`` file beside it, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block succeeds.

    For writers that want a path of their own (``savefig``, ``torch.save``, a linker). On an
    exception the temporary file is removed and ``path`` is left as it was; an OSError (a full
    disk, a read-only directory) becomes one HwnasError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, _mode(tmp_path))
        os.replace(tmp_path, path)
    except OSError as exc:  # a full disk, a read-only or vanished directory
        tmp_path.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _mode(tmp: Path) -> int:
    """The permissions a plainly created file would have (``mkstemp`` makes it owner-only); a
    linker's executable output keeps its execute bits."""
    executable = tmp.stat().st_mode & 0o111
    return (0o777 if executable else 0o666) & ~_UMASK


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_error(path: Path, exc: OSError) -> HwnasError:
    """The one-line error of a file that could not be written (the old file, if any, is intact)."""
    return HwnasError(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (a trailing newline); returns ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
