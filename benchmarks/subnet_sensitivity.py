"""How well a trained supernet serves subnets away from its two extremes.

The sandwich rule trains the largest and the smallest subnet at every step; every other subnet
relies on weights shared with them. This script changes one dimension of each extreme at a time
(kernels, groups, widths, stem, depths) and prints the test accuracy (inherited weights, BN
recalibrated), so a user sees which dimension the shared weights do not yet serve.

    python benchmarks/subnet_sensitivity.py RUN_DIR [--split test] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace

from hwnas.arch import Arch, Layer
from hwnas.space import SearchSpace, StageSpace
from hwnas.train.distributed import set_threads
from hwnas.train.evaluate import evaluate_subnet
from hwnas.train.run import load_run

Change = Callable[[StageSpace, Layer], Layer]


def changed(space: SearchSpace, arch: Arch, change: Change) -> Arch:
    """``arch`` with ``change`` applied to every layer (given its stage's choices)."""
    stages = tuple(tuple(change(st, x) for x in stage) for st, stage in zip(space.stages, arch.stages, strict=True))
    return space.validate(replace(arch, stages=stages))


def with_depth(space: SearchSpace, arch: Arch, pick: Callable) -> Arch:
    """``arch`` with every stage cut to, or extended (repeating its last layer) to, ``pick`` of its depths."""
    stages = []
    for st, stage in zip(space.stages, arch.stages, strict=True):
        depth = pick(st.depths)
        stages.append(stage[:depth] + (stage[-1],) * (depth - len(stage)))
    return space.validate(replace(arch, stages=tuple(stages)))


def variants(space: SearchSpace) -> dict[str, Arch]:
    large, small = space.largest(), space.smallest()
    return {
        "largest": large,
        "largest, kernels 3": changed(space, large, lambda st, x: Layer(x.c, min(st.kernels), x.g)),
        "largest, most groups": changed(space, large, lambda st, x: Layer(x.c, x.k, max(st.groups))),
        "largest, middle widths": changed(space, large, lambda st, x: Layer(st.widths[1], x.k, x.g)),
        "largest, smallest widths": changed(space, large, lambda st, x: Layer(min(st.widths), x.k, x.g)),
        "largest, smallest stem": replace(large, stem=min(space.stem_widths)),
        "largest, smallest depths": with_depth(space, large, min),
        "smallest": small,
        "smallest, kernels 5": changed(space, small, lambda st, x: Layer(x.c, max(st.kernels), x.g)),
        "smallest, fewest groups": changed(space, small, lambda st, x: Layer(x.c, x.k, min(st.groups))),
        "smallest, largest widths": changed(space, small, lambda st, x: Layer(max(st.widths), x.k, x.g)),
        "smallest, largest depths": with_depth(space, small, max),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="trained run directory")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    run = load_run(args.run)
    set_threads(run.config.threads)
    calib, batches = run.calibration_batches(), run.batches(args.split)
    results = {name: evaluate_subnet(run.supernet, arch, calib, batches) for name, arch in variants(run.space).items()}
    if args.json:
        print(json.dumps({"split": args.split, "accuracy": results}))
        return
    for name, acc in results.items():
        print(f"{name:26s} {acc:.3f}")


if __name__ == "__main__":
    main()
