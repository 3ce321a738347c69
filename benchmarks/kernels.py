"""Benchmark the binary conv kernels against PyTorch float32 on the NAS-BNN layer shapes.

For every binary layer shape of stages 2-5 of the search space at 224x224 input, times side by
side in one run, on the same number of threads: the TVM kernel built for this host (``local``),
the AVX2-only build of the same kernel (runs here too), and ``torch.nn.functional.conv2d``
float32. Kernel times exclude activation packing, which is shown in its own column (``local``
packer, channels-last input).

Shapes: a searched layer is a k x k group conv c_in -> c_in (groups g, the layer's stride) then a
1x1 conv c_in -> c. The shapes come from the space's distinct layer configurations
(``hwnas.targets.configs.layer_configs``). The default is a deterministic subset: the first shape (by
channels) of every (k, g, stride, height), every square 1x1 and one widening 1x1 per height;
``--all`` benchmarks every distinct shape the space can produce (144, widths non-decreasing).

    python benchmarks/kernels.py [--all] [--json] [--threads 2]

Other jobs on the same cores inflate torch's 2-thread OpenMP times far more than TVM's (each
OpenMP barrier waits for a descheduled thread: 30-70 ms per conv were seen at load average 6 on
2 vCPUs, against 0.3-5 ms when quiet). The load average is printed before and after, and the
JSON holds per-timer minima too; at high load prefer ``--threads 1`` for a fair comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.arch import STEM_KERNEL, STEM_STRIDE, conv_out_size
from hwnas.compile import tvm_targets
from hwnas.compile.binconv import ConvShape, binary_conv2d
from hwnas.compile.bitpack import pack_weights, packer_for
from hwnas.compile.runner import batch_timer, build
from hwnas.space import NASBNN
from hwnas.targets.configs import layer_configs
from hwnas.targets.target import load_target

Shape = tuple[int, int, int, int, int, int]  # (c_in, c_out, k, groups, stride, height)


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


def torch_timer(fn: Callable[[], object], min_repeat_ms: int) -> Callable[[], float]:
    """Like ``runner.batch_timer`` for a Python callable: times one batch, returns s per call."""
    fn()
    start = time.perf_counter()
    fn()
    number = max(1, math.ceil(min_repeat_ms * 1e-3 / (time.perf_counter() - start)))

    def batch() -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number

    return batch


def interleaved_samples(
    timers: dict[str, Callable[[], float]], repeat: int, pause_s: float = 0.01
) -> dict[str, list[float]]:
    """Seconds per call of each timer, taking one batch of each in turn, ``repeat`` rounds,
    so that all of them see the same load from other jobs on the machine. The pause before each
    batch lets the previous one's spinning worker threads (OpenMP's and TVM's) go to sleep."""
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
    ("local_us", 9, ".1f"),
    ("x86-avx2_us", 11, ".1f"),
    ("pack_us", 8, ".1f"),
    ("speedup_local", 13, ".1f"),
    ("speedup_avx2", 12, ".1f"),
)


def measure(shape: ConvShape, targets: dict, repeat: int, min_repeat_ms: int, rng: np.random.Generator) -> dict:
    """Interleaved medians of torch, each target's kernel and the local packer on one shape."""
    x = torch.randn(1, shape.c_in, shape.height, shape.width)
    w = torch.randn(shape.c_out, shape.cg, shape.k, shape.k)

    def torch_conv() -> torch.Tensor:
        return F.conv2d(x, w, stride=shape.stride, padding=shape.pad, groups=shape.groups)

    timers = {"torch": torch_timer(torch_conv, min_repeat_ms)}
    row: dict = {}
    tiles = {}
    for name, target in targets.items():
        func, tiles[name] = binary_conv2d(shape, target)
        tile = tiles[name]
        size = shape.packed_input_shape(tile.word_bits)
        act = rng.integers(0, 2**tile.word_bits, size=size, dtype=tile.dtype)
        wgt = pack_weights(w.numpy(), shape.groups, tile.vb, tile.word_bits)
        timers[name] = batch_timer(
            build(func, target), act, wgt, out_shape=shape.output_shape, out_dtype="int32", min_repeat_ms=min_repeat_ms
        )
        row[f"{name}_tile"] = [tile.px, tile.vb, tile.word_bits]
    x_hwc = np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())
    local = targets["local"]
    timers["pack"] = batch_timer(
        build(packer_for(shape, tiles["local"], local), local),
        x_hwc,
        np.zeros(shape.c_in, "float32"),
        out_shape=shape.packed_input_shape(tiles["local"].word_bits),
        out_dtype=tiles["local"].dtype,
        min_repeat_ms=min_repeat_ms,
    )
    for name, values in interleaved_samples(timers, repeat).items():
        row[f"{name}_us"] = statistics.median(values) * 1e6
        row[f"{name}_min_us"] = min(values) * 1e6  # less sensitive to other jobs than the median
    row["speedup_local"] = row["torch_us"] / row["local_us"]
    row["speedup_avx2"] = row["torch_us"] / row["x86-avx2_us"]
    row["speedup_local_min"] = row["torch_min_us"] / row["local_min_us"]
    row["speedup_avx2_min"] = row["torch_min_us"] / row["x86-avx2_min_us"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every distinct shape of the space")
    parser.add_argument("--json", action="store_true", help="stdout holds one JSON object; logs to stderr")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--min-repeat-ms", type=int, default=10)
    args = parser.parse_args(argv)
    log = sys.stderr if args.json else sys.stdout

    threads = tvm_targets.set_num_threads(args.threads)  # before any TVM kernel runs
    torch.set_num_threads(args.threads)
    described = {name: load_target(name) for name in ("local", "x86-avx2")}
    targets = {name: t.tvm_target() for name, t in described.items()}
    # other jobs on the cores distort torch's OpenMP far more than TVM's pool: show the load
    print(
        f"threads: tvm {threads}, torch {torch.get_num_threads()}; local mcpu "
        f"{described['local'].tvm['mcpu']}, vector popcount "
        f"{tvm_targets.has_vector_popcount(targets['local'])}; load average {os.getloadavg()[0]:.2f}",
        file=log,
    )
    print(" ".join(f"{name:>{width}}" for name, width, _ in COLUMNS), file=log)
    rng = np.random.default_rng(0)
    rows = []
    for c_in, c_out, k, g, s, h in all_shapes(args.all):
        row = {"c_in": c_in, "c_out": c_out, "k": k, "groups": g, "stride": s, "height": h}
        shape = ConvShape(c_in, c_out, k, g, s, h, h)
        row.update(measure(shape, targets, args.repeat, args.min_repeat_ms, rng))
        rows.append(row)
        print(" ".join(f"{row[name]:>{width}{fmt}}" for name, width, fmt in COLUMNS), file=log, flush=True)
    med_local = statistics.median(r["speedup_local"] for r in rows)
    med_avx2 = statistics.median(r["speedup_avx2"] for r in rows)
    print(f"load average {os.getloadavg()[0]:.2f}", file=log)
    print(f"median speedup local: {med_local:.1f}", file=log)
    print(f"median speedup avx2: {med_avx2:.1f}", file=log)
    if args.json:
        json.dump(
            {
                "threads": threads,
                "local_target": described["local"].tvm,
                "rows": rows,
                "median_speedup_local": med_local,
                "median_speedup_avx2": med_avx2,
                "median_speedup_local_min": statistics.median(r["speedup_local_min"] for r in rows),
                "median_speedup_avx2_min": statistics.median(r["speedup_avx2_min"] for r in rows),
            },
            sys.stdout,
        )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
