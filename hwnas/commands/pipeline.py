"""`hwnas pipeline`: the main job on the built-in defaults, resumable step by step.

Each step writes ``OUT/<step>.json`` (atomically) once it has finished: its result, the flags it
ran with, a digest of each step it read from, and a SHA-256 of each file it produced. A rerun
reuses a step only when that record is complete and still holds: same flags, same inputs, every
output file present and unchanged; otherwise the step runs again, and so does every step that
read from it (the training, profiling and search steps resume their own partial work). ``OUT``
is locked while a pipeline runs. The steps:
1. ``train``: the supernet on the built-in ``clutter`` data (digits under clutter: accuracy grows
   with capacity, so the fronts have something to trade; ``--data digits`` is the quick one);
2. ``eval``: the largest, the smallest and 20 random subnets on the test split, BN recalibrated;
3. ``profile``: the local target's layer kernels, stem, head and a few whole subnets (224x224);
4. ``predictor``: fit the local target's latency predictor and evaluate it on held-out measurements;
5. ``search-ops`` and ``search-latency``: an OPs search and a latency search under default budgets
   that bind (:mod:`hwnas.search.budgets`: the 40 % quantile of random subnets' OPs, resp.
   predicted latency);
6. ``compile``: the most accurate subnet of each front, compiled with TVM for this CPU, checked
   against PyTorch and timed against the float32 PyTorch network of the same architecture;
7. ``compare``: both fronts measured on the local target; the report in ``OUT/report``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwnas.arch import Arch
from hwnas.commands.output import add_json_flag, emit, log, table
from hwnas.errors import HwnasError
from hwnas.files import atomic_write_json, atomic_write_text
from hwnas.locks import dir_lock
from hwnas.targets.plan import DEFAULT_NETWORKS
from hwnas.targets.target import load_target
from hwnas.train.checkpoint import FILENAME
from hwnas.train.config import add_override_flags, load_toml, overrides, resolve
from hwnas.train.run import load_run, read_config, resolve_for_resume, train_supernet

DATA = "clutter"
"""The pipeline's task: on digits nearly every subnet is as accurate as the largest (docs/training.md)."""
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
    next(a for a in p._actions if a.dest == "data").help = f"(default {DATA}: the task with headroom)"
    add_json_flag(p)
    p.set_defaults(func=cmd_pipeline)


RECORD_FORMAT = 1


class Steps:
    """The step records of one pipeline directory (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.times: dict[str, float] = {}
        self.digests: dict[str, str] = {}  # step -> digest of its record, as later steps see it

    def run(
        self,
        name: str,
        run: Callable[[], dict[str, Any]],
        flags: dict[str, Any] | None = None,
        after: tuple[str, ...] = (),
        outputs: Callable[[dict[str, Any]], list[Path]] = lambda result: [],
    ) -> dict[str, Any]:
        """Reuse ``name``'s record if it still holds, else run the step and record it.

        ``after``: the earlier steps it reads from; ``outputs``: the files its result names.
        """
        path = self.out / f"{name}.json"
        flags, inputs = flags or {}, {step: self.digests[step] for step in after}
        record = _read_record(path)
        why = _stale(record, flags, inputs) if record else "not finished before"
        if why is None:
            log(f"[{name}] done before, reusing {path}")
        else:
            if record:
                log(f"[{name}] running again: {why}")
            start = time.perf_counter()
            result = run()
            self.times[name] = time.perf_counter() - start
            record = {
                "format": RECORD_FORMAT,
                "step": name,
                "flags": flags,
                "inputs": inputs,
                "outputs": {str(p): _sha256(p) for p in outputs(result)},
                "result": result,
            }
            atomic_write_json(path, record, indent=1)
        self.digests[name] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        return record["result"]


def _read_record(path: Path) -> dict[str, Any] | None:
    """A step's record, or None when it is missing, torn or of another format (the step reruns)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("format") == RECORD_FORMAT and "result" in record
    return record if ok else None


def _stale(record: dict[str, Any], flags: dict[str, Any], inputs: dict[str, str]) -> str | None:
    """Why a finished step's record no longer holds, or None."""
    if record.get("flags") != flags:
        return f"flags changed ({record.get('flags')} -> {flags})"
    if record.get("inputs") != inputs:
        return "a step it reads from ran again"
    for name, digest in record.get("outputs", {}).items():
        if not Path(name).is_file():
            return f"{name} was deleted"
        if _sha256(Path(name)) != digest:
            return f"{name} changed"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(*paths: Path) -> list[Path]:
    """The files among ``paths``, those under a directory included (sorted)."""
    found: list[Path] = []
    for path in paths:
        found += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return found


