"""Forward-pass latency of the smallest and largest subnets in PyTorch (float simulation, batch 1).

Usage: python benchmarks/forward.py [--resolution 224] [--repeats 10] [--threads 2] [--json]
Prints the median and spread over repeats, after warm-up, per subnet and mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from hwnas.model import Mode, build_supernet
from hwnas.space import NASBNN


def median_ms(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), max(times) - min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    supernet = build_supernet(NASBNN, 1000).eval()
    image = torch.randn(1, 3, args.resolution, args.resolution)
    rows = []
    for name, arch in (("smallest", NASBNN.smallest()), ("largest", NASBNN.largest())):
        subnet = supernet.extract(arch)
        for mode in (Mode.BWBA, Mode.FWFA):
            subnet.set_mode(mode)
            with torch.inference_mode():
                med, spread = median_ms(lambda subnet=subnet: subnet(image), args.repeats)
            rows.append({"subnet": name, "mode": mode.value, "median_ms": med, "spread_ms": spread})
            print(f"{name:8s} {mode.value}: {med:8.1f} ms (spread {spread:.1f})", file=sys.stderr)
    if args.json:
        print(json.dumps({"resolution": args.resolution, "threads": args.threads, "results": rows}))
    else:
        for r in rows:
            print(f"{r['subnet']:8s} {r['mode']}  median {r['median_ms']:.1f} ms  spread {r['spread_ms']:.1f} ms")


if __name__ == "__main__":
    main()
