"""`hwnas pipeline`: the main job on the built-in defaults, resumable step by step.

Steps, each skipped when its result file exists (a rerun after a kill continues; the training,
profiling and search steps also resume their own partial work):
1. ``train``: the supernet on the built-in digits data;
2. ``eval``: the largest, the smallest and 20 random subnets on the test split, BN recalibrated;
3. ``profile``: the local target's layer kernels, stem, head and a few whole subnets (224x224);
4. ``predictor``: fit the local target's latency predictor and evaluate it on held-out measurements;
5. ``search-ops`` and ``search-latency``: an OPs search and a latency search under default budgets
   (halfway between the smallest and the largest subnet's OPs, resp. predicted latency);
6. ``compile``: the most accurate subnet of each front, compiled with TVM for this CPU, checked
   against PyTorch and timed against the float32 PyTorch network of the same architecture;
7. ``compare``: both fronts measured on the local target; the report in ``OUT/report``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.arch import Arch
from hwnas.commands.output import add_json_flag, emit, log, table
from hwnas.targets.plan import DEFAULT_NETWORKS
from hwnas.targets.target import load_target
from hwnas.train.checkpoint import FILENAME
from hwnas.train.config import add_override_flags, overrides, resolve
from hwnas.train.run import load_run, read_config, resolve_for_resume, train_supernet

RANDOM_SUBNETS = 20
TARGET = "local"
PROFILE_NETWORKS = DEFAULT_NETWORKS
SEARCH_TRIALS = 100


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the main job on the built-in defaults (resumable)")
    p.add_argument("--out", type=Path, default=Path("hwnas-out"), help="output directory (default hwnas-out)")
    p.add_argument("--config", type=Path, default=None, help="training config file (TOML)")
    p.add_argument(
        "--profile-networks",
        type=int,
        default=PROFILE_NETWORKS,
        help=f"whole subnets measured (default {PROFILE_NETWORKS})",
    )
    p.add_argument("--search-trials", type=int, default=SEARCH_TRIALS, help="trials per search (default 100)")
    add_override_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_pipeline)


def _step(out: Path, name: str, run: Callable[[], dict[str, Any]], times: dict[str, float]) -> dict[str, Any]:
    """Run a step unless its result file exists; results are written atomically."""
    path = out / f"{name}.json"
    if path.exists():
        log(f"[{name}] done before, reusing {path}")
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = run()
    times[name] = time.perf_counter() - start
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def _train(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    cli = overrides(args)
    if (run_dir / FILENAME).exists():
        config = resolve_for_resume(run_dir, cli, args.config)
        if load_run(run_dir).epochs_done < config.epochs:
            log(f"[train] resuming {run_dir}")
            train_supernet(config, run_dir, resume=True)
    else:
        log(f"[train] training a supernet into {run_dir}")
        train_supernet(resolve(args.config, cli), run_dir)
    return {"run_dir": str(run_dir), "config": read_config(run_dir).to_json()}


def _evaluate(run_dir: Path) -> dict[str, Any]:
    from hwnas.train.evaluate import evaluate_subnet, summarize

    run = load_run(run_dir)
    calib, test = run.calibration_batches(), run.batches("test")

    def acc(arch) -> float:
        return evaluate_subnet(run.supernet, arch, calib, test)

    rng = random.Random(0)
    randoms = [acc(run.space.sample(rng)) for _ in range(RANDOM_SUBNETS)]
    result = {"largest": acc(run.space.largest()), "smallest": acc(run.space.smallest()), "random": summarize(randoms)}
    log(
        f"[eval] test top-1: largest {result['largest']:.3f}, smallest {result['smallest']:.3f}, "
        f"mean of {RANDOM_SUBNETS} random {result['random']['mean']:.3f}"
    )
    return result


def _profile(networks: int) -> dict[str, Any]:
    from hwnas.targets.plan import Plan, profile_target

    return profile_target(load_target(TARGET), Plan(networks=networks))


def _fit() -> dict[str, Any]:
    from hwnas.predictors.evaluate import evaluate
    from hwnas.predictors.latency import fit
    from hwnas.targets.store import Store

    target = load_target(TARGET)
    with Store.for_target(target) as store:
        predictor = fit(target, store)
        predictor.save()
        summary = evaluate(predictor, store).summary
    nets = summary["networks"]
    log(
        f"[predictor] held-out networks: {nets['n']}, within +-10 % {100 * (nets.get('within_10pct') or 0):.0f} %, "
        f"Kendall tau {nets.get('kendall_tau') or float('nan'):.2f}"
    )
    return summary


def _search(run_dir: Path, objective: str, trials: int) -> dict[str, Any]:
    from hwnas.search.objectives import CostModel
    from hwnas.search.study import SearchSettings, search

    run = load_run(run_dir)
    costs = CostModel.for_targets(run.space, (TARGET,))
    ends = (run.space.smallest(), run.space.largest())
    if objective == "ops":
        budget = {"budget_mops": sum(costs.ops_m(a) for a in ends) / 2}
    else:
        budget = {"budget_ms": sum(costs.latency_ms(a)[TARGET] for a in ends) / 2}
    settings = SearchSettings(objective, (TARGET,), **budget)
    log(f"[search-{objective}] {trials} trials, budget {budget}")
    return search(run_dir, settings, trials).to_json()


def _compile(run_dir: Path, out: Path, winners: dict[str, Arch]) -> dict[str, Any]:
    from hwnas.compile.deploy import CompiledNet, compile_subnet, export, float_baseline, time_torch_ms, verify
    from hwnas.train.evaluate import calibrated_subnet

    run = load_run(run_dir)
    res, calib = run.config.resolution, run.calibration_batches()
    image = np.random.default_rng(0).standard_normal((1, 3, res, res), dtype=np.float32)
    result = {}
    for name, arch in winners.items():
        subnet = calibrated_subnet(run.supernet, arch, calib)
        path = export(compile_subnet(subnet, res, load_target(TARGET).tvm_target()), out / f"{name}.so")
        (out / f"{name}.json").write_text(arch.dumps() + "\n")
        net = CompiledNet.load(path)
        check = verify(net, subnet, res)
        ms = net.time_ms(image)[0]
        torch_ms = time_torch_ms(float_baseline(arch, run.splits.num_classes), image)[0]
        result[name] = {
            "arch": arch.to_json(),
            "library": str(path),
            "verified": check.ok,
            "max_rel_error": check.max_rel_error,
            "latency_ms": ms,
            "torch_fp32_ms": torch_ms,
            "speedup": torch_ms / ms,
        }
        log(f"[compile] {name}: {path}, verified {check.ok}, {ms:.3f} ms vs {torch_ms:.3f} ms float32")
    return result


def _best(search_result: dict[str, Any]) -> Arch:
    """The most accurate subnet of a search's front."""
    return Arch.from_json(max(search_result["front"], key=lambda p: p["accuracy"])["arch"])


