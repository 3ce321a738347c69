"""Where OPs mislead: an OPs-objective front and a latency-objective front judged on measured latency.

Both fronts come from searches over the same supernet. Every subnet on them is measured on one
target (each distinct deployed architecture once), and the fronts are compared in (accuracy,
measured latency) space: hypervolume, how many OPs-front points a latency-front point beats, and
the most accurate subnet each front offers under a few latency budgets. The same measurements
tell how well OPs and the latency predictor rank real latency, and are new data for the predictor.
When the latency search had a budget, the comparison also tells the share of its front measured
over that budget, and the margin its predictor held the predictions to.

:func:`compare` takes its measuring as a function (tests pass fakes); :func:`compare_studies`
reads two studies' fronts and measures them through the target's store, so nothing measured
before is compiled again and a rerun after a kill continues. The report is
:mod:`hwnas.search.comparison_report`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.predictors.latency import LatencyPredictor
from hwnas.predictors.metrics import accuracy, kendall_tau
from hwnas.search.hypervolume import dominates, hypervolume
from hwnas.search.points import Point
from hwnas.search.study import SearchSettings, existing_storage, finished, front, load_study, trial_point
from hwnas.targets.network_timings import measure_networks
from hwnas.targets.session import DEFAULT_TIMING, Timing
from hwnas.targets.store import Measurement, Store, network_key
from hwnas.targets.target import Target, load_target

_log = logging.getLogger(__name__)

ACCURACY_REF = 0.0
"""Hypervolume reference accuracy: chance level differs per data set, 0 is the one fixed choice."""
LATENCY_REF_FACTOR = 1.1
"""Hypervolume reference latency, as a multiple of the slowest measured subnet of both fronts, so the
slowest subnets still add a (small) area."""
DEFAULT_BUDGETS = 5
OTHER_SUBNETS = 12
"""Trials off both fronts measured too, so the rank correlations span more of the space than the fronts."""
FRONTS = {"ops": ("OPs front", "C0", "o", (4, 4)), "latency": ("latency front", "C1", "s", (4, -10))}
"""Front key -> (label, matplotlib colour, marker, trial-number offset in points: apart for a shared subnet)."""
REMEASURE_OFF = 0.10
"""A subnet whose prediction is off its measurement by more than this (|predicted / measured - 1|,
the accuracy the compare reports, and the rule of ``benchmarks/predictor_holdout.py``) is measured
once more: a slow window shorter than a batch, which the reference timed beside it does not see,
read 2.3-2.4x on one subnet in each of the 2026-11-30 evening's compares, and 1.24-1.32x on two
subnets of the 2026-12-01 04:12 pipeline, which the former limit (1.5x) let stand
(docs/latency.md)."""
ROW = ("trial", "accuracy", "OPs M", "predicted ms", "measured ms")
"""Columns describing one subnet in the report's tables."""


@dataclass(frozen=True)
class MeasuredPoint:
    """A front's point with its deployed subnet's latency on the compared target: predicted and measured."""

    point: Point
    predicted_ms: float | None
    measured_ms: float
    spread_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            **self.point.to_json(),
            "predicted_ms": self.predicted_ms,
            "measured_ms": self.measured_ms,
            "spread_ms": self.spread_ms,
        }


def objectives(front: Sequence[MeasuredPoint], cost: Callable[[MeasuredPoint], float]) -> list[tuple[float, float]]:
    return [(m.point.accuracy, cost(m)) for m in front]


def by_measured(m: MeasuredPoint) -> float:
    return m.measured_ms


def by_ops(m: MeasuredPoint) -> float:
    return m.point.ops_m


def _measured_array(front: Sequence[MeasuredPoint]) -> np.ndarray:
    return np.array([m.measured_ms for m in front])


def best_within(front: Sequence[MeasuredPoint], budget_ms: float) -> MeasuredPoint | None:
    """The most accurate point whose measured latency fits the budget (the faster one on a tie)."""
    fits = [m for m in front if m.measured_ms <= budget_ms]
    return max(fits, key=lambda m: (m.point.accuracy, -m.measured_ms), default=None)


