"""The comparison's report: a terminal summary, ``report.md`` and its two plots.

Pure rendering of a :class:`hwnas.search.comparison.Comparison`; nothing is measured here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hwnas.files import atomic_path, atomic_write_text
from hwnas.search.comparison import (
    FRONTS,
    REMEASURE_OFF,
    ROW,
    Comparison,
    MeasuredPoint,
    by_measured,
    by_ops,
    objectives,
)
from hwnas.search.hypervolume import non_dominated
from hwnas.textfmt import table

REPORT, LATENCY_PNG, OPS_PNG = "report.md", "accuracy_vs_latency.png", "accuracy_vs_ops.png"


def _verdict(c: Comparison) -> str:
    """What the comparison is and, per budget, whether the latency front's pick is more accurate
    beyond the accuracies' noise."""
    outcome = c.pick_outcomes()
    if c.accuracy_images:
        noise = (
            f"within noise at {outcome['within_noise']} (less than two standard errors of accuracies "
            f"on {c.accuracy_images} validation images apart)"
        )
    else:
        noise = f"as accurate at {outcome['within_noise']}"
    return (
        f"The Pareto front of a search with OPs as cost ({len(c.ops)} subnets) and of one with latency "
        f"predicted for {c.target} ({len(c.latency)} subnets) were measured on {c.target} "
        f"({len(c.distinct())} distinct subnets). Of {len(c.budgets)} measured-latency budgets, the latency "
        f"front's best subnet within the budget is more accurate than the OPs front's at {outcome['more']}, "
        f"{noise} and less accurate at {outcome['less']} (no subnet within counts as least). "
        f"Hypervolume in (accuracy, measured latency): {c.hypervolume_verdict()}."
    )


def _front_lines(c: Comparison) -> list[str]:
    hv, share = c.hypervolumes(), c.dominated_share()
    acc_ref, lat_ref = c.reference
    gain = f" ({hv['latency'] / hv['ops'] - 1:+.1%})" if hv["ops"] else ""

    def count(name: str) -> str:
        n = len(c.fronts[name])
        return f"{round(share[name] * n)}/{n} ({share[name]:.0%})"

    spans = c.spans()
    return [
        f"Measured latency spans {spans['ops']:.2f}x on the OPs front and {spans['latency']:.2f}x on the "
        "latency front.",
        f"Hypervolume in (accuracy, measured ms), reference ({acc_ref:g}, {lat_ref:.4g} ms): "
        f"OPs front {hv['ops']:.4g}, latency front {hv['latency']:.4g}{gain}.",
        f"OPs-front subnets dominated by a latency-front subnet: {count('ops')}; "
        f"latency-front subnets dominated by an OPs-front subnet: {count('latency')}.",
    ]


def _ranking_lines(c: Comparison) -> list[str]:
    ranking = c.ranking()
    predictor = ranking["predictor"]
    lines = [
        f"Kendall tau against measured latency over {ranking['subnets']} distinct subnets "
        f"(both fronts and {len(c.others)} other trials): "
        f"OPs {_tau(ranking['ops_kendall_tau'])}, predictor {_tau(predictor.get('kendall_tau'))}."
    ]
    if predictor["n"]:
        lines.append(
            f"Predictor error on these {predictor['n']} subnets (new data for it): "
            f"{predictor['within_10pct']:.0%} within +-10 %, {predictor['within_5pct']:.0%} within +-5 %, "
            f"MAPE {predictor['mean_abs_rel_error']:.1%}, RMSE {predictor['rmse_ms']:.3g} ms."
        )
    else:
        lines.append(f"No subnet has a latency predicted for {c.target}.")
    over = c.over_budget()
    if over is not None:
        lines.append(
            f"Latency-front subnets measured over the search's budget of {over['budget_ms']:g} ms: "
            f"{over['over']}/{over['n']} ({over['share']:.0%}); predictions were held to it times {over['margin']:.3f}."
        )
    if c.remeasured:
        again = ", ".join(f"{r['first_ms']:.3g} -> {r['second_ms']:.3g} ms" for r in c.remeasured)
        lines.append(
            f"Measured again for disagreeing with their predictions by more than {REMEASURE_OFF:.0%}: {again}."
        )
    return lines


def _budget_table(c: Comparison) -> tuple[list[str], list[list[str]]]:
    headers = ["budget ms"]
    for name in FRONTS:
        headers += [f"{name}: trial", "acc", "OPs M", "pred ms", "meas ms"]
    rows = []
    for budget, picks in c.picks():
        row = [_ms(budget)]
        for m in picks.values():
            row += ["-"] * len(ROW) if m is None else _row(m)
        ops, latency = picks["ops"], picks["latency"]
        row.append(f"{latency.point.accuracy - ops.point.accuracy:+.3f}" if ops and latency else "-")
        rows.append(row)
    return [*headers, "latency - ops acc"], rows


def text(c: Comparison) -> str:
    """Compact terminal summary ending in the budget table."""
    lines = [_verdict(c), *_front_lines(c), *_ranking_lines(c)]
    return "\n".join(lines) + "\n\n" + table(*_budget_table(c))


def _markdown(c: Comparison) -> str:
    parts = [f"# OPs vs latency on {c.target}", _verdict(c)]
    for name, front in c.fronts.items():
        keep = set(non_dominated(objectives(front, by_measured)))
        rows = [
            [*_row(m), _ms(m.spread_ms), "yes" if i in keep else "no"]
            for i, m in sorted(enumerate(front), key=lambda im: im[1].measured_ms)
        ]
        headers = [*ROW, "spread ms", "on measured front"]
        parts += [f"## {FRONTS[name][0]} ({len(front)} subnets)", _markdown_table(headers, rows)]
    parts += ["## Fronts on measured latency", _bullets(_front_lines(c))]
    parts += ["## Best subnet per latency budget", _markdown_table(*_budget_table(c))]
    parts += ["## Ranking and predictor error", _bullets(_ranking_lines(c))]
    parts += [f"![accuracy vs measured latency]({LATENCY_PNG})", f"![accuracy vs OPs]({OPS_PNG})"]
    return "\n\n".join(parts) + "\n"


def write_report(c: Comparison, directory: Path) -> Path:
    """``report.md`` and its two plots in ``directory``; returns the report's path."""
    directory.mkdir(parents=True, exist_ok=True)
    _plot(c, directory / LATENCY_PNG, by_measured, f"measured latency on {c.target}", "ms", c.budgets)
    _plot(c, directory / OPS_PNG, by_ops, "OPs", "M", ())
    return atomic_write_text(directory / REPORT, _markdown(c))


def _plot(
    c: Comparison, path: Path, cost: Callable[[MeasuredPoint], float], what: str, unit: str, budgets: Sequence[float]
) -> None:
    """Accuracy against ``cost``: each front's staircase through its non-dominated points there;
    points that fell off it are drawn hollow; trial numbers beside the markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for i, budget in enumerate(budgets):
        ax.axvline(budget, color="gray", ls=":", lw=0.8, label="budgets" if i == 0 else None)
    for name, front in c.fronts.items():
        label, colour, marker, offset = FRONTS[name]
        points = objectives(front, cost)
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
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