def _train(run_dir: Path, args: argparse.Namespace, cli: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) the supernet with ``cli``, the step's recorded overrides."""
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
    from hwnas.targets.plan import Plan, check_complete, profile_target

    result = profile_target(load_target(TARGET), Plan(networks=networks))
    check_complete(result)  # a profile with failed jobs is not a finished step: the rerun retries them
    return result


def _search_lines(data: dict[str, Any]) -> list[str]:
    """Per search: its budget, why, and the share of trials it excluded."""
    lines = []
    for objective in ("ops", "latency"):
        result = data[f"search-{objective}"]
        infeasible = result["trials"] - result["feasible"]
        lines.append(
            f"{objective} search: {infeasible}/{result['trials']} trials over its budget "
            f"({infeasible / max(result['trials'], 1):.0%}); budget {result['budget']['why']}"
        )
    return lines


def _compare_lines(compare: dict[str, Any]) -> list[str]:
    """The comparison's headline figures: front spans, rank correlations over every measured subnet, verdict."""
    spans, predictor = compare["spans"], compare["predictor"]
    tau = predictor.get("kendall_tau")
    lines = [
        f"measured latency spans {spans['ops']:.2f}x (OPs front) and {spans['latency']:.2f}x (latency front)",
        f"Kendall tau with measured latency over {compare['subnets']} measured subnets: "
        f"OPs {compare['ops_kendall_tau']:.2f}, predictor {'-' if tau is None else f'{tau:.2f}'}",
        f"hypervolume: {compare['hypervolume_verdict']}",
    ]
    picks = compare.get("budget_picks")
    if picks:
        lines.append(
            f"best subnet per measured budget, latency front vs OPs front: more accurate at {picks['more']}, "
            f"within accuracy noise at {picks['within_noise']}, less accurate at {picks['less']}"
        )
    over = compare.get("over_budget")
    if over:
        lines.append(f"latency-front subnets measured over budget: {over['over']}/{over['n']}")
    return lines


def _fit() -> dict[str, Any]:
    from hwnas.predictors.evaluate import evaluate
    from hwnas.predictors.latency import fit
    from hwnas.targets.store import Store

    target = load_target(TARGET)
    with Store.for_target(target) as store:
        predictor = fit(target, store)
        saved = predictor.save()
        summary = evaluate(predictor, store).summary
    nets = summary["networks"]
    log(
        f"[predictor] held-out networks: {nets['n']}, within +-10 % {100 * (nets.get('within_10pct') or 0):.0f} %, "
        f"Kendall tau {nets.get('kendall_tau') or float('nan'):.2f}"
    )
    return {**summary, "saved": str(saved)}


def _search(run_dir: Path, objective: str, trials: int) -> dict[str, Any]:
    from hwnas.search.budgets import quantile_budget
    from hwnas.search.objectives import CostModel
    from hwnas.search.study import SearchSettings, search

    run = load_run(run_dir)
    costs = CostModel.for_targets(run.space, (TARGET,))
    if objective == "ops":
        chosen, unit, key = quantile_budget(run.space, costs.ops_m), "MOPs", "budget_mops"
    else:
        chosen, unit, key = quantile_budget(run.space, lambda a: costs.latency_ms(a)[TARGET]), "ms", "budget_ms"
    settings = SearchSettings(objective, (TARGET,), **{key: chosen.value})
    log(f"[search-{objective}] {trials} trials, budget {chosen.reason(unit)}")
    result = search(run_dir, settings, trials, study_name=_study_name(run, settings)).to_json()
    check_front(result, objective, {key: chosen.value})  # before the step is recorded: a rerun searches on
    return {**result, "budget": {"value": chosen.value, "unit": unit, "why": chosen.reason(unit)}}


def _study_name(run: Any, settings: Any) -> str:
    """The pipeline's study for ``settings``, named after the supernet's checkpoint: retrained
    weights start new studies instead of being refused by the old ones (scored by other weights)."""
    from hwnas.search.study import weights_identity

    return f"{settings.default_name()}-{weights_identity(run)['checkpoint_sha256'][:10]}"


def check_front(result: dict[str, Any], objective: str, budget: dict[str, float]) -> None:
    """One line when a search found no subnet within its budget: nothing to compile or compare."""
    if not result["front"]:
        raise HwnasError(
            f"the {objective} search found no subnet within its budget {budget} in {result['trials']} trials "
            "(an empty front); rerun with more --search-trials"
        )


