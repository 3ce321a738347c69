"""Measured end-to-end latency of whole subnets on a target, cached in the target's store.

A subnet's network measurement (compiled by TVM, run by the Relax VM on the device, see
:mod:`targets.measure_tvm`) is looked up in the target's SQLite store first; only subnets never
measured are compiled and timed, and each result is committed at once. So ``hwnas measure`` and
``hwnas compare`` never measure a subnet twice, and what they measure also feeds the predictor's
calibration and evaluation at the next ``hwnas predictor fit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from targets.profile import HOST_CORES, network_jobs, network_key, run_jobs
from targets.session import open_session
from targets.store import Measurement, Store
from targets.target import Target


@dataclass(frozen=True)
class Timing:
    """How each network is timed (see :meth:`targets.session.Session.time_ms`)."""

    repeat: int = 10
    min_repeat_ms: int = 10  # 20 made a full profile 2 minutes longer for the same medians
    tries: int = 5


DEFAULT_TIMING = Timing()


def measure_networks(
    target: Target, archs: Sequence[Arch], resolution: int, timing: Timing = DEFAULT_TIMING, progress: bool = True
) -> dict[Arch, Measurement]:
    """The measurement of every arch (deployment scale) at ``resolution``, measuring what the store lacks."""
    from targets import measure_tvm

    with Store.for_target(target) as store:
        keys = {arch: network_key(arch, resolution) for arch in archs}
        todo = set(store.missing(keys.values()))
        if todo:
            pending = [arch for arch, key in keys.items() if key in todo]
            with store.exclusive(), open_session(target) as session:
                measure = measure_tvm.network_measure(
                    session, repeat=timing.repeat, min_repeat_ms=timing.min_repeat_ms, tries=timing.tries
                )
                report = run_jobs(store, network_jobs(pending, resolution, measure), progress, build_workers=HOST_CORES)
            if report.failed:
                what, error = report.failed[0]
                raise HwnasError(f"measuring on target {target.name!r} failed: {what}: {error}")
        found = {arch: store.get(key) for arch, key in keys.items()}
    return {arch: m for arch, m in found.items() if m is not None}
