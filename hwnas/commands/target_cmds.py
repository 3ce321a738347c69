"""`hwnas targets | profile | predictor fit | predictor eval`: measure latency on a target, learn it."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hwnas.commands.output import add_json_flag, emit, table
from hwnas.predictors.evaluate import evaluate
from hwnas.predictors.latency import (
    DEFAULT_ALPHA,
    DEFAULT_HOLDOUT,
    MIN_JUDGED_NETWORKS,
    LatencyPredictor,
    fit,
    predictor_dir,
)
from hwnas.targets.plan import DEFAULT_NETWORKS, Plan, check_complete, profile_target
from hwnas.targets.session import DEFAULT_TIMING, Timing
from hwnas.targets.store import Store
from hwnas.targets.target import BUILTIN_DIR, load_target, target_files, user_targets_dir


def _layers_arg(value: str) -> int | None:
    if value == "all":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a count or 'all', got {value!r}")
    return int(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("targets", help="list the targets (built-in and the user's own)")
    add_json_flag(p)
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("profile", help="measure layer kernels, stem, head and whole subnets on a target")
    p.add_argument("--target", required=True, help="target name (see `hwnas targets`)")
    p.add_argument(
        "--layers",
        type=_layers_arg,
        default=-1,
        metavar="N|all",
        help="layer configurations (default all; none with --transfer-from)",
    )
    p.add_argument(
        "--networks",
        type=int,
        default=DEFAULT_NETWORKS,
        metavar="M",
        help=f"random subnets end to end, to calibrate and judge the predictor (default {DEFAULT_NETWORKS})",
    )
    p.add_argument("--resolution", type=int, default=224, help="square input size (default 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the layer and network samples (default 0)")
    p.add_argument(
        "--transfer-from",
        default=None,
        metavar="TARGET",
        help="a new device in minutes: reuse TARGET's layer model, measure only stem, head and whole "
        "networks here, then fit and save this target's predictor",
    )
    t = DEFAULT_TIMING
    p.add_argument("--repeat", type=int, default=t.repeat, help=f"timed repeats per measurement (default {t.repeat})")
    p.add_argument(
        "--min-repeat-ms", type=int, default=t.min_repeat_ms, help=f"shortest repeat in ms (default {t.min_repeat_ms})"
    )
    p.add_argument(
        "--tries",
        type=int,
        default=t.tries,
        help=f"batches of repeats timed at most, until one's spread is within 5%% of its median (default {t.tries})",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("predictor", help="fit or evaluate a target's latency predictor")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("fit", help="train on the target's measurements (held-out share excluded)")
    q.add_argument("--target", required=True)
    q.add_argument("--resolution", type=int, default=224, help="resolution of the calibration networks")
    q.add_argument("--holdout", type=float, default=DEFAULT_HOLDOUT, help="share held out for eval (default 0.2)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"share of subnets allowed over a search's budget: sets the margin (default {DEFAULT_ALPHA})",
    )
    q.add_argument("--transfer-from", default=None, metavar="TARGET", help="reuse this target's layer model")
    add_json_flag(q)
    q.set_defaults(func=cmd_fit)
    q = actions.add_parser("eval", help="accuracy on held-out networks and layer kernels, and a scatter plot")
    q.add_argument("--target", required=True)
    q.add_argument("--plot", type=Path, default=None, help="PNG path (default: in the predictor's directory)")
    add_json_flag(q)
    q.set_defaults(func=cmd_eval)


def cmd_targets(args: argparse.Namespace) -> None:
    found = [load_target(name) for name in target_files()]
    data = {"user_targets_dir": str(user_targets_dir()), "targets": [t.to_json() for t in found]}
    rows = [
        (
            t.name,
            str(t.connection),
            " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in t.tvm.items() if k != "kind"),
            t.threads or "all",
            "built-in" if t.source.parent == BUILTIN_DIR else "user",
        )
        for t in found
    ]
    text = table(("target", "connection", "llvm", "threads", "file"), rows)
    emit(args, data, text + f"\n\nadd or override a target: {user_targets_dir()}/<name>.toml")


def cmd_profile(args: argparse.Namespace) -> None:
    target = load_target(args.target)
    if args.transfer_from:
        LatencyPredictor.load(load_target(args.transfer_from))  # before measuring: the source must exist
    layers = args.layers if args.layers != -1 else (0 if args.transfer_from else None)
    plan = Plan(args.resolution, layers, args.networks, args.seed)
    data = profile_target(target, plan, Timing(args.repeat, args.min_repeat_ms, args.tries))
    runs = data["runs"]
    lines = [
        f"{kind}: {r['measured']} measured, {r['already_measured']} already stored, {len(r['failed'])} failed"
        for kind, r in runs.items()
    ] or ["nothing left to measure"]
    lines += [f"  failed {f['what']}: {f['error']}" for r in runs.values() for f in r["failed"]]
    lines += [f"{kind}: {r['stopped']}" for kind, r in runs.items() if r["stopped"]]
    readings = [ms for r in runs.values() for ms in r["reference_ms"]]
    if readings:
        lines.append(
            f"reference network timed {len(readings)} times beside the batches: "
            f"{min(readings):.3f} to {max(readings):.3f} ms (stored latencies are relative to it)"
        )
    lines.append(f"stored for {target.name}: " + ", ".join(f"{n} {k}" for k, n in data["stored"].items()))
    lines.append(
        f"{data['slow_window_batches']} batches fell in the device's slow windows "
        f"({data['slow_window_s']:.0f} s waiting them out)"
    )
    if args.transfer_from:
        data["predictor"], text = _fit_and_save(
            target.name, args.resolution, DEFAULT_HOLDOUT, args.seed, DEFAULT_ALPHA, args.transfer_from
        )
        lines.append(text)
    emit(args, data, "\n".join(lines))
    check_complete(data)  # after the report: exit 2 with one line saying how many jobs are left


def _fit_and_save(
    target_name: str, resolution: int, holdout: float, seed: int, alpha: float, source: str | None
) -> tuple[dict[str, Any], str]:
    """Fit ``target_name``'s predictor (on ``source``'s layer model if given), save it; (data, text)."""
    target = load_target(target_name)
    base = LatencyPredictor.load(load_target(source)) if source else None
    with Store.for_target(target) as store:
        predictor = fit(target, store, resolution, holdout, seed, alpha=alpha, source=base)
    directory = predictor.save()
    cal, margin = predictor.calibration, predictor.margin
    data = {**predictor.meta, "calibration": asdict(cal), "margin": asdict(margin), "path": str(directory)}
    layers = f"layer model of {source}" if source else f"trained on {predictor.meta['trained_layers']} layer kernels"
    text = (
        f"{layers}; calibration {cal.slope:.3f} x layers + {cal.intercept:.3f} ms from {cal.networks} networks\n"
        f"budget margin x{margin.factor:.3f} (alpha {margin.alpha:g}, from {margin.n} held-out networks"
        f"{'' if margin.exact else ', too few for that alpha: the largest ratio seen'})\n"
        f"predictions in {predictor.meta['units']}; saved to {directory}"
    )
    return data, text


def cmd_fit(args: argparse.Namespace) -> None:
    emit(args, *_fit_and_save(args.target, args.resolution, args.holdout, args.seed, args.alpha, args.transfer_from))


def _fmt(value: float | int | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if pct else f"{value:.3f}"


def cmd_eval(args: argparse.Namespace) -> None:
    target = load_target(args.target)
    predictor = LatencyPredictor.load(target)
    with Store.for_target(target) as store:
        result = evaluate(predictor, store)
    plot = result.plot(args.plot or predictor_dir(target.name) / "eval.png")
    data = {**result.summary, "plot": str(plot)}
    nets, layers = result.summary["networks"], result.summary["layers"]
    rows = [
        (
            name,
            part["n"],
            _fmt(part.get("within_10pct"), True),
            _fmt(part.get("within_5pct"), True),
            _fmt(part.get("rmse_ms")),
            _fmt(part.get("kendall_tau")),
            _fmt(part.get(ops_key)),
        )
        for name, part, ops_key in (("networks", nets, "ops_kendall_tau"), ("layers", layers, "bops_kendall_tau"))
    ]
    text = table(("held out", "n", "+-10 %", "+-5 %", "RMSE ms", "tau", "tau of OPs/BOPs"), rows)
    if not nets["enough_to_judge"]:
        text += (
            f"\nonly {nets['n']} held-out whole networks: too few to judge the predictor ({MIN_JUDGED_NETWORKS} "
            f"needed); profile more with `hwnas profile --target {target.name} --networks M` and refit"
        )
    d = result.summary["drift"]
    if d["batches"]:
        text += (
            f"\nreference network over {d['batches']} batches ({d['first']} to {d['last']}): "
            f"{d['relative_min']:.2f}x to {d['relative_max']:.2f}x its nominal {d['nominal_reference_ms']:.3f} ms "
            f"(median {d['relative_median']:.2f}x, {100 * d['share_over_1_1']:.0f} % of batches over 1.1x); "
            "latencies are in nominal ms, so this drift is taken out"
        )
    emit(args, data, text + f"\nplot: {plot}")
