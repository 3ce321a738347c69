"""The plot of one study: every trial, the infeasible ones marked, and its Pareto front (PNG)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hwnas.files import atomic_path
from hwnas.search.points import Point


def front_png(
    path: Path,
    trials: Sequence[Point],
    front: Sequence[Point],
    cost: Callable[[Point], float],
    cost_label: str,
    title: str,
) -> Path:
    """Accuracy against ``cost`` for every trial (feasible dots, infeasible crosses) and the front as steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for feasible, style in (
        (True, dict(marker=".", color="0.6", label="trials")),
        (False, dict(marker="x", color="tab:red", label="over budget")),
    ):
        chosen = [p for p in trials if p.feasible == feasible]
        if chosen:
            ax.scatter([cost(p) for p in chosen], [p.accuracy for p in chosen], s=14, alpha=0.7, **style)
    if front:
        ax.step([cost(p) for p in front], [p.accuracy for p in front], where="post", color="tab:blue")
        ax.scatter([cost(p) for p in front], [p.accuracy for p in front], color="tab:blue", s=24, label="front")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("top-1 accuracy (search split)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the suffix stays the path's, so savefig picks its format
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def hypervolume_png(path: Path, numbers: Sequence[int], volumes: Sequence[float], ylabel: str, title: str) -> Path:
    """The hypervolume of the feasible trials so far against the trial number (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwnas.files import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.step(numbers, volumes, where="post", color="tab:blue", marker=".")
    ax.set_xlabel("trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
