"""Profile a target: choose what to measure, measure what its store lacks through TVM, report.

Shared by ``hwnas profile`` and the pipeline. What is measured: the space's distinct layer
configurations at the resolution (all, or a seeded sample), the stem and head configurations,
and a seeded sample of whole subnets end to end. Everything goes through the resumable driver of
:mod:`targets.profile`, so an interrupted profile continues where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hwnas.commands.output import log
from hwnas.space import NASBNN
from targets.configs import layer_configs, part_configs, sample_configs, sample_networks
from targets.measured import DEFAULT_TIMING, Timing
from targets.profile import (
    HOST_CORES,
    Report,
    layer_jobs,
    layer_key,
    network_jobs,
    network_key,
    part_jobs,
    part_key,
    run_jobs,
)
from targets.session import open_session
from targets.store import Store
from targets.target import Target


@dataclass(frozen=True)
class Plan:
    """What one profiling run covers (``layers`` None: every layer configuration)."""

    resolution: int = 224
    layers: int | None = None
    networks: int = 0
    seed: int = 0


def profile_target(
    target: Target, plan: Plan, timing: Timing = DEFAULT_TIMING, progress: bool = True
) -> dict[str, Any]:
    """Measure what ``target``'s store lacks of ``plan``; returns the per-kind reports and the store's counts."""
    from targets import measure_tvm

    res = plan.resolution
    configs = sample_configs(layer_configs(NASBNN, res), plan.layers, plan.seed)
    parts = part_configs(NASBNN, res) if configs else []  # the predictor needs them with layers
    archs = sample_networks(NASBNN, plan.networks, plan.seed) if plan.networks else []
    reports: dict[str, Report] = {}
    slow_batches, slow_s = 0, 0.0
    with Store.for_target(target) as store:
        left = {
            "layers": store.missing(layer_key(c, res) for c in configs),
            "parts": store.missing(part_key(p, res) for p in parts),
            "networks": store.missing(network_key(a, res) for a in archs),
        }
        log(
            f"target {target.name} ({target.connection}): {len(configs)} layer configs, {len(parts)} stem/head "
            f"configs and {len(archs)} networks, {' + '.join(str(len(v)) for v in left.values())} to measure; "
            f"store {store.path}"
        )
        if any(left.values()):
            with store.exclusive(), open_session(target) as session:
                kw = asdict(timing)
                if left["layers"]:
                    measure = measure_tvm.layer_measure(session, **kw)
                    reports["layers"] = run_jobs(
                        store, layer_jobs(configs, res, measure), progress, build_workers=HOST_CORES
                    )
                if left["parts"]:
                    measure = measure_tvm.part_measure(session, **kw)
                    reports["parts"] = run_jobs(
                        store, part_jobs(parts, res, measure), progress, build_workers=HOST_CORES
                    )
                if left["networks"]:
                    measure = measure_tvm.network_measure(session, **kw)
                    reports["networks"] = run_jobs(
                        store, network_jobs(archs, res, measure), progress, build_workers=HOST_CORES
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
        }
