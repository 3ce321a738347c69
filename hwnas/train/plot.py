"""Loss and accuracy curves of a run directory's ``metrics.jsonl``, drawn to a PNG."""

from __future__ import annotations

from pathlib import Path

from hwnas.errors import HwnasError
from hwnas.files import atomic_path
from hwnas.train.loop import METRICS, read_metrics


def plot_run(run_dir: Path, out: Path) -> Path:
    """Loss curves (left) and validation accuracies (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not (run_dir / METRICS).is_file():
        raise HwnasError(f"no {METRICS} in {run_dir} (is it a training run that finished an epoch?)")
    rows = read_metrics(run_dir / METRICS)
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
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out
