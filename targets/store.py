"""The measurement store: one SQLite file per target, every measurement committed as soon as it exists.

``<data dir>/measurements/<target>.sqlite`` holds one row per measurement, keyed by

- the target's fingerprint (its resolved TVM target and threads: editing the target file or
  moving ``HWNAS_HOME`` to another CPU starts a fresh set instead of mixing machines),
- the TVM version (a new compiler means new kernels),
- the measurement method of the row's kind (``MEASURE_METHODS``: which kernels and what one
  measurement covers, changed whenever the kernels or that definition change, so stale rows of
  that kind stop counting while the other kinds keep theirs),
- the kind (``layer``, ``stem``, ``head`` or ``network``), the configuration as canonical JSON
  (sorted keys, no spaces) and the input resolution.

Each row records the median over the repeats, the spread (the inter-quartile range of the
per-repeat times, robust to one stray slow repeat on a shared machine), the number of repeats,
when it was measured, whether the device was emulated (``emulated``: a qemu board's timings are
not a board's; ``hwnas predictor fit`` refuses them) and the reference network's latency timed
beside it (``reference_ms``, see :func:`hwnas.targets.tvm_measures.reference_reader`). The device
drifts (the same network took 8.95 ms one day and 17.0 ms another here), so a row's latency is
read in the store's *nominal* units: ``median_ms * nominal / reference_ms``, where the nominal
reference is the first one the store recorded (:meth:`Store.nominal_reference_ms`), fixed from
then on. Rows without a reference (written by hand or by tests) are read as they are.

The file is in WAL mode and every ``add`` commits, so killing a profiling run loses at most the
measurement in flight; ``missing`` tells the profiler what is left, and a key already present is
never measured or written again.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.arch import Arch, LayerConfig
from hwnas.errors import HwnasError
from hwnas.paths import data_dir
from hwnas.targets.configs import PartConfig
from hwnas.targets.target import Target

KINDS = ("layer", "stem", "head", "network")
MEASURE_METHODS = {"layer": "tiles-8", "stem": "reference-6", "head": "reference-6", "network": "tiles-8"}
"""Version of what :mod:`hwnas.targets.tvm_measures` measures, per kind; bump a kind's when its kernels
or that definition change (and ``network`` with any of them: a network runs them all). The history
of the versions is in docs/profiling.md."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    target TEXT NOT NULL,
    tvm_version TEXT NOT NULL,
    method TEXT NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    resolution INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    spread_ms REAL NOT NULL,
    repeats INTEGER NOT NULL,
    measured_at TEXT NOT NULL,
    emulated INTEGER NOT NULL DEFAULT 0,
    reference_ms REAL,
    PRIMARY KEY (target, tvm_version, method, kind, config, resolution)
)
"""


def canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Key:
    """What one measurement is of."""

    kind: str
    config: str
    resolution: int

    @classmethod
    def of(cls, kind: str, config: Mapping[str, Any], resolution: int) -> Key:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return cls(kind, canonical(config), resolution)

    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config)

    def layer(self) -> LayerConfig:
        """The layer configuration a ``layer`` key is of."""
        return LayerConfig.from_json(self.config_json())

    def arch(self) -> Arch:
        """The subnet a ``network`` key is of."""
        return Arch.from_json(self.config_json())


def layer_key(config: LayerConfig, resolution: int) -> Key:
    return Key.of("layer", config.to_json(), resolution)


def part_key(part: PartConfig, resolution: int) -> Key:
    return Key.of(part.kind, part.to_json(), resolution)


def network_key(arch: Arch, resolution: int) -> Key:
    return Key.of("network", arch.to_json(), resolution)


_COLUMNS = "median_ms, spread_ms, repeats, measured_at, reference_ms"


@dataclass(frozen=True)
class Measurement:
    """One row; ``scale`` turns its raw milliseconds into the store's nominal units (module docstring)."""

    key: Key
    median_ms: float
    spread_ms: float
    repeats: int
    measured_at: str
    reference_ms: float | None = None
    scale: float = 1.0

    @property
    def nominal_ms(self) -> float:
        """The latency in the store's nominal units: what predictors learn and ``measure`` reports."""
        return self.median_ms * self.scale