def _compare(run_dir: Path, out: Path) -> dict[str, Any]:
    from hwnas.search.comparison import compare_studies
    from hwnas.search.comparison_report import write_report

    comparison = compare_studies(run_dir, TARGET)
    report = write_report(comparison, out / "report")
    log(f"[compare] report: {report}")
    return {**comparison.to_json(), "report": str(report)}


def cmd_pipeline(args: argparse.Namespace) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_dir, times = out / "supernet", {}
    started = time.perf_counter()
    data: dict[str, Any] = {"out": str(out)}
    data["train"] = _step(out, "train", lambda: _train(run_dir, args), times)
    data["eval"] = _step(out, "eval", lambda: _evaluate(run_dir), times)
    data["profile"] = _step(out, "profile", lambda: _profile(args.profile_networks), times)
    data["predictor"] = _step(out, "predictor", _fit, times)
    for objective in ("ops", "latency"):
        data[f"search-{objective}"] = _step(
            out, f"search-{objective}", lambda o=objective: _search(run_dir, o, args.search_trials), times
        )
    winners = {f"best-{o}": _best(data[f"search-{o}"]) for o in ("ops", "latency")}
    data["compile"] = _step(out, "compile", lambda: _compile(run_dir, out, winners), times)
    data["compare"] = _step(out, "compare", lambda: _compare(run_dir, out), times)
    data["step_seconds"] = times
    data["wall_seconds"] = time.perf_counter() - started
    accuracy, compiled = data["eval"], data["compile"]
    rows = [
        (
            name,
            f"{c['latency_ms']:.3f}",
            f"{c['torch_fp32_ms']:.3f}",
            f"{c['speedup']:.1f}",
            c["verified"],
        )
        for name, c in compiled.items()
    ]
    text = f"test top-1: largest {accuracy['largest']:.3f}, smallest {accuracy['smallest']:.3f}, "
    text += f"mean of {accuracy['random']['n']} random {accuracy['random']['mean']:.3f}\n\n"
    text += table(("winner", "TVM ms", "torch fp32 ms", "speedup", "verified"), rows)
    text += f"\n\nOPs vs latency: {data['compare']['report']}"
    text += f"\noutputs in {out}; step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    emit(args, data, text)
