"""Ablation at a reduced, fixed budget: mean accuracy of random subnets with all techniques, then
without each of Bi-Teacher (BWBA teacher), Bi-Transformation, weight normalization and ND.

Every variant trains the same number of epochs from the same seeds into ``--out/VARIANT`` (an
existing finished run is reused), then evaluates ``--subnets`` random subnets of the full ND
space (BN recalibrated) on the test split, so every variant is judged on the same subnets.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

from hwnas.space import NASBNN, scaled_space
from hwnas.train.checkpoint import FILENAME
from hwnas.train.config import TrainConfig
from hwnas.train.distributed import set_threads
from hwnas.train.evaluate import evaluate_subnet, summarize
from hwnas.train.run import load_run, train_supernet

VARIANTS = {
    "all": {},
    "no_bi_teacher": {"teacher": "bwba"},
    "no_bi_transform": {"bi_transform": False},
    "no_weight_norm": {"weight_norm": False},
    "no_nd": {"nd": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--subnets", type=int, default=50)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    base = replace(TrainConfig(), epochs=args.epochs)
    set_threads(base.threads)
    archs = [scaled_space(NASBNN, base.width_mult).sample(random.Random(i)) for i in range(args.subnets)]
    results = {}
    for name in args.variants:
        run_dir = args.out / name
        if not (run_dir / FILENAME).exists():
            train_supernet(replace(base, **VARIANTS[name]), run_dir)
        run = load_run(run_dir)
        calib, test = run.calibration_batches(), run.batches("test")
        results[name] = summarize([evaluate_subnet(run.supernet, arch, calib, test) for arch in archs])
        print(f"{name:16s} mean {results[name]['mean']:.4f} std {results[name]['std']:.4f}", file=sys.stderr)
    print(json.dumps(results) if args.json else "\n".join(f"{k:16s} {v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
