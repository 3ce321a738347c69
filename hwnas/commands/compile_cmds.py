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
    p.add_argument(
        "--no-calibration", action="store_true", help="keep the run's stored BatchNorm statistics (no recalibration)"
    )
    p.add_argument("--data", default=None, help="recalibrate on this dataset instead of the run's (imagefolder:PATH)")
    add_json_flag(p)


def _subnet(args: argparse.Namespace):
    """The arch and its deployable subnet from ``--weights`` (recalibrated unless --no-calibration)."""
    from hwnas.compile.weights import load_subnet

    return load_subnet(
        args.arch,
        args.weights,
        args.resolution,
        args.classes,
        args.seed,
        calibrate=not args.no_calibration,
        data=args.data,
    )


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
    p.add_argument(
        "--verify", action="store_true", help="run the ONNX file with onnxruntime and compare with the PyTorch subnet"
    )
    p.set_defaults(func=cmd_export)


def cmd_compile(args: argparse.Namespace) -> None:
    from hwnas.compile.deploy import compile_subnet, export, verify
    from hwnas.compile.on_device import net_on_device
    from hwnas.errors import HwnasError
    from hwnas.targets.target import load_target

    target = load_target(args.target)
    remote = target.connection.kind != "local"
    if args.profile and remote:
        raise HwnasError(f"--profile times each kernel on this machine; target {args.target} is a remote device")
    arch, sub = _subnet(args)
    log(f"compiling {arch} at {sub.resolution}x{sub.resolution} for {args.target}")
    compiled = compile_subnet(sub.net, sub.resolution, target.tvm_target())
    path = export(compiled, args.output, target.cc)
    log(f"wrote {path}")
    data: dict = {"output": str(path), "target": args.target, "resolution": sub.resolution, "arch": arch.to_json()}
    lines = [f"library  {path}"]
    image = np.random.default_rng(args.seed).standard_normal((1, 3, sub.resolution, sub.resolution), "float32")
    if args.verify or (args.bench and remote):
        if remote:
            log(f"running it on {args.target} ({target.connection})")
        with net_on_device(target, path) as net:
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
                    + (f" (run on {args.target})" if remote else "")
                )
            if args.bench and remote:
                ms, spread = net.time_ms(image)
                data.update(latency_ms=ms, spread_ms=spread, emulated=target.connection.emulated)
                emulated = " (emulated: not a board's time)" if target.connection.emulated else ""
                lines.append(f"latency  {ms:.3f} ms (spread {spread:.3f}) on {args.target}{emulated}")
    speed = None
    if args.bench:
        if not remote:  # each side alone in a fresh process: TVM's and PyTorch's thread pools starve each other
            speed = _local_bench(args, arch, sub, compiled, path, image, data, lines)
        predicted = _predicted_ms(target, arch, sub.resolution)
        if predicted is not None:
            data["predicted_ms"] = predicted
            lines.append(f"predicted {predicted:.3f} ms (the target's latency predictor)")
    emit(args, data, "\n".join(lines))
    if args.verify and not data["verified"]:
        raise HwnasError("verification failed: the compiled network does not match the PyTorch subnet")
    if speed is not None:
        speed.check()  # after the figures: the library's own time holds even when PyTorch's does not


def _predicted_ms(target, arch, resolution: int) -> float | None:
    """The target's predicted latency of ``arch``, or None when it has no (usable) predictor."""
    from hwnas.predictors.latency import LatencyPredictor, PredictorError

    try:
        return float(LatencyPredictor.load(target).predict(arch, resolution))
    except PredictorError:
        return None


def _local_bench(args, arch, sub, compiled, path, image, data: dict, lines: list[str]):
    """TVM and the float32 PyTorch network of the same architecture, each timed alone in a fresh
    process (and the per-kernel profile): figures of this machine only. Returns the speed record."""
    from hwnas.compile.deploy import profile_library
    from hwnas.compile.timing import network_speed

    speed = network_speed(path, arch, sub.num_classes, sub.resolution)
    ms = speed.tvm.best_s * 1e3
    # the per-kernel profile runs in a process without PyTorch: in this one, after the model
    # ran, every kernel timed from Python waited for a scheduler time slice (10-20x too slow)
    profile = profile_library(path, image, compiled.labels) if args.profile else None
    data.update(speed.to_json())
    gflops = "" if speed.baseline_gflops is None else f", {speed.baseline_gflops:.0f} GFLOP/s"
    lines += [
        f"latency  {ms:.3f} ms (best batch; median {speed.tvm.median_s * 1e3:.3f})",
        f"torch    {speed.torch.best_s * 1e3:.3f} ms float32{gflops} "
        f"(best batch; median {speed.torch.median_s * 1e3:.3f})",
        f"speedup: {speed.speedup:.1f}",
    ]
    if profile is not None:
        data["profile"] = [{"kernel": label, "ms": t} for label, t in profile]
        rows = [(k, f"{t:.4f}", f"{100 * t / ms:.1f}%") for k, t in profile]
        lines.append(table(("kernel", "ms", "share"), rows))
    return speed


def cmd_export(args: argparse.Namespace) -> None:
    from hwnas.compile.fold import fold
    from hwnas.compile.onnx_export import export_onnx

    arch, sub = _subnet(args)
    folded = fold(sub.net, sub.resolution)
    path = export_onnx(folded, args.output)
    data = {"output": str(path), "resolution": sub.resolution, "arch": arch.to_json()}
    text = f"wrote {path}"
    if args.verify:
        from hwnas.compile.onnx_export import verify_onnx
        from hwnas.errors import HwnasError

        check = verify_onnx(path, folded, seed=args.seed)
        data |= {"verified": check.ok, "max_rel_error": check.max_rel_error, "top1_agree": check.top1_agree}
        text += (
            f"\nverify   {'ok' if check.ok else 'FAILED'} (onnxruntime): max relative logit error "
            f"{check.max_rel_error:.2e}, top-1 {'agrees' if check.top1_agree else 'differs'}"
        )
    emit(args, data, text)
    if args.verify and not data["verified"]:
        raise HwnasError("verification failed: onnxruntime's output does not match the PyTorch subnet")
