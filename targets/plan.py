"""Profile a target: choose what to measure, measure what its store lacks through TVM, report.

Shared by ``hwnas profile`` and the pipeline, which both fail (:func:`check_complete`) when a job
stayed unmeasured, so a profile with failed jobs is never taken for a finished one. What is
measured: the space's distinct layer configurations at the resolution (all, or a seeded
sample), the stem and head configurations, and a seeded sample of whole subnets end to end.
Everything goes through the resumable driver of :mod:`hwnas.targets.driver`, so an interrupted
profile continues where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hwnas.errors import HwnasError
from hwnas.space import NASBNN, SearchSpace
from hwnas.targets.configs import layer_configs, part_configs, sample_configs, sample_networks
from hwnas.targets.driver import (
    HOST_CORES,
    Report,
    layer_jobs,
    network_jobs,
    part_jobs,
    run_jobs,
)
from hwnas.targets.session import DEFAULT_TIMING, Timing, open_session
from hwnas.targets.store import Store, layer_key, network_key, part_key
from hwnas.targets.target import Target

_log = logging.getLogger(__name__)


DEFAULT_NETWORKS = 60
"""Whole subnets a profile measures by default: the predictor's calibration trains on about 80 %
of them (46 of these 60) and judges itself on the rest (14), see :mod:`hwnas.predictors.latency`."""


@dataclass(frozen=True)
class Plan:
    """What one profiling run covers (``layers`` None: every layer configuration)."""

    resolution: int = 224
    layers: int | None = None
    networks: int = DEFAULT_NETWORKS
    seed: int = 0
    space: SearchSpace = NASBNN
    """The deployment space profiled (:func:`hwnas.space.deployment_space`)."""


def profile_target(
    target: Target, plan: Plan, timing: Timing = DEFAULT_TIMING, progress: bool = True
) -> dict[str, Any]:
    """Measure what ``target``'s store lacks of ``plan``; returns the per-kind reports and the store's counts."""
    from hwnas.targets import tvm_measures

    res = plan.resolution
    configs = sample_configs(layer_configs(plan.space, res), plan.layers, plan.seed)
    archs = sample_networks(plan.space, plan.networks, plan.seed) if plan.networks else []
    parts = part_configs(plan.space, res) if configs or archs else []  # every prediction adds them
    reports: dict[str, Report] = {}
    slow_batches, slow_s = 0, 0.0
    with Store.for_target(target) as store:

        def missing() -> dict[str, list]:
            return {
                "layers": store.missing(layer_key(c, res) for c in configs),
                "parts": store.missing(part_key(p, res) for p in parts),
                "networks": store.missing(network_key(a, res) for a in archs),
            }

        left = missing()
        _log.info(
            f"target {target.name} ({target.connection}): {len(configs)} layer configs, {len(parts)} stem/head "
            f"configs and {len(archs)} networks, {' + '.join(str(len(v)) for v in left.values())} to measure; "
            f"store {store.path}"
        )
        if any(left.values()):
            with store.exclusive(), open_session(target) as session:
                reference = tvm_measures.reference_reader(session, timing)
                jobs = {
                    "layers": lambda: layer_jobs(configs, res, tvm_measures.layer_measure(session, timing)),
                    "parts": lambda: part_jobs(parts, res, tvm_measures.part_measure(session, timing)),
                    "networks": lambda: network_jobs(
                        archs, res, tvm_measures.network_measure(session, timing, plan.space)
                    ),
                }
                for kind, make_jobs in jobs.items():
                    if left[kind]:
                        reports[kind] = run_jobs(
                            store, make_jobs(), progress, build_workers=HOST_CORES, reference=reference
                        )
                if session.slow_windows:
                    slow_batches, slow_s = session.slow_windows.slow_batches, session.slow_windows.slow_s
        return {
            "target": target.name,
            "store": str(store.path),
            "resolution": res,
            "runs": {kind: report.to_json() for kind, report in reports.items()},
            "slow_window_batches": slow_batches,
            "slow_window_s": round(slow_s, 1),
            "stored": store.counts(),
            "unmeasured": {kind: len(keys) for kind, keys in missing().items()},
        }


def check_complete(result: dict[str, Any]) -> None:
    """Raise one HwnasError when a profile left jobs unmeasured (failed, or stopped before them)."""
    left = result["unmeasured"]
    if any(left.values()):
        failed = sum(len(run["failed"]) for run in result["runs"].values())
        raise HwnasError(
            f"profile of {result['target']} incomplete: {sum(left.values())} jobs unmeasured "
            f"({', '.join(f'{n} {kind}' for kind, n in left.items() if n)}; {failed} failed in this run); "
            "rerun to retry them"
        )
