"""`hwnas search | front | predict | measure`: search a supernet under a budget, read its front, price one arch."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwnas.arch import Arch
from hwnas.commands.output import add_json_flag, emit, log, table
from hwnas.errors import HwnasError
from hwnas.search.hypervolume import hypervolume_history
from hwnas.search.points import Point
from hwnas.search.samplers import SAMPLERS
from hwnas.search.study import OBJECTIVES, SearchSettings, existing_storage, front, load_study, search
from hwnas.space import NASBNN, deployed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="multi-objective search: accuracy vs predicted latency or OPs (Optuna)")
    p.add_argument("run", type=Path, help="training run directory (its supernet is searched)")
    p.add_argument("--target", action="append", default=None, help="target; repeat for one objective per target")
    p.add_argument("--objective", choices=OBJECTIVES, default="latency", help="cost to minimise (default latency)")
    p.add_argument("--budget-ms", type=float, default=None, help="constraint: predicted latency at most X ms")
    p.add_argument("--budget-mops", type=float, default=None, help="constraint: OPs at most Y millions")
    p.add_argument("--trials", type=int, default=100, help="distinct subnets to evaluate (default 100)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default tpe")
    p.add_argument("--resolution", type=int, default=224, help="deployment input size priced (default 224)")
    _storage_flags(p)
    p.add_argument("--workers", type=int, default=1, help="local worker processes on the same storage")
    p.add_argument("--seed", type=int, default=0)
    add_json_flag(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("front", help="the Pareto front of a study, printed and plotted")
    p.add_argument("run", type=Path, help="training run directory")
    _storage_flags(p)
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default RUN/front-STUDY.png)")
    add_json_flag(p)
    p.set_defaults(func=cmd_front)

    p = sub.add_parser("compare", help="OPs front vs latency front, both measured on a target; Markdown report")
    p.add_argument("run", type=Path, help="training run directory (holding both studies)")
    p.add_argument("--target", default="local", help="target the fronts are measured on (default local)")
    p.add_argument(
        "--studies", nargs=2, metavar=("OPS_STUDY", "LAT_STUDY"), default=None, help="default: ops, latency-TARGET"
    )
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite file RUN/search.db)")
    p.add_argument("-o", "--output", type=Path, default=None, help="report directory (default RUN/compare)")
    add_json_flag(p)
    p.set_defaults(func=cmd_compare)

    for name, func, text in (
        ("predict", cmd_predict, "predicted latency of an architecture on a target (no compiling)"),
        ("measure", cmd_measure, "compile an architecture with TVM and measure it on a target (cached)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("arch", type=Path, help="architecture JSON file")
        p.add_argument("--target", required=True, help="target name (see `hwnas targets`)")
        p.add_argument("--resolution", type=int, default=224, help="square input size (default 224)")
        p.add_argument("--run", type=Path, default=None, help="the arch is a subnet of this run's (scaled) space")
        add_json_flag(p)
        p.set_defaults(func=func)


def _storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite file RUN/search.db)")
    p.add_argument("--study", default=None, help="study name (default from the objective and targets)")


def cmd_search(args: argparse.Namespace) -> None:
    targets = tuple(args.target or (["local"] if args.objective == "latency" else []))
    settings = SearchSettings(args.objective, targets, args.budget_ms, args.budget_mops, args.resolution)
    if args.workers < 1 or args.trials < 1:
        raise HwnasError("--workers and --trials must be at least 1")
    result = search(args.run, settings, args.trials, args.sampler, args.seed, args.storage, args.study, args.workers)
    text = _front_text(result.front, settings)
    text += (
        f"\nstudy {result.study}: {result.trials} trials, {result.feasible} feasible, {result.repeats} repeats, "
        f"front of {len(result.front)}; storage {result.storage}"
    )
    emit(args, result.to_json(), text)


def _front_text(points: list[Point], settings: SearchSettings) -> str:
    targets = sorted({t for p in points for t in p.latency_ms})
    rows = [
        (p.number, f"{p.accuracy:.4f}", f"{p.ops_m:.1f}", *(f"{p.latency_ms[t]:.3f}" for t in targets), str(p.arch))
        for p in points
    ]
    return table(("trial", "accuracy", "OPs M", *(f"{t} ms" for t in targets), "arch"), rows)


def cmd_front(args: argparse.Namespace) -> None:
    from hwnas.search.plot import front_png, hypervolume_png
    from hwnas.search.study import finished, trial_point

    study, settings = load_study(existing_storage(args.run, args.storage), args.study)
    points = front(study)
    trials = [trial_point(t) for t in finished(study)]
    cost_name = settings.cost_names[0]

    def cost(p: Point) -> float:
        return settings.costs(p.ops_m, p.latency_ms)[0]

    label = "OPs (M)" if cost_name == "ops_m" else f"predicted latency on {settings.targets[0]} (ms)"
    plot = front_png(
        args.plot or args.run / f"front-{study.study_name}.png",
        trials,
        points,
        cost,
        label,
        f"study {study.study_name}",
    )
    progress = _hypervolume_progress(trials, cost)
    hv_plot = hypervolume_png(
        plot.with_name(f"{plot.stem}-hypervolume.png"),
        [n for n, _ in progress["history"]],
        [v for _, v in progress["history"]],
        "hypervolume of the feasible trials",
        f"study {study.study_name}: accuracy x {label}",
    )
    data = {
        "study": study.study_name,
        "settings": settings.to_json(),
        "trials": len(trials),
        "feasible": sum(p.feasible for p in trials),
        "front": [p.to_json() for p in points],
        "plot": str(plot),
        "hypervolume": progress,
        "hypervolume_plot": str(hv_plot),
    }
    emit(args, data, _front_text(points, settings) + f"\n{len(trials)} trials; plots: {plot}, {hv_plot}")


def _hypervolume_progress(trials: list[Point], cost: Callable[[Point], float]) -> dict[str, Any]:
    """Hypervolume of the feasible trials in (accuracy, first cost) after each trial, against the
    reference (0 accuracy, 1.1 x the costliest feasible trial's cost)."""
    feasible = sorted((p for p in trials if p.feasible), key=lambda p: p.number)
    reference = (0.0, 1.1 * max((cost(p) for p in feasible), default=0.0))
    volumes = hypervolume_history([(p.accuracy, cost(p)) for p in feasible], reference)
    return {"reference": list(reference), "history": [[p.number, v] for p, v in zip(feasible, volumes, strict=True)]}


def cmd_compare(args: argparse.Namespace) -> None:
    from hwnas.search.comparison import compare_studies
    from hwnas.search.comparison_report import text as report_text
    from hwnas.search.comparison_report import write_report

    comparison = compare_studies(args.run, args.target, tuple(args.studies) if args.studies else None, args.storage)
    report = write_report(comparison, args.output or args.run / "compare")
    emit(args, {**comparison.to_json(), "report": str(report)}, report_text(comparison) + f"\nreport: {report}")


def _deployed_arch(args: argparse.Namespace) -> Arch:
    """The file's arch at deployment scale: NAS-BNN's, or translated from the run's scaled space."""
    if args.run is None:
        return NASBNN.load(args.arch)
    from hwnas.train.run import read_config
    from hwnas.train.supernet import config_space

    space = config_space(read_config(args.run))
    return deployed(space, space.load(args.arch))


def cmd_predict(args: argparse.Namespace) -> None:
    from hwnas.predictors.latency import LatencyPredictor
    from hwnas.predictors.ops import count_ops
    from hwnas.targets.target import load_target

    arch = _deployed_arch(args)
    predictor = LatencyPredictor.load(load_target(args.target))
    ms = predictor.predict(arch, args.resolution)
    ops = count_ops(arch, args.resolution).ops / 1e6
    units = predictor.meta["units"]
    data = {"target": args.target, "resolution": args.resolution, "latency_ms": ms, "units": units, "ops_m": ops}
    data["with_margin_ms"] = predictor.margin.factor * ms
    emit(args, data, f"predicted latency on {args.target} at {args.resolution}x{args.resolution}: {ms:.3f} {units}")


def cmd_measure(args: argparse.Namespace) -> None:
    from hwnas.predictors.latency import UNITS
    from hwnas.targets.network_timings import measure_networks
    from hwnas.targets.target import load_target

    arch = _deployed_arch(args)
    target = load_target(args.target)
    log(f"measuring on {target.name} at {args.resolution}x{args.resolution} (cached in its store)")
    m = measure_networks(target, [arch], args.resolution)[arch]
    data = {
        "target": target.name,
        "resolution": args.resolution,
        "latency_ms": m.nominal_ms,
        "units": UNITS,
        "raw_ms": m.median_ms,
        "spread_ms": m.spread_ms,
        "reference_ms": m.reference_ms,
        "nominal_reference_ms": m.reference_ms * m.scale if m.reference_ms else None,
        "repeats": m.repeats,
        "measured_at": m.measured_at,
    }
    text = (
        f"measured on {target.name}: {m.nominal_ms:.3f} {UNITS} ({m.median_ms:.3f} ms as timed, spread "
        f"{m.spread_ms:.3f} ms, {m.repeats} repeats; the device ran at {m.scale:.2f}x its nominal speed)"
    )
    emit(args, data, text)
