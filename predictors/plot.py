"""Predicted-vs-measured scatter plots (PNG, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def scatter_png(path: Path, panels: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """One log-log panel per (title, predicted ms, measured ms), the diagonal and a +-10 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (title, predicted, measured) in zip(axes[0], panels, strict=True):
        ax.scatter(measured, predicted, s=10, alpha=0.7)
        if len(measured):
            lo, hi = float(np.min([measured, predicted])) * 0.8, float(np.max([measured, predicted])) * 1.25
            line = np.array([lo, hi])
            ax.plot(line, line, "k-", lw=0.8)
            ax.fill_between(line, line * 0.9, line * 1.1, color="gray", alpha=0.2, label="+-10 %")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(loc="upper left")
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted (ms)")
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
