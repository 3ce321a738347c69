"""Training throughput of one sandwich step (teacher + smallest + random subnets), per way of using the cores.

Side by side, each in fresh processes of its own, one after the other: one process on one thread
(the old default), one process on every core's thread, and one data-parallel process per core
(gloo, one thread each: ``hwnas train``'s default, :func:`hwnas.train.distributed.spawn`). Shapes:
the default config (digits, 32x32, its batch), and with ``--with-224`` one ImageFolder-shaped batch
at 224x224 (synthetic tensors, full-width NAS-BNN space). Prints the median step time of the
global batch over ``--steps`` timed steps after one warm-up step, images/s, the speedup over one
process on one thread, and rank 0's peak RSS. ``--json`` prints one JSON object. Run from the
repository root: ``python -m benchmarks.train_throughput [--steps 10] [--with-224] [--json]``.
Other jobs on the cores disturb these figures: compare options from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import replace

import torch
from torch.nn.parallel import DistributedDataParallel

from hwnas.compile.timing import in_fresh_process
from hwnas.train.config import TrainConfig
from hwnas.train.distributed import default_processes, init_distributed, spawn
from hwnas.train.optim import build_optimizer
from hwnas.train.sandwich import Sandwich
from hwnas.train.supernet import build_model, config_space


def measure(config: TrainConfig, steps: int) -> dict:
    """Median seconds per step of ``config``'s global batch, in this process or, under a process
    group, as one rank of it (each rank takes its share of the batch)."""
    d = init_distributed(config.threads)
    torch.manual_seed(0)
    net = build_model(config, 10 if config.data == "digits" else 1000)
    objective = Sandwich(net, config_space(config), config)
    model = DistributedDataParallel(objective, find_unused_parameters=True) if d.world > 1 else objective
    optimizer = build_optimizer(net, config.lr, config.weight_decay)
    batch = config.batch_size // d.world
    x = torch.randn(batch, 3, config.resolution, config.resolution)
    y = torch.randint(0, net.num_classes, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss, _ = model(x, y, objective.plan())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:])
    return {
        "processes": d.world,
        "threads": torch.get_num_threads(),
        "resolution": config.resolution,
        "width_mult": config.width_mult,
        "batch_size": config.batch_size,
        "subnets_per_step": 2 + config.num_random,
        "step_s_median": step_s,
        "images_per_s": config.batch_size / step_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_option(config: TrainConfig, processes: int, steps: int) -> dict:
    if processes > 1:
        return spawn(measure, (config, steps), processes)
    return in_fresh_process(measure, config, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per option and shape (default 10)")
    parser.add_argument("--with-224", action="store_true", help="also an ImageFolder-shaped batch at 224x224")
    parser.add_argument("--batch-224", type=int, default=8, help="batch of the 224x224 shape (default 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    cores = default_processes()
    options = {
        "1 process x 1 thread": (1, 1),
        f"1 process x {cores} threads": (1, cores),
        f"{cores} processes x 1 thread (DDP)": (cores, 1),
    }
    default = TrainConfig()
    shapes = {"default": default}
    if args.with_224:
        shapes["imagefolder_224"] = replace(
            default, data="imagefolder:synthetic", resolution=224, width_mult=1.0, batch_size=args.batch_224
        )
    results: dict = {"cores": cores, "load_avg_before": os.getloadavg()[0], "shapes": {}}
    for shape, config in shapes.items():
        rows = {}
        for name, (processes, threads) in options.items():
            rows[name] = run_option(replace(config, threads=threads, processes=processes), processes, args.steps)
            print(f"{shape}, {name}: {rows[name]}", file=sys.stderr, flush=True)
        base = next(iter(rows.values()))["step_s_median"]
        for row in rows.values():
            row["speedup"] = base / row["step_s_median"]
        results["shapes"][shape] = rows
    results["load_avg_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(results))
        return
    for shape, rows in results["shapes"].items():
        c = shapes[shape]
        print(f"{shape}: {c.resolution}x{c.resolution}, width x{c.width_mult}, batch {c.batch_size}")
        for name, r in rows.items():
            print(
                f"  {name:28s} {r['step_s_median']:6.3f} s/step  {r['images_per_s']:6.1f} images/s  "
                f"x{r['speedup']:.2f}  peak RSS {r['peak_rss_mib']:.0f} MiB"
            )
    print(f"load average {results['load_avg_before']:.1f} before, {results['load_avg_after']:.1f} after")


if __name__ == "__main__":
    main()
