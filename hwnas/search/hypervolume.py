"""Dominance and exact 2-D hypervolume of (accuracy, cost) points: accuracy maximised, cost minimised.

Cost is any "lower is better" objective (measured latency, OPs). Fronts found under one cost are
re-evaluated under another, so their points need not be mutually non-dominated any more: every
function here accepts arbitrary point sets.
"""

from __future__ import annotations

from collections.abc import Sequence

Objectives = tuple[float, float]
"""(accuracy, cost)."""


def dominates(a: Objectives, b: Objectives) -> bool:
    """``a`` is at least as accurate and as cheap as ``b``, and strictly better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def non_dominated(points: Sequence[Objectives]) -> list[int]:
    """Indices of the points no other point dominates (equal points keep each other)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def hypervolume(points: Sequence[Objectives], reference: Objectives) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (worst accuracy, worst cost).

    Sweeping by cost, a point adds the band of accuracy above the best seen so far, from its
    cost to the reference; dominated points add nothing, so this is the hypervolume of the
    non-dominated subset. Points not better than the reference in both objectives add nothing.
    """
    acc_ref, cost_ref = reference
    volume, best = 0.0, acc_ref
    for cost, acc in sorted((cost, acc) for acc, cost in points if acc > acc_ref and cost < cost_ref):
        if acc > best:
            volume += (cost_ref - cost) * (acc - best)
            best = acc
    return volume


def hypervolume_history(points: Sequence[Objectives], reference: Objectives) -> list[float]:
    """The hypervolume of the first k points, for each k: how a search's front grew, trial by trial."""
    return [hypervolume(points[: k + 1], reference) for k in range(len(points))]
