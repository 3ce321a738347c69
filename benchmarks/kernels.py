"""Benchmark the binary conv kernels against PyTorch float32 on the NAS-BNN layer shapes.

For every binary layer shape of stages 2-5 of the search space at 224x224 input, on the same
number of threads: ``torch.nn.functional.conv2d`` float32, then the TVM kernel built for this host
(``local``) and its AVX2-only build (runs here too), each with its activation packer. The headline
speedup includes packing: torch / (kernel + packer of the same target). The AVX2 build is priced
against PyTorch kept to AVX2 (``torch_avx2_us``; :data:`hwnas.compile.timing.ISA_LIMITS`), the
baseline an AVX2-only machine runs; its ratio against this host's PyTorch is printed beside it
(``speedup_avx2_host_torch``).

Method (:mod:`hwnas.compile.timing`): PyTorch runs first, alone, in fresh processes; TVM runs
afterwards in this process, which never runs PyTorch (their thread pools starve each other: timed
in one process, PyTorch's convs ran 20-37x slow). Every figure is the best of ``--repeat``
batches (the median batch is in the JSON as ``*_median_us``): other jobs on the cores inflate the
median of PyTorch's 2-thread OpenMP far more than TVM's. The script prints PyTorch's GFLOP/s
(2 x MACs / s) on the large shapes and exits 2 with one line when it is implausibly low
(``--min-gflops``, default 10).

Shapes: a searched layer is a k x k group conv c_in -> c_in (groups g, the layer's stride) then a
1x1 conv c_in -> c. The shapes come from the space's distinct layer configurations
(``hwnas.targets.configs.layer_configs``). The default is a deterministic subset: the first shape (by
channels) of every (k, g, stride, height), every square 1x1 and one widening 1x1 per height;
``--all`` benchmarks every distinct shape the space can produce (144, widths non-decreasing).

    python benchmarks/kernels.py [--all] [--json] [--threads 2] [--repeat 15] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from hwnas.arch import STEM_KERNEL, STEM_STRIDE, conv_out_size
from hwnas.compile import tvm_targets
from hwnas.compile.binconv import ConvShape, binary_conv2d
from hwnas.compile.bitpack import pack_weights, packer_for
from hwnas.compile.runner import batch_timer, build
from hwnas.compile.timing import MIN_GFLOPS, CallTime, check_baseline, torch_convs
from hwnas.errors import HwnasError
from hwnas.space import NASBNN
from hwnas.targets.configs import layer_configs
from hwnas.targets.target import load_target

Shape = tuple[int, int, int, int, int, int]  # (c_in, c_out, k, groups, stride, height)
TARGETS = ("local", "x86-avx2")


def all_shapes(full: bool) -> list[Shape]:
    """Binary conv shapes of stages 2-5 at 224x224, from the space's distinct layer configurations:
    all of them, or a covering subset (one per kernel, groups, stride and height, every square 1x1)."""
    stem_size = conv_out_size(224, STEM_KERNEL, STEM_STRIDE)
    shapes: set[Shape] = set()
    for cfg in layer_configs(NASBNN, 224):
        if cfg.stride == 1 and cfg.size_in == stem_size:
            continue  # stage 1
        shapes.add((cfg.c_in, cfg.c_in, cfg.k, cfg.g, cfg.stride, cfg.size_in))
        shapes.add((cfg.c_in, cfg.c_out, 1, 1, 1, cfg.size_out))
    if full:
        return sorted(shapes)
    chosen: dict[tuple, Shape] = {}
    for shape in sorted(shapes):
        chosen.setdefault(shape[2:] if shape[2] > 1 or shape[0] != shape[1] else shape, shape)
    return list(chosen.values())


def interleaved_samples(
    timers: dict[str, Callable[[], float]], repeat: int, pause_s: float = 0.01
) -> dict[str, list[float]]:
    """Seconds per call of each TVM timer, taking one batch of each in turn, ``repeat`` rounds, so
    that kernels compared with each other see the same load. The pause before each batch lets the
    previous one's spinning pool threads go to sleep."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeat):
        for name, timer in timers.items():
            time.sleep(pause_s)
            samples[name].append(timer())
    return samples