def _compile(run_dir: Path, out: Path, winners: dict[str, Arch]) -> dict[str, Any]:
    from hwnas.compile.deploy import CompiledNet, compile_subnet, export, verify
    from hwnas.compile.timing import network_speed
    from hwnas.train.evaluate import calibrated_subnet

    run = load_run(run_dir)
    res, calib = run.config.resolution, run.calibration_batches()
    result = {}
    for name, arch in winners.items():
        subnet = calibrated_subnet(run.supernet, arch, calib)
        path = export(compile_subnet(subnet, res, load_target(TARGET).tvm_target()), out / f"{name}.so")
        atomic_write_text(out / f"{name}.json", arch.dumps() + "\n")
        net = CompiledNet.load(path)
        check = verify(net, subnet, res)
        speed = network_speed(path, arch, run.splits.num_classes, res)  # each side alone
        ms, torch_ms = speed.tvm.best_s * 1e3, speed.torch.best_s * 1e3
        result[name] = {
            "arch": arch.to_json(),
            "library": str(path),
            "verified": check.ok,
            "max_rel_error": check.max_rel_error,
            **speed.to_json(),
        }
        log(f"[compile] {name}: {path}, verified {check.ok}, {ms:.3f} ms vs {torch_ms:.3f} ms float32")
        if not result[name]["baseline_plausible"]:
            log(f"[compile] {name}: the float32 time is implausibly slow (machine busy): its speedup is not one")
    return result


def _best(search_result: dict[str, Any]) -> Arch:
    """The most accurate subnet of a search's front."""
    return Arch.from_json(max(search_result["front"], key=lambda p: p["accuracy"])["arch"])


def _compare(run_dir: Path, out: Path) -> dict[str, Any]:
    from hwnas.search.comparison import compare_studies
    from hwnas.search.comparison_report import write_report
    from hwnas.search.study import SearchSettings

    run = load_run(run_dir)
    studies = (
        _study_name(run, SearchSettings("ops", ())),
        _study_name(run, SearchSettings("latency", (TARGET,))),
    )
    comparison = compare_studies(run_dir, TARGET, studies)
    report = write_report(comparison, out / "report")
    log(f"[compare] report: {report}")
    return {**comparison.to_json(), "report": str(report)}


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """What the training step runs with: the command line's config keys and the config file's text."""
    text = None
    if args.config is not None:
        try:
            text = args.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HwnasError(f"cannot read the config file {args.config}: {exc}") from None
    return {"overrides": _train_overrides(args), "config_file": text}


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's config keys, with the pipeline's own data unless a flag or the file names one."""
    cli = overrides(args)
    if "data" not in cli and (args.config is None or "data" not in load_toml(args.config)):
        cli["data"] = DATA
    return cli


def cmd_pipeline(args: argparse.Namespace) -> None:
    with dir_lock(args.out):
        _pipeline(args)


def _pipeline(args: argparse.Namespace) -> None:
    out = args.out
    run_dir, steps = out / "supernet", Steps(out)
    started = time.perf_counter()
    data: dict[str, Any] = {"out": str(out)}
    train_flags = _train_flags(args)
    data["train"] = steps.run(
        "train",
        lambda: _train(run_dir, args, train_flags["overrides"]),
        train_flags,
        outputs=lambda r: [run_dir / FILENAME],
    )
    data["eval"] = steps.run("eval", lambda: _evaluate(run_dir), after=("train",))
    data["profile"] = steps.run("profile", lambda: _profile(args.profile_networks), {"networks": args.profile_networks})
    data["predictor"] = steps.run("predictor", _fit, after=("profile",), outputs=lambda r: _files(Path(r["saved"])))
    for objective in ("ops", "latency"):
        data[f"search-{objective}"] = steps.run(
            f"search-{objective}",
            lambda o=objective: _search(run_dir, o, args.search_trials),
            {"trials": args.search_trials},
            after=("train", "predictor"),
        )
    winners = {f"best-{o}": _best(data[f"search-{o}"]) for o in ("ops", "latency")}
    data["compile"] = steps.run(
        "compile",
        lambda: _compile(run_dir, out, winners),
        after=("train", "search-ops", "search-latency"),
        outputs=lambda r: [p for name, c in r.items() for p in (Path(c["library"]), out / f"{name}.json")],
    )
    data["compare"] = steps.run(
        "compare",
        lambda: _compare(run_dir, out),
        after=("train", "predictor", "search-ops", "search-latency"),
        outputs=lambda r: _files(Path(r["report"]).parent),
    )
    times = steps.times
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
    text += "\n\n" + "\n".join(_search_lines(data)) + "\n" + "\n".join(_compare_lines(data["compare"]))
    text += f"\n\nOPs vs latency: {data['compare']['report']}"
    text += f"\noutputs in {out}; step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    emit(args, data, text)
