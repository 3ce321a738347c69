"""Training throughput and peak memory of one sandwich step (teacher + smallest + random subnets).

Two shapes: the default config (digits, 32x32, its batch) and one ImageFolder-shaped batch at
224x224 (synthetic tensors, full-width NAS-BNN space). Prints medians over ``--steps`` timed
steps after one warm-up step, and the process's peak RSS (which only grows, so the 224 figure
includes the 32 one). ``--json`` prints one JSON object. Run from the repository root:
``python -m benchmarks.train_throughput [--json]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import replace

import torch

from hwnas.train.config import TrainConfig
from hwnas.train.distributed import set_threads
from hwnas.train.optim import build_optimizer
from hwnas.train.sandwich import Sandwich
from hwnas.train.supernet import build_model, config_space


def measure(config: TrainConfig, steps: int) -> dict:
    torch.manual_seed(0)
    net = build_model(config, 10 if config.data == "digits" else 1000)
    objective = Sandwich(net, config_space(config), config)
    optimizer = build_optimizer(net, config.lr, config.weight_decay)
    x = torch.randn(config.batch_size, 3, config.resolution, config.resolution)
    y = torch.randint(0, net.num_classes, (config.batch_size,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss, _ = objective(x, y, objective.plan())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:])
    return {
        "resolution": config.resolution,
        "width_mult": config.width_mult,
        "batch_size": config.batch_size,
        "subnets_per_step": 2 + config.num_random,
        "step_s_median": step_s,
        "images_per_s": config.batch_size / step_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per shape (default 5)")
    parser.add_argument("--batch-224", type=int, default=8, help="batch of the 224x224 shape (default 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    default = TrainConfig()
    set_threads(default.threads)
    big = replace(default, data="imagefolder:synthetic", resolution=224, width_mult=1.0, batch_size=args.batch_224)
    results = {"threads": torch.get_num_threads(), "default": measure(default, args.steps)}
    print(f"default: {results['default']}", file=sys.stderr)
    results["imagefolder_224"] = measure(big, args.steps)
    if args.json:
        print(json.dumps(results))
        return
    for name in ("default", "imagefolder_224"):
        r = results[name]
        print(
            f"{name:16s} {r['resolution']}x{r['resolution']} width x{r['width_mult']} batch {r['batch_size']}: "
            f"{r['images_per_s']:.1f} images/s ({r['step_s_median']:.2f} s/step), peak RSS {r['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
