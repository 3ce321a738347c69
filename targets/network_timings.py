"""Measured end-to-end latency of whole subnets on a target, cached in the target's store.

A subnet's network measurement (compiled by TVM, run by the Relax VM on the device, see
:mod:`hwnas.targets.tvm_measures`) is looked up in the target's SQLite store first; only subnets never
measured are compiled and timed, and each result is committed at once. So ``hwnas measure`` and
``hwnas compare`` never measure a subnet twice, and what they measure also feeds the predictor's
calibration and evaluation at the next ``hwnas predictor fit``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.targets.driver import HOST_CORES, network_jobs, run_jobs
from hwnas.targets.session import DEFAULT_TIMING, Timing, open_session
from hwnas.targets.store import Measurement, Store, network_key
from hwnas.targets.target import Target


def measure_networks(
    target: Target, archs: Sequence[Arch], resolution: int, timing: Timing = DEFAULT_TIMING, progress: bool = True
) -> dict[Arch, Measurement]:
    """The measurement of every arch (deployment scale) at ``resolution``, measuring what the store lacks."""
    from hwnas.targets import tvm_measures

    with Store.for_target(target) as store:
        keys = {arch: network_key(arch, resolution) for arch in archs}
        todo = set(store.missing(keys.values()))
        if todo:
            pending = [arch for arch, key in keys.items() if key in todo]
            with store.exclusive(), open_session(target) as session:
                measure = tvm_measures.network_measure(session, timing)
                jobs = network_jobs(pending, resolution, measure)
                reference = tvm_measures.reference_reader(session, timing)
                report = run_jobs(store, jobs, progress, build_workers=HOST_CORES, reference=reference)
            if report.failed:
                what, error = report.failed[0]
                raise HwnasError(f"measuring on target {target.name!r} failed: {what}: {error}")
        found = {arch: store.get(key) for arch, key in keys.items()}
    return {arch: m for arch, m in found.items() if m is not None}
