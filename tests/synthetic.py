"""A synthetic target: latencies from a known formula, written into a target's store, so that
predictors can be trained and searched with in tests without a device."""

from __future__ import annotations

import numpy as np

from hwnas.predictors.features import LAYER_FEATURES, config_matrix, layer_features, network_work
from hwnas.predictors.latency import LatencyPredictor, fit
from hwnas.space import NASBNN
from hwnas.targets.configs import arch_configs, layer_configs, part_configs, sample_networks
from hwnas.targets.store import Store, layer_key, network_key, part_key
from hwnas.targets.target import load_target

RES = 224
REFERENCE_MS = 4.0
"""The synthetic reference network's latency at the device's nominal speed."""


def column(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, LAYER_FEATURES.index(name)]


def true_layer_ms(configs, scale: float = 1.0) -> np.ndarray:
    """Popcount word operations and bytes moved, plus a fixed cost per layer."""
    f = layer_features(config_matrix(configs))
    return scale * (
        2e-6 * column(f, "word_ops_group") + 5e-7 * column(f, "word_ops_point") + 3e-7 * column(f, "bytes_moved") + 0.02
    )


def true_part_ms(kind: str, c: int) -> float:
    """The stem (grows with its width) and head (fixed)."""
    return 0.1 + 0.004 * c if kind == "stem" else 0.3


def true_network_ms(arch, scale: float = 1.0, res: int = RES, per_gbop: float = 0.0) -> float:
    """The formula's whole network: 15 % over its layers, stem and head, plus 0.2 ms; plus
    ``per_gbop`` ms per billion binary MACs (a device whose popcounts cost more than the layer
    formula's, as AVX2's do against AVX-512's)."""
    parts = true_part_ms("stem", arch.stem) + true_part_ms("head", arch.last_width)
    work = per_gbop * network_work([arch], res)[0, 0] if per_gbop else 0.0
    return 1.15 * (true_layer_ms(arch_configs(arch, res), scale).sum() + parts) + 0.2 + work


def fill_store(
    target: str,
    networks: int,
    noise: float = 0.02,
    seed: int = 0,
    scale: float = 1.0,
    res: int = RES,
    layers: bool = True,
    slow: float = 0.0,
    per_gbop: float = 0.0,
) -> None:
    """Every layer (unless not ``layers``), stem and head config of NASBNN at ``res`` and ``networks``
    subnets of ``target`` (in the current HWNAS_HOME), latencies from the formula (layers times
    ``scale``) with noise. With ``slow`` > 0, that share of the rows is measured while the device
    runs 1.5 to 2.5x slow, and every row records the reference network timed beside it."""
    rng = np.random.default_rng(seed)

    def add(store: Store, key, ms, sigma: float = noise) -> None:
        first = store.nominal_reference_ms() is None  # at nominal speed: it sets the units
        speed = rng.uniform(1.5, 2.5) if rng.random() < slow and not first else 1.0
        reference = REFERENCE_MS * speed * (1 if first else rng.lognormal(0, 0.005)) if slow else None
        store.add(key, speed * np.asarray(ms) * rng.lognormal(0, sigma, 5), reference)

    with Store.for_target(load_target(target)) as store:
        configs = layer_configs(NASBNN, res) if layers else []
        for config, ms in zip(configs, true_layer_ms(configs, scale), strict=True):
            add(store, layer_key(config, res), ms)
        for part in part_configs(NASBNN, res):
            add(store, part_key(part, res), true_part_ms(part.kind, part.to_json()["c"]), sigma=0.0)
        for arch in sample_networks(NASBNN, networks, seed):
            add(store, network_key(arch, res), true_network_ms(arch, scale, res, per_gbop))


def fit_predictor(
    target: str, networks: int = 20, scale: float = 1.0, n_estimators: int = 300, res: int = RES
) -> LatencyPredictor:
    """Fill ``target``'s store synthetically, fit its predictor and save it (in the current HWNAS_HOME)."""
    fill_store(target, networks, scale=scale, res=res)
    with Store.for_target(load_target(target)) as store:
        predictor = fit(load_target(target), store, res, n_estimators=n_estimators)
    predictor.save()
    return predictor