COLUMNS = (
    ("c_in", 5, "d"),
    ("c_out", 5, "d"),
    ("k", 2, "d"),
    ("groups", 3, "d"),
    ("stride", 2, "d"),
    ("height", 4, "d"),
    ("torch_us", 9, ".1f"),
    ("torch_gflops", 12, ".0f"),
    ("torch_avx2_us", 13, ".1f"),
    ("local_us", 9, ".1f"),
    ("x86-avx2_us", 11, ".1f"),
    ("pack_us", 8, ".1f"),
    ("speedup_local", 13, ".1f"),
    ("speedup_avx2", 12, ".1f"),
)


def measure_tvm(shape: ConvShape, targets: dict, repeat: int, min_repeat_ms: int, rng: np.random.Generator) -> dict:
    """Best and median us of each target's kernel and of its packer on one shape, interleaved."""
    w = rng.standard_normal((shape.c_out, shape.cg, shape.k, shape.k), dtype=np.float32)
    x_hwc = rng.standard_normal((shape.height, shape.width, shape.c_in), dtype=np.float32)
    timers, row = {}, {}
    for name, target in targets.items():
        func, tile = binary_conv2d(shape, target)
        size = shape.packed_input_shape(tile.word_bits)
        act = rng.integers(0, 2**tile.word_bits, size=size, dtype=tile.dtype)
        wgt = pack_weights(w, shape.groups, tile.vb, tile.word_bits)
        timers[name] = batch_timer(
            build(func, target), act, wgt, out_shape=shape.output_shape, out_dtype="int32", min_repeat_ms=min_repeat_ms
        )
        timers[f"{name}_pack"] = batch_timer(
            build(packer_for(shape, tile, target), target),
            x_hwc,
            np.zeros(shape.c_in, "float32"),
            out_shape=size,
            out_dtype=tile.dtype,
            min_repeat_ms=min_repeat_ms,
        )
        row[f"{name}_tile"] = [tile.px, tile.vb, tile.word_bits]
    for name, values in interleaved_samples(timers, repeat).items():
        row[f"{name}_us"] = min(values) * 1e6
        row[f"{name}_median_us"] = statistics.median(values) * 1e6
    row["pack_us"] = row.pop("local_pack_us")  # the field other tools read: the host's packer
    row["pack_median_us"] = row.pop("local_pack_median_us")
    return row


