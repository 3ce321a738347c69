"""`hwnas compare`'s plumbing: read the two studies' fronts, measure them on the target, build the report.

The comparison itself (hypervolume, budgets, rank correlations, report) is :mod:`hwnas.search.compare`;
this module only gathers its inputs. Every distinct subnet of both fronts is measured once, at
deployment scale and the studies' resolution, through the target's store (so nothing already
measured is compiled again, and a rerun after a kill continues).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hwnas.errors import HwnasError
from hwnas.search.compare import Comparison, compare
from hwnas.search.points import Point
from hwnas.search.study import SearchSettings, existing_storage, front, load_study
from predictors.latency import LatencyPredictor
from targets.measured import DEFAULT_TIMING, Timing, measure_networks
from targets.target import load_target


def default_studies(target: str) -> tuple[str, str]:
    """The names `hwnas search` gives an OPs study and a latency study on ``target``."""
    return SearchSettings("ops", ()).default_name(), SearchSettings("latency", (target,)).default_name()


def compare_studies(
    run_dir: Path,
    target_name: str,
    studies: tuple[str, str] | None = None,
    storage: str | None = None,
    timing: Timing = DEFAULT_TIMING,
) -> Comparison:
    """Compare the front of an OPs study with the front of a latency study, measured on the target."""
    target = load_target(target_name)
    predictor = LatencyPredictor.load(target)
    store = existing_storage(run_dir, storage)
    ops_name, lat_name = studies or default_studies(target_name)
    ops_study, ops_settings = load_study(store, ops_name)
    lat_study, lat_settings = load_study(store, lat_name)
    if ops_settings.objective != "ops":
        raise HwnasError(f"study {ops_name!r} minimises {ops_settings.objective}, not OPs")
    if lat_settings.objective != "latency" or target_name not in lat_settings.targets:
        raise HwnasError(f"study {lat_name!r} does not minimise latency on target {target_name!r}")
    resolution = lat_settings.resolution

    def priced(points: list[Point]) -> list[Point]:
        """The points with this target's predicted latency (an OPs study may not have recorded it)."""
        return [
            p
            if target_name in p.latency_ms
            else replace(p, latency_ms={**p.latency_ms, target_name: predictor.predict(p.deployed, resolution)})
            for p in points
        ]

    ops_front, lat_front = priced(front(ops_study)), priced(front(lat_study))
    if not ops_front or not lat_front:
        empty = ops_name if not ops_front else lat_name
        raise HwnasError(f"study {empty!r} has no feasible trial yet; search longer or loosen its budget")
    measured = measure_networks(target, list({p.deployed: None for p in ops_front + lat_front}), resolution, timing)
    return compare(ops_front, lat_front, target_name, lambda arch: (measured[arch].median_ms, measured[arch].spread_ms))
