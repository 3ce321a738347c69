"""The profiling driver: measure what the store lacks, one job at a time, each committed at once.

The driver knows nothing about TVM. A measure function takes one configuration, compiles what it
measures and returns a :data:`Timer`, which times it on the device (per-repeat milliseconds);
:mod:`hwnas.targets.tvm_measures` builds the real ones for a session on a target, and tests pass fakes.
Compiling takes most of a profile (a whole network: about 3 s to compile, 0.3 s to time) and
runs on the host, so ``build_workers`` threads compile a chunk of jobs at once; the chunk is then
timed one job at a time with the compiler idle, so nothing else runs beside a timed kernel.
A job whose build or timing raises (a failed compile, a dropped connection) is reported and
skipped, and is tried again by the next run; KeyboardInterrupt stops the run, and everything
measured before it is already in the store.

With a ``reference`` (a function timing a fixed reference network on the device, see
:func:`hwnas.targets.tvm_measures.reference_reader`), every batch of ``BUILD_CHUNK`` timed jobs is
bracketed by two readings, and each row of the batch records their mean (or, when they disagree,
the median of them and a third): the store reads latencies relative to it, so rows measured while
the device ran fast and slow stay comparable. A run killed mid-batch leaves that batch's rows with
the opening reading.

What one ``layer``, ``stem`` or ``head`` measurement covers is defined by the measure functions
of :mod:`hwnas.targets.tvm_measures`; the predictor sums exactly those over a network.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from tqdm import tqdm

from hwnas.arch import Arch, LayerConfig
from hwnas.errors import HwnasError
from hwnas.targets.configs import PartConfig
from hwnas.targets.store import Key, Store, layer_key, network_key, part_key

_log = logging.getLogger(__name__)

Timer = Callable[[], Sequence[float]]
"""Times what a measure function compiled, on the device: per-repeat milliseconds."""


class LayerMeasure(Protocol):
    """Compiles one layer configuration's kernels for the target; the Timer times them."""

    def __call__(self, config: LayerConfig) -> Timer: ...


class PartMeasure(Protocol):
    """Compiles a real-valued part's kernel (stem or head) at a resolution; the Timer times it."""

    def __call__(self, part: PartConfig, resolution: int) -> Timer: ...


class NetworkMeasure(Protocol):
    """Compiles one whole subnet end to end at a resolution; the Timer times it.

    The network compiler provides it (see :func:`hwnas.targets.tvm_measures.network_measure`).
    """

    def __call__(self, arch: Arch, resolution: int) -> Timer: ...


@dataclass(frozen=True)
class Job:
    key: Key
    label: str
    build: Callable[[], Timer]


@dataclass
class Report:
    """What one profiling run did."""

    total: int = 0
    already: int = 0
    measured: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None
    references: list[float] = field(default_factory=list)
    """Every reading of the reference network in this run, in order (ms)."""

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "already_measured": self.already,
            "measured": self.measured,
            "failed": [{"what": what, "error": error} for what, error in self.failed],
            "stopped": self.stopped,
            "reference_ms": [round(r, 4) for r in self.references],
        }


def layer_jobs(configs: Sequence[LayerConfig], resolution: int, measure: LayerMeasure) -> list[Job]:
    return [Job(layer_key(c, resolution), f"layer {c}", lambda c=c: measure(c)) for c in configs]


def part_jobs(parts: Sequence[PartConfig], resolution: int, measure: PartMeasure) -> list[Job]:
    return [Job(part_key(p, resolution), str(p), lambda p=p: measure(p, resolution)) for p in parts]


def network_jobs(archs: Sequence[Arch], resolution: int, measure: NetworkMeasure) -> list[Job]:
    return [Job(network_key(a, resolution), f"network {a}", lambda a=a: measure(a, resolution)) for a in archs]


BUILD_CHUNK = 8
"""Jobs compiled together before they are timed, when builds run in parallel."""
HOST_CORES = os.cpu_count() or 1
"""Build threads of a profile: the host compiles while nothing is timed, with all its cores."""
REFERENCE_MOVED = 0.1
"""Readings before and after a batch further apart than this (relative): the device changed speed
during the batch (this VM has a "two speeds" state: the reference network read 1.6 ms, then 2.9 ms
after a batch whose networks had all run at the fast speed), so which rows ran at which speed is
unknown. The batch is timed again between fresh readings, up to ``RETIMES`` times; rows carry the
mean of the two readings of the pass whose readings agree."""
RETIMES = 2
"""Passes over a batch whose readings disagree; after the last, the rows keep that pass's timings
and carry the median of its two readings and a third (logged)."""
SLOW_STATE = 1.15
"""A batch whose (agreeing) readings are more than this times the fastest reference known (the
store's nominal one or the run's fastest reading, whichever is faster) was timed in one of the
device's slow states, which slow networks unevenly (here the reference 1.9x, other networks
1.25-1.7x), so the reference ratio corrects them only roughly: such a batch is timed once more at
the end of the run, when the state has usually passed, and its rows replaced. Batches are judged
again once the run's timings are done: a run that began in a slow state learns only later how
fast the device is (docs/latency.md)."""