def speedups(row: dict, suffix: str = "") -> None:
    """Headline ratios (packing included) and the kernel-only ones, from best or median times; each
    build against the PyTorch of its instruction set, the AVX2 build also against this host's."""
    packs = {"local": row[f"pack{suffix}_us"], "x86-avx2": row[f"x86-avx2_pack{suffix}_us"]}
    baselines = {"local": row[f"torch{suffix}_us"], "x86-avx2": row[f"torch_avx2{suffix}_us"]}
    for name, short in (("local", "local"), ("x86-avx2", "avx2")):
        kernel = row[f"{name}{suffix}_us"]
        row[f"speedup_{short}{suffix}"] = baselines[name] / (kernel + packs[name])
        row[f"speedup_{short}_kernel{suffix}"] = baselines[name] / kernel
    avx2 = row[f"x86-avx2{suffix}_us"] + packs["x86-avx2"]
    row[f"speedup_avx2_host_torch{suffix}"] = row[f"torch{suffix}_us"] / avx2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every distinct shape of the space")
    parser.add_argument("--json", action="store_true", help="stdout holds one JSON object; logs to stderr")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15, help="batches per timer (default 15)")
    parser.add_argument("--min-repeat-ms", type=int, default=10)
    parser.add_argument("--limit", type=int, default=0, help="only the first N shapes (a quick run)")
    parser.add_argument("--min-gflops", type=float, default=MIN_GFLOPS, help="fail below this baseline")
    args = parser.parse_args(argv)
    log = sys.stderr if args.json else sys.stdout
    shapes = all_shapes(args.all)[: args.limit or None]
    try:
        return run(args, shapes, log)
    except HwnasError as exc:
        print(f"kernels.py: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, shapes: list[Shape], log) -> int:
    load_before = os.getloadavg()[0]
    # PyTorch first, alone, in fresh processes (all of this host's ISA, then AVX2 only); TVM's pool
    # in this one starts only afterwards
    baseline: list[CallTime] = torch_convs(shapes, args.threads, args.repeat, args.min_repeat_ms)
    gflops = check_baseline(baseline, "the large shapes", args.min_gflops)
    baseline_avx2 = torch_convs(shapes, args.threads, args.repeat, args.min_repeat_ms, isa="avx2")
    gflops_avx2 = check_baseline(baseline_avx2, "the large shapes (AVX2)", args.min_gflops)
    threads = tvm_targets.set_num_threads(args.threads)
    described = {name: load_target(name) for name in TARGETS}
    targets = {name: t.tvm_target() for name, t in described.items()}
    print(
        f"threads: {threads} each side; local mcpu {described['local'].tvm['mcpu']}, vector popcount "
        f"{tvm_targets.has_vector_popcount(targets['local'])}; load average {load_before:.2f}",
        file=log,
    )
    print(" ".join(f"{name:>{width}}" for name, width, _ in COLUMNS), file=log)
    rng = np.random.default_rng(0)
    rows = []
    for (c_in, c_out, k, g, s, h), torch_time, avx2_time in zip(shapes, baseline, baseline_avx2, strict=True):
        row = {"c_in": c_in, "c_out": c_out, "k": k, "groups": g, "stride": s, "height": h}
        row.update(torch_us=torch_time.best_s * 1e6, torch_median_us=torch_time.median_s * 1e6)
        row.update(torch_gflops=torch_time.gflops, macs=torch_time.macs)
        row.update(torch_avx2_us=avx2_time.best_s * 1e6, torch_avx2_median_us=avx2_time.median_s * 1e6)
        row.update(torch_avx2_gflops=avx2_time.gflops)
        row.update(measure_tvm(ConvShape(c_in, c_out, k, g, s, h, h), targets, args.repeat, args.min_repeat_ms, rng))
        speedups(row)
        speedups(row, "_median")
        rows.append(row)
        print(" ".join(f"{row[name]:>{width}{fmt}}" for name, width, fmt in COLUMNS), file=log, flush=True)
    summary = {
        key: statistics.median(r[key] for r in rows)
        for key in (
            "speedup_local",
            "speedup_avx2",
            "speedup_local_kernel",
            "speedup_avx2_kernel",
            "speedup_avx2_host_torch",
        )
    }
    summary_median = {key: statistics.median(r[f"{key}_median"] for r in rows) for key in summary}
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after", file=log)
    if gflops is not None:
        print(f"torch fp32 on the large shapes: median {gflops:.0f} GFLOP/s (best batches)", file=log)
    if gflops_avx2 is not None:
        print(f"torch fp32 kept to AVX2, the large shapes: median {gflops_avx2:.0f} GFLOP/s", file=log)
    print(
        f"median speedup local: {summary['speedup_local']:.1f} (with packing; kernel alone "
        f"{summary['speedup_local_kernel']:.1f})",
        file=log,
    )
    print(
        f"median speedup avx2: {summary['speedup_avx2']:.1f} against PyTorch kept to AVX2 (with packing; "
        f"kernel alone {summary['speedup_avx2_kernel']:.1f}); {summary['speedup_avx2_host_torch']:.1f} "
        "against this host's PyTorch",
        file=log,
    )
    if args.json:
        json.dump(
            {
                "threads": threads,
                "method": "torch alone in fresh processes (host ISA; AVX2 only for the AVX2 build), then TVM; "
                "best of repeat batches; packing included",
                "local_target": described["local"].tvm,
                "torch_gflops_large": gflops,
                "torch_avx2_gflops_large": gflops_avx2,
                "load_avg": [load_before, os.getloadavg()[0]],
                "rows": rows,
                **{f"median_{key}": value for key, value in summary.items()},
                **{f"median_{key}_median": value for key, value in summary_median.items()},
            },
            sys.stdout,
        )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
