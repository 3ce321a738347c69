"""Optuna storages by URL, safe to share: opened from several processes at once, never printed with a password.

Several ``hwnas search`` workers (local processes or other machines) share one study through one
RDB storage. What they do to it that must not interleave (creating Optuna's tables, creating a
study, claiming the next trial) runs under :class:`StorageLock`: a PostgreSQL advisory lock, or a
file lock beside a SQLite file. Other RDBs get no lock (one worker per study there).

A URL may hold a password (``postgresql://user:pw@host/db`` or ``?password=``); everything hwnas
prints, logs or writes shows it through :func:`redact`, and errors pass through :func:`scrub`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from hwnas.errors import HwnasError

HEARTBEAT_S = 10
"""Seconds between a running trial's heartbeats; a trial silent for twice this is failed as stale."""

_log = logging.getLogger(__name__)

MASK = "***"
_QUERY_SECRET = re.compile(r"([?&][^=&]*pass[^=&]*=)([^&]*)", re.IGNORECASE)
_USERINFO = re.compile(r"(//[^/@:]*:)([^/@]*)@")


def redact(url: str) -> str:
    """``url`` with its password (in the user part or the query) replaced by ``***``."""
    return _QUERY_SECRET.sub(rf"\g<1>{MASK}", _USERINFO.sub(rf"\g<1>{MASK}@", url))


def secrets(url: str) -> list[str]:
    """The passwords written in ``url`` (as written, and as SQLAlchemy decodes them)."""
    found = [m.group(2) for m in _USERINFO.finditer(url)] + [m.group(2) for m in _QUERY_SECRET.finditer(url)]
    with contextlib.suppress(Exception):
        password = make_url(url).password
        if password:
            found.append(str(password))
    return [s for s in found if s]


def scrub(text: str, url: str) -> str:
    """``text`` (an error from the driver, say) with ``url`` redacted and its passwords masked."""
    text = text.replace(url, redact(url))
    for secret in sorted(secrets(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def storage_error(url: str, exc: BaseException, doing: str = "cannot open storage") -> HwnasError:
    """One line for a storage failure: what failed, the redacted URL, the first line of the cause."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return HwnasError(f"{doing} {redact(url)!r}: {scrub(first, url)}")


class StorageLock:
    """A mutex shared by every process using the storage at ``url``, one per ``name``.

    PostgreSQL: a session advisory lock (released by the server if the holder dies). SQLite: an
    exclusive ``flock`` on ``FILE.lock`` beside the database. Reentrant use is not supported.
    """

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        self.database = parsed.database
        self.key = int.from_bytes(hashlib.sha256(f"hwnas:{name}".encode()).digest()[:8], "big", signed=True)
        self._engine: Any = None
        self._conn: Any = None
        self._file: IO[str] | None = None

    def __enter__(self) -> StorageLock:
        if self.backend == "postgresql":
            if self._engine is None:
                self._engine = create_engine(self.url, poolclass=NullPool)
            self._conn = self._engine.connect()
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        elif self.backend == "sqlite" and self.database not in (None, "", ":memory:"):
            self._file = open(f"{self.database}.lock", "a")  # held until __exit__
            fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            finally:
                self._conn.close()
                self._conn = None
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def open_storage(
    url: str, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, with heartbeats (``on_stale`` is called for each trial failed
    as stale); its tables are created under a lock, so workers may start at the same moment."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what resumption needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            lock = StorageLock(url, "tables")
            try:
                with lock:
                    return optuna.storages.RDBStorage(
                        url,
                        engine_kwargs=engine,
                        heartbeat_interval=HEARTBEAT_S,
                        heartbeat_stale_trial_callback=on_stale,
                    )
            finally:
                lock.close()
    except Exception as exc:  # SQLAlchemy raises many kinds: bad scheme, no driver, no server
        raise storage_error(url, exc) from None


@contextlib.contextmanager
def heartbeats(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``HEARTBEAT_S`` seconds while the block runs."""
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or HEARTBEAT_S

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # a lost connection: the next beat may get through
                _log.warning("heartbeat of trial %d failed: %s", trial_id, type(exc).__name__)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def revive_silent_trials(study: optuna.Study) -> list[int]:
    """Give every RUNNING trial that started over two heartbeat intervals ago and never recorded a
    heartbeat one heartbeat now, so that Optuna's stale check (which skips trials without one) fails
    it one grace period later like any dead worker's trial; returns their ids.

    A worker killed between ``ask`` and its first heartbeat (two transactions) left such a trial:
    the rerun then waited for it forever (seen once under load in the kill -9 test on PostgreSQL).
    A live trial given a heartbeat this way loses nothing: it records its own."""
    storage = getattr(study._storage, "_backend", study._storage)
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        return []
    cutoff = datetime.now() - timedelta(seconds=2 * interval)
    running = [
        t._trial_id
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and t.datetime_start < cutoff
    ]
    if not running:
        return []
    query = sqlalchemy.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
        sqlalchemy.bindparam("ids", expanding=True)
    )
    with storage.engine.connect() as connection:
        beating = {row[0] for row in connection.execute(query, {"ids": running})}
    silent = [trial_id for trial_id in running if trial_id not in beating]
    for trial_id in silent:
        storage.record_heartbeat(trial_id)
    return silent
