"""Directory locks: one command at a time writes a run, detector or pipeline directory.

Two ``hwnas train --out R`` would both pass the resume check and overwrite each other's
checkpoints. Each writer holds an exclusive ``flock`` on ``DIR/.lock`` for as long as it runs;
a second one is refused at once with a line saying who holds it. The kernel releases the lock
when the process ends, also on ``kill -9``, so a stale lock file never blocks a rerun. The file
is opened for appending and never truncated or deleted: taking the lock changes no byte of it.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from hwnas.errors import HwnasError

LOCK = ".lock"


@contextlib.contextmanager
def dir_lock(directory: str | Path) -> Iterator[None]:
    """Hold ``directory``'s lock (creating the directory); HwnasError if another process holds it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK, "a")
    except OSError as exc:
        raise HwnasError(f"cannot lock {directory}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HwnasError(
                f"{directory} is in use by another hwnas command still running; wait for it to finish or stop it"
            ) from None
        except OSError as exc:
            raise HwnasError(f"cannot lock {directory}: {exc.strerror or exc}") from None
        yield
