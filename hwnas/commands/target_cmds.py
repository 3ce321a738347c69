"""`hwnas targets | profile | predictor fit | predictor eval`: measure latency on a target, learn it."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from hwnas.commands.output import add_json_flag, emit, table
from hwnas.errors import HwnasError
from hwnas.predictors.evaluate import evaluate
from hwnas.predictors.latency import DEFAULT_HOLDOUT, MIN_CALIBRATION_NETWORKS, LatencyPredictor, fit, predictor_dir
from hwnas.targets.plan import Plan, profile_target
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
        "--layers", type=_layers_arg, default=None, metavar="N|all", help="layer configurations (default all)"
    )
    p.add_argument("--networks", type=int, default=0, metavar="M", help="random subnets end to end (default 0)")
    p.add_argument("--resolution", type=int, default=224, help="square input size (default 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the layer and network samples (default 0)")
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
    plan = Plan(args.resolution, args.layers, args.networks, args.seed)
    data = profile_target(target, plan, Timing(args.repeat, args.min_repeat_ms, args.tries))
    runs = data["runs"]
    lines = [
        f"{kind}: {r['measured']} measured, {r['already_measured']} already stored, {len(r['failed'])} failed"
        for kind, r in runs.items()
    ] or ["nothing left to measure"]
    lines += [f"  failed {f['what']}: {f['error']}" for r in runs.values() for f in r["failed"]]
    lines += [f"{kind}: {r['stopped']}" for kind, r in runs.items() if r["stopped"]]
    lines.append(f"stored for {target.name}: " + ", ".join(f"{n} {k}" for k, n in data["stored"].items()))
    lines.append(
        f"{data['slow_window_batches']} batches fell in the device's slow windows "
        f"({data['slow_window_s']:.0f} s waiting them out)"
    )
    emit(args, data, "\n".join(lines))
    left = sum(r["total"] - r["already_measured"] - r["measured"] for r in runs.values())
    if left:
        raise HwnasError(f"{left} job(s) failed or stayed unmeasured on {target.name}; rerun to resume")


def cmd_fit(args: argparse.Namespace) -> None:
    target = load_target(args.target)
    with Store.for_target(target) as store:
        predictor = fit(target, store, args.resolution, args.holdout, args.seed)
    directory = predictor.save()
    cal = predictor.calibration
    data = {
        **predictor.meta,
        "calibration": asdict(cal),
        "path": str(directory),
    }
    how = (
        f"identity ({cal.networks} networks measured, {MIN_CALIBRATION_NETWORKS} needed)"
        if cal.is_identity
        else f"{cal.slope:.3f} x layers + {cal.intercept:.3f} ms from {cal.networks} networks"
    )
    emit(
        args,
        data,
        f"trained on {predictor.meta['trained_layers']} layer kernels; calibration {how}\nsaved to {directory}",
    )


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
    if nets["n"] == 0:
        text += f"\nno held-out whole networks: profile some with `hwnas profile --target {target.name} --networks M`"
    emit(args, data, text + f"\nplot: {plot}")
