"""Loss and accuracy curves of a run directory's ``metrics.jsonl``, drawn to a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from hwnas.errors import HwnasError
from hwnas.train.loop import METRICS


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise HwnasError(f"no {METRICS} in {run_dir} (is it a training run that finished an epoch?)") from None


def plot_run(run_dir: Path, out: Path) -> Path:
    """Loss curves (left) and validation accuracies (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise HwnasError(f"{run_dir / METRICS} is empty")
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for prefix, axis, label in (("loss", left, "loss"), ("val_acc", right, "top-1 accuracy")):
        keys = sorted({k for r in rows for k in r if k.startswith(prefix)})
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, rows, strict=True) if r.get(key) is not None]
            axis.plot(*zip(*points, strict=True), marker=".", label=key)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if keys:
            axis.legend()
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
