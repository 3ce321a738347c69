"""Where OPs mislead: an OPs-objective front and a latency-objective front judged on measured latency.

Both fronts come from searches over the same supernet. Every subnet on them is measured on one
target (each distinct deployed architecture once), and the fronts are compared in (accuracy,
measured latency) space: hypervolume, how many OPs-front points a latency-front point beats, and
the most accurate subnet each front offers under a few latency budgets. The same measurements
tell how well OPs and the latency predictor rank real latency, and are new data for the predictor.

Measuring is injected (``measure``), so this module is pure computation and reporting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.arch import Arch
from hwnas.commands.output import table
from hwnas.search.hypervolume import dominates, hypervolume, non_dominated
from hwnas.search.points import Point
from predictors.metrics import accuracy, kendall_tau

ACCURACY_REF = 0.0
"""Hypervolume reference accuracy: chance level differs per data set, 0 is the one fixed choice."""
LATENCY_REF_FACTOR = 1.1
"""Hypervolume reference latency, as a multiple of the slowest measured subnet of both fronts, so the
slowest subnets still add a (small) area."""
DEFAULT_BUDGETS = 4
REPORT, LATENCY_PNG, OPS_PNG = "report.md", "accuracy_vs_latency.png", "accuracy_vs_ops.png"
FRONTS = {"ops": ("OPs front", "C0", "o", (4, 4)), "latency": ("latency front", "C1", "s", (4, -10))}
"""Front key -> (label, matplotlib colour, marker, trial-number offset in points: apart for a shared subnet)."""
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


def _objectives(front: Sequence[MeasuredPoint], cost: Callable[[MeasuredPoint], float]) -> list[tuple[float, float]]:
    return [(m.point.accuracy, cost(m)) for m in front]


def _measured(m: MeasuredPoint) -> float:
    return m.measured_ms


def _ops(m: MeasuredPoint) -> float:
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

    @property
    def fronts(self) -> dict[str, tuple[MeasuredPoint, ...]]:
        return {"ops": self.ops, "latency": self.latency}

    @property
    def reference(self) -> tuple[float, float]:
        """The one (accuracy, latency ms) hypervolume reference shared by both fronts."""
        return ACCURACY_REF, LATENCY_REF_FACTOR * max(m.measured_ms for m in self.ops + self.latency)

    def hypervolumes(self) -> dict[str, float]:
        """Per front, in (accuracy, measured ms) space (of its non-dominated subset there)."""
        return {name: hypervolume(_objectives(front, _measured), self.reference) for name, front in self.fronts.items()}

    def dominated_share(self) -> dict[str, float]:
        """Per front, the share of its points that a point of the other front dominates in measured space."""
        ops, latency = _objectives(self.ops, _measured), _objectives(self.latency, _measured)

        def share(points: list[tuple[float, float]], others: list[tuple[float, float]]) -> float:
            return sum(any(dominates(q, p) for q in others) for p in points) / len(points)

        return {"ops": share(ops, latency), "latency": share(latency, ops)}

    def picks(self) -> list[tuple[float, dict[str, MeasuredPoint | None]]]:
        """Per budget, each front's most accurate subnet that fits it."""
        return [(b, {name: best_within(front, b) for name, front in self.fronts.items()}) for b in self.budgets]

    def distinct(self) -> tuple[MeasuredPoint, ...]:
        """One point per distinct deployed subnet over both fronts (the OPs front's when shared)."""
        seen: dict[Arch, MeasuredPoint] = {}
        for m in self.ops + self.latency:
            seen.setdefault(m.point.deployed, m)
        return tuple(seen.values())

    def ranking(self) -> dict[str, Any]:
        """How OPs and the predictor rank measured latency, and the predictor's error, over distinct subnets."""
        subnets = self.distinct()
        predicted = [m for m in subnets if m.predicted_ms is not None]
        return {
            "subnets": len(subnets),
            "ops_kendall_tau": kendall_tau(np.array([_ops(m) for m in subnets]), _measured_array(subnets)),
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
        }

    # ------------------------------------------------------------------ text
    def _verdict(self) -> str:
        """What the comparison is and, per budget, whether the latency front's pick is more accurate."""

        def acc(m: MeasuredPoint | None) -> float:
            return m.point.accuracy if m else -math.inf

        signs = [(acc(p["latency"]) > acc(p["ops"])) - (acc(p["latency"]) < acc(p["ops"])) for _, p in self.picks()]
        return (
            f"The Pareto front of a search with OPs as cost ({len(self.ops)} subnets) and of one with latency "
            f"predicted for {self.target} ({len(self.latency)} subnets) were measured on {self.target} "
            f"({len(self.distinct())} distinct subnets). Of {len(self.budgets)} measured-latency budgets, the latency "
            f"front's best subnet within the budget is more accurate than the OPs front's at {signs.count(1)}, as "
            f"accurate at {signs.count(0)} and less accurate at {signs.count(-1)} (no subnet within counts as least)."
        )

    def _front_lines(self) -> list[str]:
        hv, share = self.hypervolumes(), self.dominated_share()
        acc_ref, lat_ref = self.reference
        gain = f" ({hv['latency'] / hv['ops'] - 1:+.1%})" if hv["ops"] else ""

        def count(name: str) -> str:
            n = len(self.fronts[name])
            return f"{round(share[name] * n)}/{n} ({share[name]:.0%})"

        return [
            f"Hypervolume in (accuracy, measured ms), reference ({acc_ref:g}, {lat_ref:.4g} ms): "
            f"OPs front {hv['ops']:.4g}, latency front {hv['latency']:.4g}{gain}.",
            f"OPs-front subnets dominated by a latency-front subnet: {count('ops')}; "
            f"latency-front subnets dominated by an OPs-front subnet: {count('latency')}.",
        ]

    def _ranking_lines(self) -> list[str]:
        ranking = self.ranking()
        predictor = ranking["predictor"]
        lines = [
            f"Kendall tau against measured latency over {ranking['subnets']} distinct subnets: "
            f"OPs {_tau(ranking['ops_kendall_tau'])}, predictor {_tau(predictor.get('kendall_tau'))}."
        ]
        if predictor["n"]:
            lines.append(
                f"Predictor error on these {predictor['n']} subnets (new data for it): "
                f"{predictor['within_10pct']:.0%} within +-10 %, {predictor['within_5pct']:.0%} within +-5 %, "
                f"MAPE {predictor['mean_abs_rel_error']:.1%}, RMSE {predictor['rmse_ms']:.3g} ms."
            )
        else:
            lines.append(f"No subnet has a latency predicted for {self.target}.")
        return lines

    def _budget_table(self) -> tuple[list[str], list[list[str]]]:
        headers = ["budget ms"]
        for name in FRONTS:
            headers += [f"{name}: trial", "acc", "OPs M", "pred ms", "meas ms"]
        rows = []
        for budget, picks in self.picks():
            row = [_ms(budget)]
            for m in picks.values():
                row += ["-"] * len(ROW) if m is None else _row(m)
            ops, latency = picks["ops"], picks["latency"]
            row.append(f"{latency.point.accuracy - ops.point.accuracy:+.3f}" if ops and latency else "-")
            rows.append(row)
        return [*headers, "latency - ops acc"], rows

    def text(self) -> str:
        """Compact terminal summary ending in the budget table."""
        lines = [self._verdict(), *self._front_lines(), *self._ranking_lines()]
        return "\n".join(lines) + "\n\n" + table(*self._budget_table())

    def _markdown(self) -> str:
        parts = [f"# OPs vs latency on {self.target}", self._verdict()]
        for name, front in self.fronts.items():
            keep = set(non_dominated(_objectives(front, _measured)))
            rows = [
                [*_row(m), _ms(m.spread_ms), "yes" if i in keep else "no"]
                for i, m in sorted(enumerate(front), key=lambda im: im[1].measured_ms)
            ]
            headers = [*ROW, "spread ms", "on measured front"]
            parts += [f"## {FRONTS[name][0]} ({len(front)} subnets)", _markdown_table(headers, rows)]
        parts += ["## Fronts on measured latency", _bullets(self._front_lines())]
        parts += ["## Best subnet per latency budget", _markdown_table(*self._budget_table())]
        parts += ["## Ranking and predictor error", _bullets(self._ranking_lines())]
        parts += [f"![accuracy vs measured latency]({LATENCY_PNG})", f"![accuracy vs OPs]({OPS_PNG})"]
        return "\n\n".join(parts) + "\n"

    # ------------------------------------------------------------------ files
    def write_report(self, directory: Path) -> Path:
        """``report.md`` and its two plots in ``directory``; returns the report's path."""
        directory.mkdir(parents=True, exist_ok=True)
        self._plot(directory / LATENCY_PNG, _measured, f"measured latency on {self.target}", "ms", self.budgets)
        self._plot(directory / OPS_PNG, _ops, "OPs", "M", ())
        path = directory / REPORT
        path.write_text(self._markdown())
        return path

    def _plot(
        self, path: Path, cost: Callable[[MeasuredPoint], float], what: str, unit: str, budgets: Sequence[float]
    ) -> None:
        """Accuracy against ``cost``: each front's staircase through its non-dominated points there;
        points that fell off it are drawn hollow; trial numbers beside the markers."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.8))
        for i, budget in enumerate(budgets):
            ax.axvline(budget, color="gray", ls=":", lw=0.8, label="budgets" if i == 0 else None)
        for name, front in self.fronts.items():
            label, colour, marker, offset = FRONTS[name]
            points = _objectives(front, cost)
            keep = set(non_dominated(points))
            steps = sorted((points[i][1], points[i][0]) for i in keep)
            ax.step(*zip(*steps, strict=True), where="post", color=colour)
            for on_front in (True, False):
                xy = [(c, a) for i, (a, c) in enumerate(points) if (i in keep) == on_front]
                if xy:
                    ax.scatter(
                        *zip(*xy, strict=True),
                        marker=marker,
                        edgecolors=colour,
                        facecolors=colour if on_front else "none",
                        label=label if on_front else f"{label}, off its own front",
                    )
            for m, (a, c) in zip(front, points, strict=True):
                ax.annotate(str(m.point.number), (c, a), xytext=offset, textcoords="offset points", fontsize=7)
        ax.set_xlabel(f"{what} ({unit})")
        ax.set_ylabel("top-1 accuracy")
        ax.set_title(f"Both fronts: accuracy vs {what}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _tau(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _row(m: MeasuredPoint) -> list[str]:
    """The cells named by ``ROW``."""
    return [
        str(m.point.number),
        f"{m.point.accuracy:.3f}",
        f"{m.point.ops_m:.1f}",
        _ms(m.predicted_ms),
        _ms(m.measured_ms),
    ]


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [headers, ["---:"] * len(headers), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


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

    ops, latency = on_target(ops_front), on_target(latency_front)
    if budgets is None:
        budgets = default_budgets([median for median, _ in measured.values()])
    return Comparison(target, ops, latency, tuple(sorted(budgets)))
