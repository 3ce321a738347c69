"""End-to-end latency of compiled subnets against the same architectures in float32 PyTorch.

For the smallest and the largest subnet of the space (batch 1, 224x224 by default, random
weights), compiles the binary network with TVM for the host, checks it against the PyTorch
BWBA subnet, and times it side by side with the float32 PyTorch network of the same
architecture (real weights and activations), alternating the two for ``--rounds`` rounds so both
see the same machine load. Prints medians, spreads and the ratio (a line ``speedup NAME: X``).

    python benchmarks/network.py [--resolution 224] [--rounds 7] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch

from hwnas.compile import tvm_targets
from hwnas.compile.deploy import CompiledNet, compile_subnet, float_baseline, time_torch_ms, verify
from hwnas.model import build_supernet
from hwnas.space import NASBNN
from hwnas.targets.target import load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tvm_targets.set_num_threads(args.threads)
    target = load_target("local").tvm_target()
    torch.manual_seed(0)
    supernet = build_supernet(NASBNN, 1000).eval()
    image = np.random.default_rng(0).standard_normal((1, 3, args.resolution, args.resolution), dtype=np.float32)
    results = []
    for name, arch in (("smallest", NASBNN.smallest()), ("largest", NASBNN.largest())):
        subnet = supernet.extract(arch)
        net = CompiledNet(compile_subnet(subnet, args.resolution, target).executable)
        check = verify(net, subnet, args.resolution, samples=2)
        baseline = float_baseline(arch, 1000)
        tvm_ms, torch_ms = [], []
        for _ in range(args.rounds):
            tvm_ms.append(net.time_ms(image, repeat=5)[0])
            torch_ms.append(time_torch_ms(baseline, image, repeat=3)[0])
        row = {
            "subnet": name,
            "tvm_ms": statistics.median(tvm_ms),
            "tvm_spread_ms": max(tvm_ms) - min(tvm_ms),
            "torch_fp32_ms": statistics.median(torch_ms),
            "torch_spread_ms": max(torch_ms) - min(torch_ms),
            "verified": check.ok,
            "max_rel_error": check.max_rel_error,
        }
        row["speedup"] = row["torch_fp32_ms"] / row["tvm_ms"]
        results.append(row)
        print(
            f"{name}: tvm {row['tvm_ms']:.2f} ms, torch fp32 {row['torch_fp32_ms']:.2f} ms, verified {check.ok}",
            file=sys.stderr,
        )
    load = os.getloadavg()[0]
    if args.json:
        print(
            json.dumps({"resolution": args.resolution, "threads": args.threads, "load_avg": load, "results": results})
        )
        return
    print(f"{'subnet':10s} {'tvm ms':>9s} {'spread':>8s} {'torch ms':>9s} {'spread':>8s} {'speedup':>8s}  verified")
    for r in results:
        print(
            f"{r['subnet']:10s} {r['tvm_ms']:9.2f} {r['tvm_spread_ms']:8.2f} {r['torch_fp32_ms']:9.2f} "
            f"{r['torch_spread_ms']:8.2f} {r['speedup']:8.1f}  {r['verified']}"
        )
    for r in results:
        print(f"speedup {r['subnet']}: {r['speedup']:.1f}")
    print(f"load average during the run: {load:.1f} (ratios are measured side by side; absolute times are not)")


if __name__ == "__main__":
    main()