@dataclass(frozen=True)
class Comparison:
    """Both fronts with measured latencies on ``target``, and the latency budgets to compare them under."""

    target: str
    ops: tuple[MeasuredPoint, ...]
    latency: tuple[MeasuredPoint, ...]
    budgets: tuple[float, ...]
    search_budget_ms: float | None = None
    """The latency study's budget (None: it had none)."""
    margin: float | None = None
    """The factor its predictor's predictions were multiplied by before being held to that budget."""
    others: tuple[MeasuredPoint, ...] = ()
    """Other trials of both studies, measured for the rank correlations only."""
    accuracy_images: int | None = None
    """Validation images each accuracy was measured on (None: unknown, differences taken as exact)."""
    remeasured: tuple[dict[str, Any], ...] = ()
    """Subnets measured again for disagreeing with their prediction (:data:`REMEASURE_OFF`)."""

    def accuracy_noise(self, a: float, b: float) -> float:
        """Two standard errors of the difference of two accuracies on ``accuracy_images`` images each,
        taken as independent samples (conservative: both were measured on the same images)."""
        if not self.accuracy_images:
            return 0.0
        n = self.accuracy_images
        return 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)

    def pick_outcomes(self) -> dict[str, int]:
        """Per budget, whether the latency front's best subnet within it is more accurate than the OPs
        front's beyond :meth:`accuracy_noise`, within it, or less; a front with no subnet within loses."""
        outcomes = {"more": 0, "within_noise": 0, "less": 0}
        for _, picks in self.picks():
            lat, ops = picks["latency"], picks["ops"]
            if lat is None or ops is None:
                outcomes["within_noise" if lat is ops else "less" if lat is None else "more"] += 1
                continue
            a, b = lat.point.accuracy, ops.point.accuracy
            diff, noise = a - b, self.accuracy_noise(a, b)
            outcomes["more" if diff > noise else "less" if diff < -noise else "within_noise"] += 1
        return outcomes

    def over_budget(self) -> dict[str, Any] | None:
        """How many latency-front subnets measure over the search's budget (None without a budget)."""
        if self.search_budget_ms is None:
            return None
        over = sum(m.measured_ms > self.search_budget_ms for m in self.latency)
        return {
            "budget_ms": self.search_budget_ms,
            "margin": self.margin,
            "over": over,
            "n": len(self.latency),
            "share": over / len(self.latency),
        }

    @property
    def fronts(self) -> dict[str, tuple[MeasuredPoint, ...]]:
        return {"ops": self.ops, "latency": self.latency}

    @property
    def reference(self) -> tuple[float, float]:
        """The one (accuracy, latency ms) hypervolume reference shared by both fronts."""
        return ACCURACY_REF, LATENCY_REF_FACTOR * max(m.measured_ms for m in self.ops + self.latency)

    def hypervolumes(self) -> dict[str, float]:
        """Per front, in (accuracy, measured ms) space (of its non-dominated subset there)."""
        return {
            name: hypervolume(objectives(front, by_measured), self.reference) for name, front in self.fronts.items()
        }

    def dominated_share(self) -> dict[str, float]:
        """Per front, the share of its points that a point of the other front dominates in measured space."""
        ops, latency = objectives(self.ops, by_measured), objectives(self.latency, by_measured)

        def share(points: list[tuple[float, float]], others: list[tuple[float, float]]) -> float:
            return sum(any(dominates(q, p) for q in others) for p in points) / len(points)

        return {"ops": share(ops, latency), "latency": share(latency, ops)}

    def picks(self) -> list[tuple[float, dict[str, MeasuredPoint | None]]]:
        """Per budget, each front's most accurate subnet that fits it."""
        return [(b, {name: best_within(front, b) for name, front in self.fronts.items()}) for b in self.budgets]

    def distinct(self, others: bool = False) -> tuple[MeasuredPoint, ...]:
        """One point per distinct deployed subnet over both fronts (the OPs front's when shared), and
        over the other measured trials too with ``others``."""
        seen: dict[Arch, MeasuredPoint] = {}
        for m in self.ops + self.latency + (self.others if others else ()):
            seen.setdefault(m.point.deployed, m)
        return tuple(seen.values())

    def spans(self) -> dict[str, float]:
        """Per front, its slowest measured subnet's latency over its fastest's."""
        return {
            name: max(by_measured(m) for m in f) / min(by_measured(m) for m in f) for name, f in self.fronts.items()
        }

    def hypervolume_bounds(self) -> dict[str, tuple[float, float]]:
        """Per front, its hypervolume with every subnet at its measured latency plus, and minus, half
        its spread: how far measurement noise alone moves it."""

        def at(front: tuple[MeasuredPoint, ...], sign: float) -> float:
            points = [(m.point.accuracy, m.measured_ms + sign * m.spread_ms / 2) for m in front]
            return hypervolume(points, self.reference)

        return {name: (at(front, 1.0), at(front, -1.0)) for name, front in self.fronts.items()}

    def hypervolume_verdict(self) -> str:
        """Which front's hypervolume is larger, and whether the difference exceeds measurement noise."""
        hv, bounds = self.hypervolumes(), self.hypervolume_bounds()
        better, worse = ("latency", "ops") if hv["latency"] >= hv["ops"] else ("ops", "latency")
        if bounds[better][0] > bounds[worse][1]:
            return f"{better} front larger, beyond measurement noise"
        return f"{better} front larger, within measurement noise"

    def ranking(self) -> dict[str, Any]:
        """How OPs and the predictor rank measured latency, and the predictor's error, over every
        distinct measured subnet (both fronts and the other measured trials)."""
        subnets = self.distinct(others=True)
        predicted = [m for m in subnets if m.predicted_ms is not None]
        return {
            "subnets": len(subnets),
            "ops_kendall_tau": kendall_tau(np.array([by_ops(m) for m in subnets]), _measured_array(subnets)),
            "predictor": accuracy(np.array([m.predicted_ms for m in predicted]), _measured_array(predicted)),
        }

    def to_json(self) -> dict[str, Any]:
        acc_ref, lat_ref = self.reference
        return {
            "target": self.target,
            "fronts": {name: [m.to_json() for m in front] for name, front in self.fronts.items()},
            "reference": {"accuracy": acc_ref, "latency_ms": lat_ref},
            "hypervolume": self.hypervolumes(),
            "dominated_share": self.dominated_share(),
            "budgets": [
                {"budget_ms": b, **{name: m.to_json() if m else None for name, m in picks.items()}}
                for b, picks in self.picks()
            ],
            **self.ranking(),
            "other_subnets": [m.to_json() for m in self.others],
            "spans": self.spans(),
            "hypervolume_bounds": {name: list(bounds) for name, bounds in self.hypervolume_bounds().items()},
            "hypervolume_verdict": self.hypervolume_verdict(),
            "over_budget": self.over_budget(),
            "budget_picks": {**self.pick_outcomes(), "accuracy_images": self.accuracy_images},
            "remeasured": list(self.remeasured),
        }


