"""`hwnas compile` (TVM runtime library of XNOR/popcount kernels) and `hwnas export` (ONNX)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hwnas.commands.output import add_json_flag, emit, log, table


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", type=Path, help="architecture JSON file")
    p.add_argument("--weights", required=True, help="training run directory, or 'random' (seeded supernet)")
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the run's, or 224)")
    p.add_argument("--classes", type=int, default=None, help="classes for random weights (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and of verification inputs")
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    add_json_flag(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a subnet with TVM into a runtime library")
    _common(p)
    p.add_argument("--target", default="local", help="target name (see `hwnas targets`; default local)")
    p.add_argument(
        "--verify", action="store_true", help="compare bit for bit with the folded PyTorch subnet on random inputs"
    )
    p.add_argument("--bench", action="store_true", help="median latency vs the float32 PyTorch network")
    p.add_argument("--profile", action="store_true", help="with --bench: time every kernel of the network")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("export", help="write a subnet as ONNX (the float simulation of the binary network)")
    _common(p)
    p.set_defaults(func=cmd_export)


def cmd_compile(args: argparse.Namespace) -> None:
    from hwnas.compile.deploy import (
        CompiledNet,
        compile_subnet,
        export,
        float_baseline,
        profile_library,
        time_torch_ms,
        verify,
    )
    from hwnas.compile.weights import load_subnet
    from hwnas.errors import HwnasError
    from hwnas.targets.target import load_target

    target = load_target(args.target)
    arch, sub = load_subnet(args.arch, args.weights, args.resolution, args.classes, args.seed)
    runs_here = target.connection.kind == "local"
    if (args.verify or args.bench) and not runs_here:
        raise HwnasError(f"--verify and --bench run on this machine; target {args.target} is a remote device")
    log(f"compiling {arch} at {sub.resolution}x{sub.resolution} for {args.target}")
    compiled = compile_subnet(sub.net, sub.resolution, target.tvm_target())
    path = export(compiled, args.output, target.cc)
    log(f"wrote {path}")
    data: dict = {"output": str(path), "target": args.target, "resolution": sub.resolution, "arch": arch.to_json()}
    lines = [f"library  {path}"]
    if runs_here:
        net = CompiledNet.load(path)
        image = np.random.default_rng(args.seed).standard_normal((1, 3, sub.resolution, sub.resolution), "float32")
    if args.verify:
        check = verify(net, sub.net, sub.resolution, seed=args.seed)
        data.update(
            verified=check.ok,
            max_rel_error=check.max_rel_error,
            top1_agree=check.top1_agree,
            values_compared=check.values,
            differing_values=check.differing,
        )
        lines.append(
            f"verify   {'ok' if check.ok else 'FAILED'}: {check.differing} of {check.values} logits differ "
            f"from the PyTorch reference (max relative error {check.max_rel_error:.2e}), "
            f"top-1 {'agrees' if check.top1_agree else 'differs'} on {check.samples} random inputs"
        )
    if args.bench:
        ms, spread = net.time_ms(image)
        # the per-kernel profile runs in a process without PyTorch: in this one, after the model
        # ran, every kernel timed from Python waited for a scheduler time slice (10-20x too slow)
        profile = profile_library(path, image, compiled.labels) if args.profile else None
        torch_ms, torch_spread = time_torch_ms(float_baseline(arch, sub.num_classes), image)
        data.update(latency_ms=ms, spread_ms=spread, torch_fp32_ms=torch_ms, speedup=torch_ms / ms)
        lines += [
            f"latency  {ms:.3f} ms (spread {spread:.3f})",
            f"torch    {torch_ms:.3f} ms float32 (spread {torch_spread:.3f})",
            f"speedup: {torch_ms / ms:.1f}",
        ]
        if profile is not None:
            data["profile"] = [{"kernel": label, "ms": t} for label, t in profile]
            rows = [(k, f"{t:.4f}", f"{100 * t / ms:.1f}%") for k, t in profile]
            lines.append(table(("kernel", "ms", "share"), rows))
    emit(args, data, "\n".join(lines))
    if args.verify and not data["verified"]:
        raise HwnasError("verification failed: the compiled network does not match the PyTorch subnet")


def cmd_export(args: argparse.Namespace) -> None:
    from hwnas.compile.fold import fold
    from hwnas.compile.onnx_export import export_onnx
    from hwnas.compile.weights import load_subnet

    arch, sub = load_subnet(args.arch, args.weights, args.resolution, args.classes, args.seed)
    path = export_onnx(fold(sub.net, sub.resolution), args.output)
    emit(args, {"output": str(path), "resolution": sub.resolution, "arch": arch.to_json()}, f"wrote {path}")
