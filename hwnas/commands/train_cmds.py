"""`hwnas train | eval | finetune | plot-run`: supernet training and subnet evaluation."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from hwnas.commands.output import add_json_flag, emit, log
from hwnas.errors import HwnasError
from hwnas.train.config import add_override_flags, overrides, resolve
from hwnas.train.distributed import is_main_process, set_threads
from hwnas.train.evaluate import evaluate_subnet, summarize
from hwnas.train.finetune import finetune, finetune_config
from hwnas.train.plot import plot_run
from hwnas.train.run import load_run, resolve_for_resume, train_supernet


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a binary supernet (sandwich rule, Bi-Teacher), one process per core")
    p.add_argument("--config", type=Path, help="TOML file of config keys (command-line flags win)")
    p.add_argument("--out", type=Path, default=Path("runs/supernet"), help="run directory (default runs/supernet)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    add_override_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy of subnets with inherited weights, BN recalibrated")
    p.add_argument("run_dir", type=Path, help="training run directory")
    p.add_argument("arch", type=Path, nargs="?", help="architecture JSON file")
    p.add_argument("--random", type=int, metavar="N", help="instead: N random subnets plus the largest and smallest")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subnets")
    p.add_argument("--split", choices=("val", "test"), default="val", help="evaluation split (default val)")
    p.add_argument("--data", default=None, help="evaluate on this dataset instead of the run's (imagefolder:PATH)")
    p.add_argument(
        "--no-calibration", action="store_true", help="keep the run's stored BatchNorm statistics (no recalibration)"
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("finetune", help="extract a subnet and finetune it (pipeline 2)")
    p.add_argument("run_dir", type=Path, help="training run directory of the supernet")
    p.add_argument("arch", type=Path, help="architecture JSON file")
    p.add_argument("--out", type=Path, help="output directory (default RUN_DIR/finetune-ARCHNAME)")
    p.add_argument("--resume", action="store_true", help="continue from the output directory's last checkpoint")
    add_override_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("plot-run", help="draw a run's loss and accuracy curves to a PNG")
    p.add_argument("run_dir", type=Path, help="training or finetuning run directory")
    p.add_argument("-o", "--output", type=Path, help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(func=cmd_plot)


def metrics_text(metrics: dict) -> str:
    """A training result's metrics, one per line."""
    return "\n".join(f"{k:20s} {v:.4f}" if isinstance(v, float) else f"{k:20s} {v}" for k, v in metrics.items())


def cmd_train(args: argparse.Namespace) -> None:
    cli = overrides(args)
    config = resolve_for_resume(args.out, cli, args.config) if args.resume else resolve(args.config, cli)
    _, metrics = train_supernet(config, args.out, args.resume)
    if is_main_process():
        emit(args, {"run_dir": str(args.out), **metrics}, f"run {args.out}\n{metrics_text(metrics)}")


def cmd_eval(args: argparse.Namespace) -> None:
    if (args.arch is None) == (args.random is None):
        raise HwnasError("eval needs either an ARCH file or --random N")
    run = load_run(args.run_dir, args.data)
    set_threads(run.config.threads)
    calib, batches = None if args.no_calibration else run.calibration_batches(), run.batches(args.split)
    if args.arch is not None:
        arch = run.space.load(args.arch)
        acc = evaluate_subnet(run.supernet, arch, calib, batches)
        emit(
            args,
            {"arch": arch.to_json(), "split": args.split, "accuracy": acc},
            f"{arch}\ntop-1 {acc:.4f} on {args.split}",
        )
        return
    rng = random.Random(args.seed)
    accs = []
    for i in range(args.random):
        accs.append(evaluate_subnet(run.supernet, run.space.sample(rng), calib, batches))
        log(f"random subnet {i + 1}/{args.random}: top-1 {accs[-1]:.4f}")
    largest = evaluate_subnet(run.supernet, run.space.largest(), calib, batches)
    smallest = evaluate_subnet(run.supernet, run.space.smallest(), calib, batches)
    stats = summarize(accs)
    data = {"split": args.split, "largest": largest, "smallest": smallest, "random": stats, "accuracies": accs}
    text = f"largest  {largest:.4f}\nsmallest {smallest:.4f}\n" + "\n".join(
        f"random {k:6s} {v:.4f}" if isinstance(v, float) else f"random {k:6s} {v}" for k, v in stats.items()
    )
    emit(args, data, text)


def cmd_finetune(args: argparse.Namespace) -> None:
    run = load_run(args.run_dir, args.data)
    arch = run.space.load(args.arch)
    out = args.out or args.run_dir / f"finetune-{args.arch.stem}"
    metrics = finetune(run, arch, finetune_config(run, overrides(args)), out, args.resume)
    if is_main_process():
        emit(args, {"out": str(out), **metrics}, f"finetuned {arch}\n{metrics_text(metrics)}")


def cmd_plot(args: argparse.Namespace) -> None:
    out = plot_run(args.run_dir, args.output or args.run_dir / "curves.png")
    log(f"wrote {out}")