def _round_up(x: float) -> float:
    """``x`` rounded up to three significant digits: a budget that reads cleanly and still admits ``x``."""
    digits = 2 - math.floor(math.log10(x))
    nearest = round(x, digits)
    return nearest if nearest >= x else round(nearest + 10.0**-digits, digits)


def default_budgets(latencies_ms: Sequence[float], n: int = DEFAULT_BUDGETS) -> tuple[float, ...]:
    """``n`` budgets evenly spread from the fastest to the slowest measured subnet, both included."""
    return tuple(sorted({_round_up(float(x)) for x in np.linspace(min(latencies_ms), max(latencies_ms), n)}))


def compare(
    ops_front: Sequence[Point],
    latency_front: Sequence[Point],
    target: str,
    measure: Callable[[Arch], tuple[float, float]],
    budgets: Sequence[float] | None = None,
    search_budget_ms: float | None = None,
    margin: float | None = None,
    others: Sequence[Point] = (),
    accuracy_images: int | None = None,
) -> Comparison:
    """Measure every distinct deployed subnet of both fronts once with ``measure`` (deployed arch ->
    (median ms, spread ms)) and compare the fronts on ``target``; ``budgets`` default to
    :func:`default_budgets` of the measured latencies."""
    if not ops_front or not latency_front:
        raise ValueError("compare needs two non-empty fronts")
    measured: dict[Arch, tuple[float, float]] = {}

    def on_target(front: Sequence[Point]) -> tuple[MeasuredPoint, ...]:
        out = []
        for p in front:
            if p.deployed not in measured:
                median, spread = (float(v) for v in measure(p.deployed))
                if not (math.isfinite(median) and median > 0):
                    raise ValueError(f"measured latency of {p.deployed} is {median} ms")
                measured[p.deployed] = median, spread
            out.append(MeasuredPoint(p, p.latency_ms.get(target), *measured[p.deployed]))
        return tuple(out)

    ops, latency, rest = on_target(ops_front), on_target(latency_front), on_target(others)
    if budgets is None:
        budgets = default_budgets([median for median, _ in measured.values()])
    return Comparison(target, ops, latency, tuple(sorted(budgets)), search_budget_ms, margin, rest, accuracy_images)


