"""Per-target latency predictor: XGBoost on layer features, calibrated on whole networks.

A layer's latency (its four kernels, as :mod:`hwnas.targets.tvm_measures` measures them) is predicted
by an XGBoost regressor on :mod:`hwnas.predictors.features`, trained on log-milliseconds so that small
and large layers weigh alike. The stem and the head take a handful of configurations, all
measured, so they are looked up, not learnt. A network's latency is ``slope * (sum of layer
predictions + stem + head) + intercept``: the calibration, a robust line fitted on whole
networks measured end to end, absorbs what the kernels leave out (the VM's per-call work, caches
cold between kernels). With fewer than ``MIN_CALIBRATION_NETWORKS`` measured networks it is the
identity.

Measurements are split once, by a hash of their key, into training and held-out sets (20 % held
out by default), so ``fit`` and ``evaluate`` agree on the split without storing it.

Saved under ``<data dir>/predictors/<target>/``: ``layers.json`` (XGBoost's own JSON model) and
``predictor.json`` (target name and fingerprint, feature schema and names, calibration, training
metadata). Loading checks the target, its fingerprint and the schema version and refuses a
mismatch with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.paths import data_dir
from hwnas.predictors.features import (
    FEATURE_SCHEMA_VERSION,
    LAYER_FEATURES,
    arch_config_matrix,
    config_matrix,
    config_rows,
    layer_features,
)
from hwnas.targets.configs import arch_parts
from hwnas.targets.store import Key, Store, part_key
from hwnas.targets.target import Target

MODEL_FILE = "layers.json"
META_FILE = "predictor.json"
MIN_CALIBRATION_NETWORKS = 3
DEFAULT_HOLDOUT = 0.2


class PredictorError(HwnasError):
    """A predictor that is missing, or made for another target or feature schema."""


def predictor_dir(target_name: str) -> Path:
    return data_dir() / "predictors" / target_name


def is_holdout(key: Key, fraction: float) -> bool:
    """True for the keys held out from training: a fixed pseudo-random ``fraction`` of them."""
    digest = hashlib.sha256(f"{key.kind}|{key.config}|{key.resolution}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class Calibration:
    """network ms = slope * (sum of the layers' predicted ms) + intercept."""

    slope: float = 1.0
    intercept: float = 0.0
    networks: int = 0

    @property
    def is_identity(self) -> bool:
        return self.slope == 1.0 and self.intercept == 0.0

    def apply(self, layer_sum: Any) -> Any:
        return self.slope * layer_sum + self.intercept

    @classmethod
    def fit(cls, layer_sum: np.ndarray, measured: np.ndarray) -> Calibration:
        """A robust (Huber) line through the networks; the identity with too few of them or a
        non-positive slope.

        Robust because a network measured while another job held a core comes out about twice too
        slow with a tight spread (see :meth:`hwnas.targets.session.Session.time_ms`); with least squares
        two such networks out of thirty tilted the line by 70 % and every prediction with it.
        """
        if len(measured) < MIN_CALIBRATION_NETWORKS:
            return cls(networks=len(measured))
        from sklearn.linear_model import HuberRegressor

        line = HuberRegressor(alpha=0.0).fit(np.asarray(layer_sum, dtype=float).reshape(-1, 1), measured)
        slope, intercept = float(line.coef_[0]), float(line.intercept_)
        if slope <= 0:
            return cls(networks=len(measured))
        return cls(float(slope), float(intercept), len(measured))


@dataclass
class Dataset:
    """Layer and network measurements as arrays (one side of the train / held-out split)."""

    layers: np.ndarray  # config matrix
    layer_ms: np.ndarray
    networks: list[Arch]
    network_ms: np.ndarray


def split(store: Store, resolution: int, holdout: float) -> tuple[Dataset, Dataset]:
    """(training, held out) measurements: layers at any resolution, networks at ``resolution``."""
    parts: dict[bool, dict[str, list]] = {side: {"l": [], "lm": [], "n": [], "nm": []} for side in (False, True)}
    for m in store.measurements("layer"):
        part = parts[is_holdout(m.key, holdout)]
        part["l"].append(m.key.layer())
        part["lm"].append(m.median_ms)
    for m in store.measurements("network"):
        if m.key.resolution == resolution:
            part = parts[is_holdout(m.key, holdout)]
            part["n"].append(m.key.arch())
            part["nm"].append(m.median_ms)
    train, held = (
        Dataset(
            config_matrix(p["l"]),
            np.array(p["lm"], dtype=float),
            p["n"],
            np.array(p["nm"], dtype=float),
        )
        for p in (parts[False], parts[True])
    )
    return train, held


def part_table(store: Store) -> list[dict[str, Any]]:
    """Every stem and head measurement of the store, as saved in the predictor's metadata."""
    return [
        {"kind": m.key.kind, "config": m.key.config, "resolution": m.key.resolution, "ms": m.median_ms}
        for kind in ("stem", "head")
        for m in store.measurements(kind)
    ]


class LatencyPredictor:
    """Predicts a subnet's latency (ms) on one target; see the module docstring."""

    def __init__(self, model: xgb.XGBRegressor, calibration: Calibration, meta: dict[str, Any]) -> None:
        self.model = model
        self.calibration = calibration
        self.meta = meta
        self._cache: dict[tuple[int, ...], float] = {}
        self._parts = {Key(p["kind"], p["config"], p["resolution"]): p["ms"] for p in meta["parts"]}

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    def layer_ms(self, configs: np.ndarray) -> np.ndarray:
        """Predicted milliseconds of each row of a config matrix."""
        if len(configs) == 0:
            return np.zeros(0)
        return np.exp(self.model.get_booster().inplace_predict(layer_features(configs)))

    def parts_ms(self, arch: Arch, resolution: int) -> float:
        """Measured milliseconds of the subnet's stem and head; PredictorError if not profiled."""
        total = 0.0
        for part in arch_parts(arch, resolution):
            key = part_key(part, resolution)
            if key not in self._parts:
                raise PredictorError(
                    f"no {part} measurement at {resolution}x{resolution} for target {self.meta['target']!r}; "
                    f"profile it (`hwnas profile --target {self.meta['target']} --resolution {resolution}`) and refit"
                )
            total += self._parts[key]
        return total

    def predict(self, arch: Arch, resolution: int | None = None) -> float:
        """Predicted milliseconds of one subnet; layer predictions are cached per configuration."""
        resolution = resolution or self.resolution
        rows = config_rows(arch, resolution)
        unknown = [row for row in dict.fromkeys(rows) if row not in self._cache]
        if unknown:
            self._cache.update(zip(unknown, self.layer_ms(np.array(unknown, dtype=np.int64)).tolist(), strict=True))
        return float(self.calibration.apply(sum(self._cache[row] for row in rows) + self.parts_ms(arch, resolution)))

    def predict_many(self, archs: Sequence[Arch], resolution: int | None = None) -> np.ndarray:
        """Predicted milliseconds of many subnets; each distinct layer configuration is predicted once."""
        resolution = resolution or self.resolution
        configs, owner = arch_config_matrix(archs, resolution)
        unique, inverse = np.unique(configs, axis=0, return_inverse=True)
        per_layer = self.layer_ms(unique)[inverse.reshape(-1)]
        parts = np.array([self.parts_ms(arch, resolution) for arch in archs])
        return self.calibration.apply(np.bincount(owner, weights=per_layer, minlength=len(archs)) + parts)

    # ----------------------------------------------------------------- persistence
    def save(self, directory: Path | None = None) -> Path:
        directory = directory or predictor_dir(self.meta["target"])
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_model(directory / MODEL_FILE)
        meta = {**self.meta, "calibration": asdict(self.calibration)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, target: Target, directory: Path | None = None) -> LatencyPredictor:
        """The saved predictor of ``target``; PredictorError if missing or made for something else."""
        directory = directory or predictor_dir(target.name)
        meta_path = directory / META_FILE
        if not meta_path.is_file() or not (directory / MODEL_FILE).is_file():
            raise PredictorError(
                f"no latency predictor for target {target.name!r} in {directory}; "
                f"run `hwnas predictor fit --target {target.name}`"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise PredictorError(f"{meta_path}: not valid JSON ({exc.msg}); refit the predictor") from None
        refit = f"refit with `hwnas predictor fit --target {target.name}`"
        if meta.get("target") != target.name:
            raise PredictorError(
                f"{directory} holds a predictor for target {meta.get('target')!r}, not {target.name!r}"
            )
        if meta.get("feature_schema") != FEATURE_SCHEMA_VERSION:
            raise PredictorError(
                f"{directory}: predictor uses feature schema {meta.get('feature_schema')}, "
                f"this hwnas uses {FEATURE_SCHEMA_VERSION}; {refit}"
            )
        if meta.get("target_fingerprint") != target.fingerprint():
            raise PredictorError(
                f"{directory}: predictor was made for target {target.name!r} as {meta.get('target_fingerprint')}, "
                f"which is now {target.fingerprint()}; {refit}"
            )
        model = xgb.XGBRegressor()
        model.load_model(directory / MODEL_FILE)
        return cls(model, Calibration(**meta.pop("calibration")), meta)


def fit(
    target: Target,
    store: Store,
    resolution: int = 224,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    n_estimators: int = 400,
) -> LatencyPredictor:
    """Train the layer model and the network calibration on the store's training split."""
    if target.connection.emulated or store.emulated_rows():
        raise PredictorError(
            f"target {target.name!r} is an emulated device: its timings are not a board's, so no predictor "
            "is fitted on them; profile the real board"
        )
    train, _ = split(store, resolution, holdout)
    if len(train.layers) < 2:
        raise PredictorError(
            f"target {target.name!r} has {len(train.layers)} layer measurement(s) for training; "
            f"run `hwnas profile --target {target.name}` first"
        )
    model = xgb.XGBRegressor(
        n_estimators=n_estimators,
        max_depth=5,
        learning_rate=0.05,
        subsample=0.9,
        colsample_bytree=0.9,
        tree_method="hist",
        random_state=seed,
        n_jobs=2,
    )
    model.fit(layer_features(train.layers), np.log(train.layer_ms))
    meta = {
        "target": target.name,
        "target_fingerprint": target.fingerprint(),
        "tvm_version": store.version,
        "measure_methods": store.methods,
        "feature_schema": FEATURE_SCHEMA_VERSION,
        "features": list(LAYER_FEATURES),
        "resolution": resolution,
        "holdout": holdout,
        "seed": seed,
        "trained_layers": len(train.layers),
        "parts": part_table(store),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    predictor = LatencyPredictor(model, Calibration(), meta)
    layer_sum = predictor.predict_many(train.networks) if train.networks else np.zeros(0)
    predictor.calibration = Calibration.fit(layer_sum, train.network_ms)
    return predictor
