"""Accuracy of latency predictions as nn-Meter reports it: share within +-10 % and +-5 %, RMSE, Kendall tau."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import kendalltau


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float | None:
    """Kendall's tau-b of two rankings; None when it is undefined (fewer than 2 points, constants)."""
    if len(a) < 2:
        return None
    tau = kendalltau(a, b).statistic
    return None if np.isnan(tau) else float(tau)


def accuracy(predicted: np.ndarray, measured: np.ndarray) -> dict[str, Any]:
    """Error of ``predicted`` against ``measured`` (milliseconds, same order)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    if len(measured) == 0:
        return {"n": 0}
    relative = np.abs(predicted - measured) / measured
    return {
        "n": len(measured),
        "within_10pct": float(np.mean(relative <= 0.10)),
        "within_5pct": float(np.mean(relative <= 0.05)),
        "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
        "mean_abs_rel_error": float(np.mean(relative)),
        "kendall_tau": kendall_tau(predicted, measured),
    }