def default_studies(target: str) -> tuple[str, str]:
    """The names `hwnas search` gives an OPs study and a latency study on ``target``."""
    return SearchSettings("ops", ()).default_name(), SearchSettings("latency", (target,)).default_name()


def compare_studies(
    run_dir: Path,
    target_name: str,
    studies: tuple[str, str] | None = None,
    storage: str | None = None,
    timing: Timing = DEFAULT_TIMING,
    other_subnets: int = OTHER_SUBNETS,
) -> Comparison:
    """Compare the front of an OPs study with the front of a latency study, measured on the target,
    with ``other_subnets`` seeded other trials of both studies measured for the rank correlations."""
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
    on_fronts = {p.deployed for p in ops_front + lat_front}
    rest = {p.deployed: p for s in (ops_study, lat_study) for p in map(trial_point, finished(s))}
    rest = [p for arch, p in sorted(rest.items(), key=lambda kv: kv[1].number) if arch not in on_fronts]
    others = priced(random.Random(0).sample(rest, min(other_subnets, len(rest))))
    archs = list({p.deployed: None for p in ops_front + lat_front + others})
    with Store.for_target(target) as store:
        new = set(store.missing(network_key(a, resolution) for a in archs))
    measured = measure_networks(target, archs, resolution, timing)
    predicted = {p.deployed: p.latency_ms[target_name] for p in ops_front + lat_front + others}
    fresh = {a: m for a, m in measured.items() if network_key(a, resolution) in new}  # a rerun re-reads the store
    remeasured = remeasure_far(target, fresh, predicted, resolution, timing)
    measured.update(fresh)
    comparison = compare(
        ops_front,
        lat_front,
        target_name,
        lambda arch: (measured[arch].nominal_ms, measured[arch].spread_ms),
        search_budget_ms=lat_settings.budget_ms,
        margin=predictor.margin.factor,
        others=others,
        accuracy_images=_validation_images(run_dir),
    )
    return replace(comparison, remeasured=remeasured)


def remeasure_far(
    target: Target,
    measured: dict[Arch, Measurement],
    predicted: dict[Arch, float],
    resolution: int,
    timing: Timing = DEFAULT_TIMING,
) -> tuple[dict[str, Any], ...]:
    """Measure once more, in place, every subnet of ``measured`` (those measured just now) more than
    :data:`REMEASURE_OFF` off its prediction; the second measurement stands, both are reported."""
    far = [a for a, m in measured.items() if abs(predicted[a] / m.nominal_ms - 1) > REMEASURE_OFF]
    if not far:
        return ()
    with Store.for_target(target) as store:
        store.discard(network_key(a, resolution) for a in far)
    again = measure_networks(target, far, resolution, timing)
    report = tuple(
        {
            "deployed": a.to_json(),
            "predicted_ms": predicted[a],
            "first_ms": measured[a].nominal_ms,
            "second_ms": again[a].nominal_ms,
        }
        for a in far
    )
    for r in report:
        _log.warning(
            "measured %.3f ms against a prediction of %.3f ms, so measured again: %.3f ms",
            r["first_ms"],
            r["predicted_ms"],
            r["second_ms"],
        )
    measured.update(again)
    return report


def _validation_images(run_dir: Path) -> int | None:
    """How many images the studies' accuracies were measured on: the run's validation split."""
    from hwnas.train.data import load_indices
    from hwnas.train.run import SPLITS

    if not (run_dir / SPLITS).exists():  # an imported run: no split of its own
        return None
    return len(load_indices(run_dir / SPLITS).get("val", [])) or None