def summarize(samples_ms: Sequence[float]) -> tuple[float, float]:
    """Median and inter-quartile range of per-repeat times."""
    if len(samples_ms) == 0:
        raise ValueError("a measurement needs at least one repeat")
    q25, q50, q75 = np.percentile(np.asarray(samples_ms, dtype=float), [25, 50, 75])
    return float(q50), float(q75 - q25)


LOCK_TIMEOUT_S = 30.0
"""How long a read or a commit waits for another process's write before giving up."""


def store_error(path: Path, exc: Exception) -> HwnasError:
    """One line for a store that cannot be used: damaged, locked by another process, unwritable."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return HwnasError(f"measurement store {path} is locked by another process ({text}); try again when it is done")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return HwnasError(f"measurement store {path} is damaged ({text}); move it aside to start a new one")
    return HwnasError(f"cannot use the measurement store {path}: {text}")


def store_path(target_name: str) -> Path:
    return data_dir() / "measurements" / f"{target_name}.sqlite"


def tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


class Store:
    """Measurements of one target, TVM version and methods (rows of others stay in the file, unseen)."""

    def __init__(
        self,
        path: Path,
        target_fingerprint: str,
        version: str,
        methods: Mapping[str, str] = MEASURE_METHODS,
        emulated: bool = False,
    ) -> None:
        self.path = path
        self.target = target_fingerprint
        self.version = version
        self.methods = dict(methods)
        self.emulated = emulated
        self._nominal: float | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise store_error(path, exc) from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(measurements)")}
            if "emulated" not in columns:  # a store written before emulated boards: all its rows are real
                self._db.execute("ALTER TABLE measurements ADD COLUMN emulated INTEGER NOT NULL DEFAULT 0")
            if "reference_ms" not in columns:  # a store written before references existed
                self._db.execute("ALTER TABLE measurements ADD COLUMN reference_ms REAL")
            self._db.commit()
            self._db.execute("SELECT COUNT(*) FROM measurements").fetchone()
        except sqlite3.Error as exc:
            self._db.close()
            raise store_error(path, exc) from None

    @classmethod
    def for_target(cls, target: Target, version: str | None = None) -> Store:
        """The target's store in the data directory, for the installed TVM unless ``version`` is given."""
        return cls(
            store_path(target.name),
            target.fingerprint(),
            version or tvm_version(),
            emulated=target.connection.emulated,
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's profiling lock: two profilers of one target would measure the same
        keys twice and disturb each other's timings. Released when the block ends or the process dies."""
        with open(self.path.with_name(self.path.name + ".lock"), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise HwnasError(f"another profiler is using {self.path}; wait for it to finish or stop it") from None
            yield

    def _current(self, kind: str | None = None) -> tuple[str, tuple[str, ...]]:
        """SQL condition and parameters: this target and version, each kind at its own method."""
        kinds = [kind] if kind else list(KINDS)
        methods = " OR ".join("(kind = ? AND method = ?)" for _ in kinds)
        return f"target = ? AND tvm_version = ? AND ({methods})", (
            self.target,
            self.version,
            *(v for k in kinds for v in (k, self.methods[k])),
        )

    def _present(self) -> set[Key]:
        where, params = self._current()
        rows = self._db.execute(f"SELECT kind, config, resolution FROM measurements WHERE {where}", params)
        return {Key(*row) for row in rows}

    def missing(self, keys: Iterable[Key]) -> list[Key]:
        """The keys not measured yet, in the given order, without duplicates."""
        present = self._present()
        return [key for key in dict.fromkeys(keys) if key not in present]

    def nominal_reference_ms(self) -> float | None:
        """The reference latency that defines this store's units: the first one recorded (None before any)."""
        if self._nominal is None:
            where, params = self._current()
            row = self._db.execute(
                f"SELECT reference_ms FROM measurements WHERE {where} AND reference_ms IS NOT NULL"
                " ORDER BY rowid LIMIT 1",
                params,
            ).fetchone()
            self._nominal = float(row[0]) if row else None
        return self._nominal

    def _row(
        self, key: Key, median: float, spread: float, repeats: int, when: str, reference: float | None
    ) -> Measurement:
        nominal = self.nominal_reference_ms() if reference else None  # one query, then cached
        scale = nominal / reference if nominal and reference else 1.0
        return Measurement(key, median, spread, repeats, when, reference, scale)

    def add(self, key: Key, samples_ms: Sequence[float], reference_ms: float | None = None) -> Measurement:
        """Record one measurement (with the reference latency timed beside it) and commit; a key
        already present keeps its first measurement."""
        return self._write([(key, samples_ms)], reference_ms, "INSERT OR IGNORE")[0]

    def replace(self, rows: Sequence[tuple[Key, Sequence[float]]], reference_ms: float | None) -> None:
        """Overwrite the rows of a batch timed again (the driver's), all in one transaction."""
        self._write(rows, reference_ms, "INSERT OR REPLACE")

    def _write(
        self, rows: Sequence[tuple[Key, Sequence[float]]], reference_ms: float | None, verb: str
    ) -> list[Measurement]:
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        written = []
        try:
            with self._db:  # one transaction, committed on success
                for key, samples_ms in rows:
                    median, spread = summarize(samples_ms)
                    row = (self.target, self.version, self.methods[key.kind], key.kind, key.config, key.resolution)
                    self._db.execute(
                        f"{verb} INTO measurements (target, tvm_version, method, kind, config, resolution, "
                        f"{_COLUMNS}, emulated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*row, median, spread, len(samples_ms), when, reference_ms, int(self.emulated)),
                    )
                    written.append(self._row(key, median, spread, len(samples_ms), when, reference_ms))
        except sqlite3.Error as exc:  # locked past the timeout, a full disk, a damaged file
            raise store_error(self.path, exc) from None
        return written

    def set_reference(self, keys: Iterable[Key], reference_ms: float) -> None:
        """Replace the reference of rows stored before their batch's closing reading (the driver's)."""
        self._nominal = None  # the first batch's rows define it: read it again
        where, params = self._current()
        with self._db:
            self._db.executemany(
                f"UPDATE measurements SET reference_ms = ? WHERE {where}"
                " AND kind = ? AND config = ? AND resolution = ?",
                [(reference_ms, *params, k.kind, k.config, k.resolution) for k in keys],
            )

    def references(self) -> list[tuple[str, float]]:
        """(measured at, reference ms) of every batch stored, oldest first: the device's speed over time."""
        where, params = self._current()
        rows = self._db.execute(
            f"SELECT MIN(measured_at), reference_ms FROM measurements WHERE {where} AND reference_ms IS NOT NULL"
            " GROUP BY reference_ms ORDER BY MIN(rowid)",
            params,
        )
        return [(when, float(ms)) for when, ms in rows]

    def discard(self, keys: Iterable[Key]) -> None:
        """Remove the rows of ``keys`` (to measure them again: only ever on a private copy of a store)."""
        where, params = self._current()
        with self._db:
            self._db.executemany(
                f"DELETE FROM measurements WHERE {where} AND kind = ? AND config = ? AND resolution = ?",
                [(*params, k.kind, k.config, k.resolution) for k in keys],
            )

    def copy_to(self, path: Path) -> None:
        """A consistent copy of the whole file at ``path`` (SQLite's online backup)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as copy:
            self._db.backup(copy)
        copy.close()

    def get(self, key: Key) -> Measurement | None:
        """The measurement of ``key``, or None if it was never made."""
        where, params = self._current(key.kind)
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM measurements WHERE {where} AND config = ? AND resolution = ?",
            (*params, key.config, key.resolution),
        ).fetchone()
        return self._row(key, *row) if row else None

    def measurements(self, kind: str | None = None) -> list[Measurement]:
        """All measurements of this target, TVM version and methods (of one kind if given), oldest first."""
        where, params = self._current(kind)
        rows = self._db.execute(
            f"SELECT kind, config, resolution, {_COLUMNS} FROM measurements WHERE {where} ORDER BY rowid", params
        )
        return [self._row(Key(k, c, r), *rest) for k, c, r, *rest in rows]

    def emulated_rows(self) -> int:
        """How many of this target's current measurements were taken on an emulated device."""
        where, params = self._current()
        row = self._db.execute(f"SELECT COUNT(*) FROM measurements WHERE {where} AND emulated", params).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """Number of measurements per kind."""
        found = dict.fromkeys(KINDS, 0)
        for m in self.measurements():
            found[m.key.kind] += 1
        return found
