"""Training throughput of one sandwich step (teacher + largest + smallest + random subnets), per way of using the cores.

Side by side, each in fresh processes of its own, one after the other: one process on one thread,
one process on every core's thread, one data-parallel process per core (DDP: each a slice of the
batch), and one process per core, at most one per subnet, splitting the step's subnets on the whole
batch (``hwnas train``'s default on CPUs: :mod:`hwnas.train.subnet_parallel`), all gloo and one
thread each; the last row is the default with the group weights runs had before ``dense``
(``first``: 4x fewer parameters at quarter width). Shapes: the config of ``--data`` (default
clutter: 32x32, its batch) with ``--num-random`` random subnets a step, and with ``--with-224`` one
ImageFolder-shaped batch at 224x224 (synthetic tensors, full-width NAS-BNN space). Prints the median
step time of the global batch over ``--steps`` timed steps after one warm-up step, images/s, the
speedup over one process on one thread, and rank 0's peak RSS. ``--json`` prints one JSON object.
Run from the repository root: ``python -m benchmarks.train_throughput [--steps 10] [--num-random 1]
[--with-224] [--json]``.
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
from hwnas.train.loop import forward_backward
from hwnas.train.optim import build_optimizer
from hwnas.train.sandwich import Sandwich
from hwnas.train.subnet_parallel import tasks_per_step, use_subnets
from hwnas.train.supernet import build_model, config_space


def measure(config: TrainConfig, steps: int) -> dict:
    """Median seconds per step of ``config``'s global batch, in this process or, under a process
    group, as one rank of it (the batch or the subnets split as ``config.parallel`` says), by the
    training loop's own step (:func:`hwnas.train.loop.forward_backward`)."""
    d = init_distributed(config.threads)
    torch.manual_seed(0)
    net = build_model(config, 10 if config.data == "digits" else 1000)
    objective = Sandwich(net, config_space(config), config)
    split = use_subnets(config.parallel, d.world, tasks_per_step(config.num_random, config.teacher == "bwba"), False)
    model = DistributedDataParallel(objective, find_unused_parameters=True) if d.world > 1 and not split else objective
    optimizer = build_optimizer(net, config.lr, config.weight_decay)
    batch = config.batch_size if split else config.batch_size // d.world
    x = torch.randn(batch, 3, config.resolution, config.resolution)
    y = torch.randint(0, net.num_classes, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        forward_backward(model, objective, x, y, d, split)
        optimizer.step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:])
    return {
        "processes": d.world,
        "parallel": "subnets" if split else "data" if d.world > 1 else "none",
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
    parser.add_argument("--data", default="clutter", help="the data whose defaults to use (default clutter)")
    parser.add_argument("--num-random", type=int, default=TrainConfig().num_random, help="random subnets a step")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    cores = default_processes()
    tasks = tasks_per_step(args.num_random, False)
    default_groups = TrainConfig().group_weights
    options = {
        "1 process x 1 thread": (1, 1, "data", default_groups),
        f"1 process x {cores} threads": (1, cores, "data", default_groups),
        f"{cores} processes x 1 thread (DDP)": (cores, 1, "data", default_groups),
        f"{min(cores, tasks)} processes x 1 thread (subnets)": (min(cores, tasks), 1, "subnets", default_groups),
        f"{min(cores, tasks)} processes x 1 thread (subnets, first group weights)": (
            min(cores, tasks),
            1,
            "subnets",
            "first",
        ),
    }
    default = replace(TrainConfig(), data=args.data, num_random=args.num_random)
    shapes = {"default": default}
    if args.with_224:
        shapes["imagefolder_224"] = replace(
            default, data="imagefolder:synthetic", resolution=224, width_mult=1.0, batch_size=args.batch_224
        )
    results: dict = {"cores": cores, "load_avg_before": os.getloadavg()[0], "shapes": {}}
    for shape, config in shapes.items():
        rows = {}
        for name, (processes, threads, parallel, groups) in options.items():
            option = replace(config, threads=threads, processes=processes, parallel=parallel, group_weights=groups)
            rows[name] = run_option(option, processes, args.steps)
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
                f"  {name:58s} {r['step_s_median']:6.3f} s/step  {r['images_per_s']:6.1f} images/s  "
                f"x{r['speedup']:.2f}  peak RSS {r['peak_rss_mib']:.0f} MiB"
            )
    print(f"load average {results['load_avg_before']:.1f} before, {results['load_avg_after']:.1f} after")


if __name__ == "__main__":
    main()
