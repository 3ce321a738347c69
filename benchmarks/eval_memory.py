"""Peak memory of `hwnas eval` on an ImageFolder of 1000 classes at two split sizes.

Generates two small ImageFolder trees (32x32 PNGs; the same ``train/``, ``val/`` with SMALL or
LARGE images per class), trains a one-step supernet on the first to have a run, then runs
``hwnas eval RUN ARCH --split test --data imagefolder:TREE`` on each in a fresh process and prints
its peak resident set size. Evaluation streams its split through a DataLoader, so the two peaks
should be about equal; a preloaded split grows by the images' tensors (here about 12 kB each).

    python benchmarks/eval_memory.py [--small 2] [--large 20] [--classes 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def make_tree(root: Path, classes: int, train: int, val: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"c{c:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def peak_mb(argv: list[str], env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", PEAK, *argv], check=True, capture_output=True, text=True, env=env)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--small", type=int, default=2, help="test images per class, small split")
    parser.add_argument("--large", type=int, default=20, help="test images per class, large split")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = {**os.environ, "HWNAS_HOME": str(tmp_path / "home")}
        trees = {n: make_tree(tmp_path / f"tree{n}", args.classes, 2, n) for n in (args.small, args.large)}
        run, arch = tmp_path / "run", tmp_path / "arch.json"
        common = ["--resolution", "32", "--width-mult", "0.125", "--batch-size", "32", "--calib-batches", "2"]
        data = f"imagefolder:{trees[args.small]}"
        hwnas = [sys.executable, "-m", "hwnas", "-q"]
        subprocess.run(
            [
                *hwnas,
                "train",
                "--data",
                data,
                *common,
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--val-per-class",
                "1",
                "--out",
                str(run),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run([*hwnas, "sample", "--smallest", "--run", str(run), "-o", str(arch)], check=True, env=env)
        rows = []
        for n, tree in trees.items():
            argv = [*hwnas, "eval", str(run), str(arch), "--split", "test", "--data", f"imagefolder:{tree}"]
            rows.append({"images": n * args.classes, "per_class": n, "peak_rss_mb": peak_mb(argv, env)})
    if args.json:
        print(json.dumps({"classes": args.classes, "runs": rows}))
    else:
        for r in rows:
            print(f"{r['images']:7d} test images ({r['per_class']:3d} a class): peak RSS {r['peak_rss_mb']:8.1f} MB")


if __name__ == "__main__":
    main()
