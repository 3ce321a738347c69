"""`hwnas pipeline`: the main job on the built-in defaults, resumable step by step.

Steps, each skipped when its output already exists (a rerun after a kill continues):
1. train the supernet on the built-in digits data (resumes an interrupted run);
2. evaluate the largest, the smallest and 20 random subnets on the test split, BN recalibrated;
3. compile the largest and the smallest subnet with TVM for this CPU, verify each against
   PyTorch and time it against the float32 PyTorch network of the same architecture.
Search, profiling and the OPs-vs-latency comparison join as their issues land.
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

from hwnas.commands.output import add_json_flag, emit, log, table
from hwnas.train.checkpoint import FILENAME
from hwnas.train.config import add_override_flags, overrides, resolve
from hwnas.train.run import load_run, read_config, resolve_for_resume, train_supernet

RANDOM_SUBNETS = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the main job on the built-in defaults (resumable)")
    p.add_argument("--out", type=Path, default=Path("hwnas-out"), help="output directory (default hwnas-out)")
    p.add_argument("--config", type=Path, default=None, help="training config file (TOML)")
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


def _compile(run_dir: Path, out: Path) -> dict[str, Any]:
    from hwnas.compile.deploy import CompiledNet, compile_subnet, export, float_baseline, time_torch_ms, verify
    from hwnas.train.evaluate import calibrated_subnet
    from targets.target import load_target

    run = load_run(run_dir)
    res, calib = run.config.resolution, run.calibration_batches()
    image = np.random.default_rng(0).standard_normal((1, 3, res, res), dtype=np.float32)
    result = {}
    for name, arch in (("largest", run.space.largest()), ("smallest", run.space.smallest())):
        subnet = calibrated_subnet(run.supernet, arch, calib)
        path = export(compile_subnet(subnet, res, load_target("local").tvm_target()), out / f"{name}.so")
        (out / f"{name}.json").write_text(arch.dumps() + "\n")
        net = CompiledNet.load(path)
        check = verify(net, subnet, res)
        ms = net.time_ms(image)[0]
        torch_ms = time_torch_ms(float_baseline(arch, run.splits.num_classes), image)[0]
        result[name] = {
            "library": str(path),
            "verified": check.ok,
            "max_rel_error": check.max_rel_error,
            "latency_ms": ms,
            "torch_fp32_ms": torch_ms,
            "speedup": torch_ms / ms,
        }
        log(f"[compile] {name}: {path}, verified {check.ok}, {ms:.3f} ms vs {torch_ms:.3f} ms float32")
    return result


def cmd_pipeline(args: argparse.Namespace) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_dir, times = out / "supernet", {}
    started = time.perf_counter()
    train = _step(out, "train", lambda: _train(run_dir, args), times)
    accuracy = _step(out, "eval", lambda: _evaluate(run_dir), times)
    compiled = _step(out, "compile", lambda: _compile(run_dir, out), times)
    data = {
        "out": str(out),
        "train": train,
        "eval": accuracy,
        "compile": compiled,
        "step_seconds": times,
        "wall_seconds": time.perf_counter() - started,
    }
    rows = [
        (
            name,
            f"{accuracy[name]:.3f}",
            f"{c['latency_ms']:.3f}",
            f"{c['torch_fp32_ms']:.3f}",
            f"{c['speedup']:.1f}",
            c["verified"],
        )
        for name, c in compiled.items()
    ]
    text = table(("subnet", "test top-1", "TVM ms", "torch fp32 ms", "speedup", "verified"), rows)
    text += f"\nrandom subnets: mean test top-1 {accuracy['random']['mean']:.3f} over {accuracy['random']['n']}"
    text += f"\noutputs in {out}; step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    emit(args, data, text)
