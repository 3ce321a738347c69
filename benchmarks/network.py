"""End-to-end latency of compiled subnets against the same architectures in float32 PyTorch.

For the smallest, the largest and ``--random`` random subnets of the space (batch 1, 224x224 by
default, random weights), compiles the binary network with TVM for the host, checks it against
the PyTorch BWBA subnet, and times it against the float32 PyTorch network of the same
architecture (real weights and activations). Each side is timed alone in a fresh process, one
after the other (:mod:`hwnas.compile.timing`): in one process their thread pools starve each
other. Figures are the best of ``--repeat`` batches (medians in the JSON); PyTorch's GFLOP/s is
printed, and after the figures the script exits 2 with one line when it was implausibly low.

    python benchmarks/network.py [--resolution 224] [--random 10] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from hwnas.compile.deploy import CompiledNet, compile_subnet, export, verify
from hwnas.compile.timing import NetworkSpeed, network_speed
from hwnas.errors import HwnasError
from hwnas.model import build_supernet
from hwnas.space import NASBNN
from hwnas.targets.target import load_target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--random", type=int, default=10, help="random subnets besides the two ends (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subnets and weights")
    parser.add_argument("--repeat", type=int, default=20, help="batches per side (default 20)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results, speeds = measure(args)
    load = os.getloadavg()[0]
    speedups = [r["speedup"] for r in results]
    summary = {"min": min(speedups), "median": statistics.median(speedups), "max": max(speedups)}
    if args.json:
        print(
            json.dumps(
                {
                    "resolution": args.resolution,
                    "threads": args.threads,
                    "load_avg": load,
                    "results": results,
                    "speedup": summary,
                }
            )
        )
        return check(speeds)
    print(f"{'subnet':10s} {'MMACs':>7s} {'tvm ms':>8s} {'torch ms':>9s} {'GFLOP/s':>8s} {'speedup':>8s}  verified")
    for r in results:
        print(
            f"{r['subnet']:10s} {r['macs'] / 1e6:7.0f} {r['latency_ms']:8.2f} {r['torch_fp32_ms']:9.2f} "
            f"{r['torch_gflops']:8.0f} {r['speedup']:8.1f}  {r['verified']}"
        )
    for r in results[:2]:
        print(f"speedup {r['subnet']}: {r['speedup']:.1f}")
    print(f"speedup over all {len(results)}: min {summary['min']:.1f}, median {summary['median']:.1f}")
    print(f"load average after the run: {load:.1f} (best of {args.repeat} batches per side, each side alone)")
    return check(speeds)


def check(speeds: list[NetworkSpeed]) -> int:
    """0, or 2 with one line when a baseline was implausibly slow (after all the figures)."""
    try:
        for speed in speeds:
            speed.check()
    except HwnasError as exc:
        print(f"network.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


def measure(args: argparse.Namespace) -> tuple[list[dict], list[NetworkSpeed]]:
    target = load_target("local").tvm_target()
    torch.manual_seed(args.seed)
    supernet = build_supernet(NASBNN, 1000).eval()
    rng = random.Random(args.seed)
    subnets = [("smallest", NASBNN.smallest()), ("largest", NASBNN.largest())]
    subnets += [(f"random{i}", NASBNN.sample(rng)) for i in range(args.random)]
    results, speeds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch in subnets:
            subnet = supernet.extract(arch)
            path = export(compile_subnet(subnet, args.resolution, target), Path(tmp) / f"{name}.so")
            check = verify(CompiledNet.load(path), subnet, args.resolution, samples=1)
            speed = network_speed(path, arch, 1000, args.resolution, args.threads, args.repeat)
            row = {"subnet": name, "arch": str(arch), "macs": speed.torch.macs, "verified": check.ok}
            row.update(speed.to_json(), max_rel_error=check.max_rel_error)
            results.append(row)
            speeds.append(speed)
            print(
                f"{name}: tvm {row['latency_ms']:.2f} ms, torch fp32 {row['torch_fp32_ms']:.2f} ms "
                f"({row['torch_gflops']:.0f} GFLOP/s), speedup {row['speedup']:.1f}, verified {check.ok}",
                file=sys.stderr,
                flush=True,
            )
    return results, speeds


if __name__ == "__main__":
    sys.exit(main())
