"""Evaluate a latency predictor on the measurements held out from its training.

Whole networks measured end to end are the figure that matters (nn-Meter's); held-out layer
kernels show where the layer model itself errs. Beside each, the Kendall tau that the OPs count
(networks) or the BOPs count (layers) reaches against the same measurements: what ranking by
OPs instead of latency would give. Fewer than ``MIN_JUDGED_NETWORKS`` held-out networks are
flagged (``enough_to_judge`` false): a tau of 1.0 from two networks says nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.predictors.features import LAYER_FEATURES, layer_features
from hwnas.predictors.latency import MIN_JUDGED_NETWORKS, LatencyPredictor, split
from hwnas.predictors.metrics import accuracy, kendall_tau
from hwnas.predictors.ops import count_ops
from hwnas.predictors.plot import scatter_png
from hwnas.targets.store import Store


def drift(store: Store) -> dict[str, Any]:
    """The reference network's readings over the store's life, relative to its nominal one: how much
    the device's speed moved between batches (what a held-out split of one session cannot show)."""
    readings = store.references()
    nominal = store.nominal_reference_ms()
    if not readings or not nominal:
        return {"batches": 0}
    relative = np.array([ms / nominal for _, ms in readings])
    return {
        "batches": len(readings),
        "first": readings[0][0],
        "last": readings[-1][0],
        "nominal_reference_ms": nominal,
        "relative_min": float(relative.min()),
        "relative_median": float(np.median(relative)),
        "relative_max": float(relative.max()),
        "share_over_1_1": float(np.mean(relative > 1.1)),
    }


@dataclass
class Evaluation:
    summary: dict[str, Any]
    panels: list[tuple[str, np.ndarray, np.ndarray]]

    def plot(self, path: Path) -> Path:
        return scatter_png(path, self.panels)


def evaluate(predictor: LatencyPredictor, store: Store) -> Evaluation:
    """Accuracy on the held-out networks (at the predictor's resolution) and layer kernels."""
    _, held = split(store, predictor.resolution, predictor.meta["holdout"])
    layer_pred = predictor.layer_ms(held.layers)
    bops = layer_features(held.layers)[:, LAYER_FEATURES.index("bops")] if len(held.layers) else np.zeros(0)
    layers = {**accuracy(layer_pred, held.layer_ms), "bops_kendall_tau": kendall_tau(bops, held.layer_ms)}
    net_pred = predictor.predict_many(held.networks) if held.networks else np.zeros(0)
    ops = np.array([count_ops(a, predictor.resolution).ops for a in held.networks])
    networks = {
        **accuracy(net_pred, held.network_ms),
        "ops_kendall_tau": kendall_tau(ops, held.network_ms),
        "enough_to_judge": len(held.networks) >= MIN_JUDGED_NETWORKS,
    }
    summary = {
        "target": predictor.meta["target"],
        "drift": drift(store),
        "resolution": predictor.resolution,
        "units": predictor.meta.get("units"),
        "calibration": asdict(predictor.calibration),
        "margin": asdict(predictor.margin),
        "networks": networks,
        "layers": layers,
    }
    panels = [("held-out layer kernels", layer_pred, held.layer_ms)]
    if held.networks:
        panels.insert(0, ("held-out whole networks", net_pred, held.network_ms))
    return Evaluation(summary, panels)