SLOW_STATE_WAIT_S = 90.0
"""How long the pass at the end of a run waits for the device to leave a slow state before timing
its slow batches again (the reference read every :data:`SLOW_STATE_POLL_S`). A short run, such as
``compare`` measuring a dozen subnets, otherwise re-times them in the same slow state: in one
pipeline's compare the reference read 2.4x its nominal through a batch of 8 of its 14 subnets, which
read 7-38 % below their predictions (the next batch, at 1.02x: 1-21 %): the state slowed them less than the
reference."""
SLOW_STATE_POLL_S = 5.0


class DeviceLost(HwnasError):
    """The device stopped answering mid-run: the run stops at once (what it stored stays stored)."""


class RetryLater(HwnasError):
    """A timing the device could not give just now (it stayed in a slow window): the job goes to
    the end of the run and is timed once more there, from what it already compiled."""


def run_jobs(
    store: Store,
    jobs: Sequence[Job],
    progress: bool = True,
    max_failures_in_a_row: int = 5,
    build_workers: int = 1,
    reference: Callable[[], float] | None = None,
) -> Report:
    """Measure every job whose key the store lacks, in order, committing each one.

    With ``build_workers`` > 1, chunks of :data:`BUILD_CHUNK` jobs are compiled by that many
    threads, then timed in order (see the module docstring). A job whose timing raises
    :class:`RetryLater` is timed again after the others; if it raises again it fails. After
    ``max_failures_in_a_row`` consecutive failures (a lost device, a broken kernel build) the run
    stops, with the reason in the report, rather than failing every remaining job. With a
    ``reference``, batches are bracketed by its readings (see the module docstring).
    """
    unique = list({job.key: job for job in jobs}.values())
    todo = set(store.missing(job.key for job in unique))
    pending = [job for job in unique if job.key in todo]
    report = Report(total=len(unique), already=len(unique) - len(pending))
    deferred: list[tuple[Job, Timer]] = []
    streak = 0
    batch: list[tuple[Key, Timer]] = []  # rows stored since the batch's opening reading, with their timers
    # every batch of this run: its reference, its rows, and whether it was slow when it closed
    closed: list[tuple[float, list[tuple[Key, Timer]], bool]] = []

    def read() -> float:
        ms = reference()  # type: ignore[misc]
        report.references.append(ms)
        return ms

    def open_batch() -> None:
        if reference is not None:
            read()

    def close_batch(final: bool = False) -> None:
        """The closing reading(s); the batch's rows get the reference (see REFERENCE_MOVED, SLOW_STATE)."""
        if reference is None or not batch:
            return
        before, after = report.references[-1], read()
        for _ in range(RETIMES):
            if abs(after / before - 1) <= REFERENCE_MOVED or not _retime(before, after):
                break
            before, after = report.references[-2], report.references[-1]
        value = (before + after) / 2
        if abs(after / before - 1) > REFERENCE_MOVED:  # still moving: the median with a third reading
            third = read()
            value = sorted((before, after, third))[1]
            _log.warning(
                f"the reference network read {before:.3f} ms before a batch, {after:.3f} and {third:.3f} ms "
                f"after it; its rows take the median, {value:.3f} ms"
            )
        store.set_reference([key for key, _ in batch], value)
        if not final:
            slow, fastest = in_slow_state(value), baseline()
            if slow:
                _log.warning(
                    f"a batch was timed in a slow state of the device (reference {value / fastest:.2f}x the "
                    f"fastest {fastest:.3f} ms): its {len(batch)} rows are timed again at the end of the run"
                )
            closed.append((value, list(batch), slow))
        batch.clear()

    def baseline() -> float:
        """What a batch's reference is judged against: the faster of the store's nominal reference and
        this run's fastest reading (there is one by the time a batch closes). A store whose first
        batch was timed in a slow state has a slow nominal reference; judged against it alone, later
        slow batches would pass (SLOW_STATE)."""
        nominal = store.nominal_reference_ms()
        return min(report.references + ([nominal] if nominal else []))

    def in_slow_state(ms: float) -> bool:
        return ms > SLOW_STATE * baseline()

    def retime_slow_batches() -> None:
        """One more pass over each batch timed in a slow state (its rows replaced), bracketed as any,
        once the device has left the slow state or :data:`SLOW_STATE_WAIT_S` has passed. Judged now,
        against the run's fastest reading: a run that began in a slow state learns only later that
        its first batches were slow."""
        slow_batches = [rows for value, rows, _ in closed if in_slow_state(value)]
        late = sum(not flagged and in_slow_state(value) for value, _, flagged in closed)
        if late:
            _log.warning(
                f"{late} batch(es) of this run were timed before a reading {baseline():.3f} ms showed the device "
                "had been in a slow state: their rows are timed again at the end of the run"
            )
        opened = bool(slow_batches) and wait_for_fast_state(len(slow_batches))
        for i, rows in enumerate(slow_batches):
            batch[:] = rows
            if _retime_pass(opening=not (opened and i == 0)):
                close_batch(final=True)
            batch.clear()

    def wait_for_fast_state(batches: int) -> bool:
        """Read the reference until it is back within SLOW_STATE of the fastest known or the wait is over;
        True when it read (that reading opens the next pass)."""
        fastest = baseline()
        if not in_slow_state(report.references[-1]):
            return False
        _log.warning(
            f"the device is in a slow state (reference {report.references[-1] / fastest:.2f}x the fastest "
            f"{fastest:.3f} ms): waiting up to {SLOW_STATE_WAIT_S:.0f} s for it to pass before timing "
            f"{batches} batch(es) again"
        )
        deadline = time.monotonic() + SLOW_STATE_WAIT_S
        while True:
            value = read()
            if not in_slow_state(value):
                return True
            if time.monotonic() >= deadline:
                _log.warning(
                    f"the device stayed in its slow state (reference {value / fastest:.2f}x the fastest): the "
                    "batches are timed again in it, and their rows read against that reference"
                )
                return True
            time.sleep(SLOW_STATE_POLL_S)

    def _retime(before: float, after: float) -> bool:
        """Time the batch again between two fresh readings; False (rows kept) when a timing fails."""
        _log.warning(
            f"the reference network read {before:.3f} ms before a batch and {after:.3f} ms after it: "
            f"the device changed speed meanwhile, timing the batch's {len(batch)} rows again"
        )
        if not _retime_pass():
            return False
        read()
        return True

    def _retime_pass(opening: bool = True) -> bool:
        """An opening reading (unless one was just taken), then the batch's rows timed again and
        replaced; False (rows kept) on failure."""
        if opening:
            read()
        try:
            samples = [timer() for _, timer in batch]
        except Exception as exc:  # a slow window or a lost device: the earlier rows stand
            _log.warning(f"timing the batch again failed ({exc}); its earlier timings stand")
            return False
        store.replace([(key, timed) for (key, _), timed in zip(batch, samples, strict=True)], report.references[-1])
        return True

    bar = tqdm(total=len(pending), desc="profiling", unit="kernel", disable=not progress, leave=False)

    def attempt(job: Job, built: Timer | Exception, last_try: bool) -> bool:
        """Time and store one job; False when the run must stop."""
        nonlocal streak
        bar.set_postfix_str(job.label, refresh=False)
        try:
            if isinstance(built, Exception):
                raise built
            samples = built()
        except Exception as exc:  # a failed compile or timing: report, skip, go on
            if isinstance(exc, RetryLater) and not last_try:
                deferred.append((job, built))  # built is a Timer: only timings raise RetryLater
                return True
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            report.failed.append((job.label, message))
            _log.warning(f"failed: {job.label}: {message}")
            bar.update()
            streak += 1
            if isinstance(exc, DeviceLost):
                report.stopped = f"stopped: {message}; what was measured is stored, rerun to resume"
                return False
            if streak == max_failures_in_a_row:
                report.stopped = f"stopped after {streak} failures in a row; rerun to resume"
                return False
            return True
        bar.update()
        streak = 0
        store.add(job.key, samples, report.references[-1] if reference is not None else None)
        batch.append((job.key, built))
        report.measured += 1
        return True

    def timed(items: Iterable[tuple[Job, Timer | Exception]], last_try: bool) -> bool:
        """Attempt each job, a batch of BUILD_CHUNK between reference readings; False when stopped."""
        going = True
        for i, (job, built) in enumerate(items):
            if i % BUILD_CHUNK == 0:
                open_batch()
            going = attempt(job, built, last_try)
            if not going:
                break
            if i % BUILD_CHUNK == BUILD_CHUNK - 1:
                close_batch()
        close_batch()
        return going

    with ThreadPoolExecutor(build_workers) if build_workers > 1 else nullcontext() as pool:
        if timed(_built(pending, pool), last_try=False) and timed(deferred, last_try=True):
            retime_slow_batches()
    bar.close()
    return report


def _built(jobs: Sequence[Job], pool: ThreadPoolExecutor | None) -> Iterator[tuple[Job, Timer | Exception]]:
    """Each job with its Timer (or the exception its build raised): built one by one without a
    pool, else a chunk at a time, every build of the chunk finished before the first is yielded."""
    if pool is None:
        for job in jobs:
            yield job, _try_build(job)
        return
    for start in range(0, len(jobs), BUILD_CHUNK):
        chunk = jobs[start : start + BUILD_CHUNK]
        yield from zip(chunk, list(pool.map(_try_build, chunk)), strict=True)


def _try_build(job: Job) -> Timer | Exception:
    try:
        return job.build()
    except Exception as exc:
        return exc
