"""The profiling driver: measure what the store lacks, one job at a time, each committed at once.

The driver knows nothing about TVM. A measure function takes one configuration and returns the
per-repeat times in milliseconds; :mod:`targets.measure_tvm` builds the real ones for a session on
a target, and tests pass fakes. A job whose measure function raises (a failed compile, a dropped
connection) is reported and skipped, and is tried again by the next run; KeyboardInterrupt stops
the run, and everything measured before it is already in the store.

What one ``layer``, ``stem`` or ``head`` measurement covers is defined by the measure functions
of :mod:`targets.measure_tvm`; the predictor sums exactly those over a network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tqdm import tqdm

from hwnas.arch import Arch
from targets.configs import LayerConfig, PartConfig
from targets.store import Key, Store


class LayerMeasure(Protocol):
    """Per-repeat milliseconds of one layer configuration's kernels on the target."""

    def __call__(self, config: LayerConfig) -> Sequence[float]: ...


class PartMeasure(Protocol):
    """Per-repeat milliseconds of a real-valued part's kernel (stem or head) at a resolution."""

    def __call__(self, part: PartConfig, resolution: int) -> Sequence[float]: ...


class NetworkMeasure(Protocol):
    """Per-repeat milliseconds of one whole subnet, compiled end to end, at a resolution.

    The network compiler provides it (see :func:`targets.measure_tvm.network_measure`).
    """

    def __call__(self, arch: Arch, resolution: int) -> Sequence[float]: ...


@dataclass(frozen=True)
class Job:
    key: Key
    label: str
    run: Callable[[], Sequence[float]]


@dataclass
class Report:
    """What one profiling run did."""

    total: int = 0
    already: int = 0
    measured: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "already_measured": self.already,
            "measured": self.measured,
            "failed": [{"what": what, "error": error} for what, error in self.failed],
            "stopped": self.stopped,
        }


def layer_key(config: LayerConfig, resolution: int) -> Key:
    return Key.of("layer", config.to_json(), resolution)


def part_key(part: PartConfig, resolution: int) -> Key:
    return Key.of(part.kind, part.to_json(), resolution)


def network_key(arch: Arch, resolution: int) -> Key:
    return Key.of("network", arch.to_json(), resolution)


def layer_jobs(configs: Sequence[LayerConfig], resolution: int, measure: LayerMeasure) -> list[Job]:
    return [Job(layer_key(c, resolution), f"layer {c}", lambda c=c: measure(c)) for c in configs]


def part_jobs(parts: Sequence[PartConfig], resolution: int, measure: PartMeasure) -> list[Job]:
    return [Job(part_key(p, resolution), str(p), lambda p=p: measure(p, resolution)) for p in parts]


def network_jobs(archs: Sequence[Arch], resolution: int, measure: NetworkMeasure) -> list[Job]:
    return [Job(network_key(a, resolution), f"network {a}", lambda a=a: measure(a, resolution)) for a in archs]


def run_jobs(store: Store, jobs: Sequence[Job], progress: bool = True, max_failures_in_a_row: int = 5) -> Report:
    """Measure every job whose key the store lacks, in order, committing each one.

    After ``max_failures_in_a_row`` consecutive failures (a lost device, a broken kernel build)
    the run stops, with the reason in the report, rather than failing every remaining job.
    """
    unique = list({job.key: job for job in jobs}.values())
    todo = set(store.missing(job.key for job in unique))
    pending = [job for job in unique if job.key in todo]
    report = Report(total=len(unique), already=len(unique) - len(pending))
    streak = 0
    bar = tqdm(pending, desc="profiling", unit="kernel", disable=not progress, leave=False)
    for job in bar:
        bar.set_postfix_str(job.label, refresh=False)
        try:
            samples = job.run()
        except Exception as exc:  # a failed compile or a lost device: report, skip, go on
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            report.failed.append((job.label, message))
            bar.write(f"failed: {job.label}: {message}")
            streak += 1
            if streak == max_failures_in_a_row:
                report.stopped = f"stopped after {streak} failures in a row; rerun to resume"
                break
            continue
        streak = 0
        store.add(job.key, samples)
        report.measured += 1
    bar.close()
    return report
