"""Per-target latency predictor: XGBoost on layer features, calibrated on whole networks.

A layer's latency (its four kernels, as :mod:`hwnas.targets.tvm_measures` measures them) is predicted
by an XGBoost regressor on :mod:`hwnas.predictors.features`, trained on log-milliseconds so that small
and large layers weigh alike. The stem and the head take a handful of configurations, all
measured, so they are looked up, not learnt. A network's latency is ``slope * (sum of layer
predictions + stem + head) + intercept``, plus, where it predicts the training networks better
left one out, a term per activation element and one per binary MAC: the calibration, fitted
robustly on whole networks measured end to end, absorbs what the kernels leave out (the VM's
per-call work, packing between layers, caches cold between kernels). ``fit`` refuses a store with
fewer than ``MIN_CALIBRATION_NETWORKS`` training networks: an uncalibrated sum was 26-40 % low on
every network here.

Every latency is in the store's nominal units (:mod:`hwnas.targets.store`: relative to a reference
network timed beside each batch), so a prediction and a ``measure`` made on another day agree
while the device itself drifts.

Measurements are split once, by a hash of their key, into training and held-out sets (20 % held
out by default), so ``fit`` and ``evaluate`` agree on the split without storing it. The held-out
networks also give the budget margin (:class:`Margin`, split-conformal).

A predictor for a new device can reuse another target's layer model (``source``): only the
calibration, stem and head are then its own, learnt from a few whole networks; the calibration may
add a term for binary work and one for activation volume (:meth:`Calibration.fit_with_work`).

Saved as one file, ``<data dir>/predictors/<target>/predictor.json`` (metadata, calibration,
margin and XGBoost's JSON model, with a SHA-256 of them), written atomically, so a reader sees the
old predictor or the new one, never a mix. Loading checks the hash, the target, its fingerprint
and the feature schema, and refuses anything else with one line.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.files import atomic_write_text
from hwnas.paths import data_dir
from hwnas.predictors.features import (
    FEATURE_SCHEMA_VERSION,
    LAYER_FEATURES,
    arch_config_matrix,
    config_matrix,
    config_rows,
    layer_features,
    network_work,
)
from hwnas.targets.configs import arch_parts
from hwnas.targets.store import Key, Store, part_key
from hwnas.targets.target import Target

PREDICTOR_FILE = "predictor.json"
OLD_MODEL_FILE = "layers.json"
"""The model file of predictors saved as two files (before format 1); removed on save."""
FORMAT = 1
MIN_CALIBRATION_NETWORKS = 12
"""Training networks the calibration needs (a line through fewer swung by 10 % from run to run)."""
MIN_JUDGED_NETWORKS = 10
"""Held-out networks below which ``evaluate`` says its figures cannot judge the predictor."""
DEFAULT_HOLDOUT = 0.2
DEFAULT_ALPHA = 0.05
UNITS = "nominal ms"
"""What predictions are in: milliseconds at the store's nominal reference (see the module docstring)."""


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
    """network ms = slope * (sum of the layers' predicted ms + stem + head) + intercept, plus, for a
    layer model learnt on another device, ``per_gbop`` ms per billion binary MACs and ``per_mact``
    ms per million activation elements (:func:`hwnas.predictors.features.network_work`)."""

    slope: float = 1.0
    intercept: float = 0.0
    networks: int = 0
    per_gbop: float = 0.0
    per_mact: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.slope == 1.0 and self.intercept == 0.0 and not self.uses_work

    @property
    def uses_work(self) -> bool:
        return bool(self.per_gbop or self.per_mact)

    def apply(self, layer_sum: Any, work: Any = None) -> Any:
        """``work``: :func:`network_work` of the subnets (needed only when :attr:`uses_work`)."""
        out = self.slope * layer_sum + self.intercept
        if self.uses_work:
            work = np.asarray(work, dtype=float)
            out = out + self.per_gbop * work[..., 0] + self.per_mact * work[..., 1]
        return out

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
        fitted = _huber(np.asarray(layer_sum, dtype=float).reshape(-1, 1), measured)
        if fitted is None:
            return cls(networks=len(measured))
        (slope,), intercept = fitted
        return cls(slope, intercept, len(measured))

    @classmethod
    def fit_with_work(cls, layer_sum: np.ndarray, work: np.ndarray, measured: np.ndarray) -> Calibration:
        """The line of :meth:`fit`, or the line plus the two work terms when that predicts the
        networks better left one out (mean relative error). A work term that comes out negative
        is dropped.

        Layers timed one by one miss what a whole network adds per activation (packing between
        layers, caches cold between kernels), and a layer model learnt on another device misses
        how another instruction set changes binary work and activation traffic by different
        factors. On this machine, the AVX2 build transferred from the host's layer model went
        from 50 % to 80 % of its 20 networks within +-10 % (leave one out); on the host itself the
        activation term took the pipeline's 14 searched subnets, the cheapest of the space, from
        43 % to 79 % within +-10 % (docs/latency.md)."""
        line = cls.fit(layer_sum, measured)
        if line.is_identity:  # too few networks, or no line
            return line
        x = np.c_[np.asarray(layer_sum, dtype=float), np.asarray(work, dtype=float)]
        if _loo_error(x[:, :1], measured) <= _loo_error(x, measured):
            return line
        fitted = _huber(x, measured)
        if fitted is None:
            return line
        (slope, per_gbop, per_mact), intercept = fitted
        return cls(slope, intercept, len(measured), per_gbop, per_mact)


def _huber(x: np.ndarray, y: np.ndarray) -> tuple[tuple[float, ...], float] | None:
    """Robust linear fit of ``y`` on the columns of ``x``; a work column whose weight comes out
    negative is fixed at 0 and the rest refitted; None when the first (the layer sum) is not
    positive."""
    from sklearn.linear_model import HuberRegressor

    columns = list(range(x.shape[1]))
    while True:
        line = HuberRegressor(alpha=0.0, max_iter=1000).fit(x[:, columns], y)
        negative = [c for c, w in zip(columns, line.coef_, strict=True) if w < 0 and c > 0]
        if not negative:
            break
        columns.remove(negative[0])
    weights = dict(zip(columns, (float(w) for w in line.coef_), strict=True))
    if weights.get(0, 0.0) <= 0:
        return None
    return tuple(weights.get(c, 0.0) for c in range(x.shape[1])), float(line.intercept_)


def _loo_error(x: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute relative error of :func:`_huber` predicting each network from the others."""
    errors = []
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        fitted = _huber(x[rest], y[rest])
        if fitted is None:
            return math.inf
        weights, intercept = fitted
        errors.append(abs((float(x[i] @ np.array(weights)) + intercept) / y[i] - 1))
    return float(np.mean(errors))


@dataclass(frozen=True)
class Margin:
    """Split-conformal budget margin: a subnet is held to ``factor * predicted <= budget``.

    ``factor`` is the ceil((n + 1)(1 - alpha))-th smallest ratio measured / predicted over n
    held-out networks: for a new subnet exchangeable with them, measured <= factor * predicted
    with probability at least 1 - alpha. With n < 1 / alpha - 1 that rank exceeds n and the
    largest ratio seen is used (``exact`` False): the guarantee is then weaker than alpha says.
    """

    alpha: float = DEFAULT_ALPHA
    factor: float = 1.0
    n: int = 0
    exact: bool = False

    @classmethod
    def fit(cls, predicted: np.ndarray, measured: np.ndarray, alpha: float = DEFAULT_ALPHA) -> Margin:
        if not 0 < alpha < 1:
            raise PredictorError(f"alpha must be between 0 and 1, got {alpha}")
        n = len(measured)
        if n == 0:
            return cls(alpha)
        ratios = np.sort(np.asarray(measured, float) / np.asarray(predicted, float))
        rank = math.ceil((n + 1) * (1 - alpha))
        return cls(alpha, float(ratios[min(rank, n) - 1]), n, rank <= n)


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
        part["lm"].append(m.nominal_ms)
    for m in store.measurements("network"):
        if m.key.resolution == resolution:
            part = parts[is_holdout(m.key, holdout)]
            part["n"].append(m.key.arch())
            part["nm"].append(m.nominal_ms)
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
        {"kind": m.key.kind, "config": m.key.config, "resolution": m.key.resolution, "ms": m.nominal_ms}
        for kind in ("stem", "head")
        for m in store.measurements(kind)
    ]


class LatencyPredictor:
    """Predicts a subnet's latency (ms) on one target; see the module docstring."""

    def __init__(
        self, model: xgb.XGBRegressor, calibration: Calibration, meta: dict[str, Any], margin: Margin | None = None
    ) -> None:
        self.model = model
        self.calibration = calibration
        self.margin = margin or Margin()
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
        work = network_work([arch], resolution)[0] if self.calibration.uses_work else None
        total = sum(self._cache[row] for row in rows) + self.parts_ms(arch, resolution)
        return float(self.calibration.apply(total, work))

    def predict_many(self, archs: Sequence[Arch], resolution: int | None = None) -> np.ndarray:
        """Predicted milliseconds of many subnets; each distinct layer configuration is predicted once."""
        resolution = resolution or self.resolution
        configs, owner = arch_config_matrix(archs, resolution)
        unique, inverse = np.unique(configs, axis=0, return_inverse=True)
        per_layer = self.layer_ms(unique)[inverse.reshape(-1)]
        parts = np.array([self.parts_ms(arch, resolution) for arch in archs])
        work = network_work(archs, resolution) if self.calibration.uses_work else None
        return self.calibration.apply(np.bincount(owner, weights=per_layer, minlength=len(archs)) + parts, work)

    def budget_ms(self, arch: Arch, resolution: int | None = None) -> float:
        """What the search holds to a latency budget: the prediction times the margin's factor."""
        return self.margin.factor * self.predict(arch, resolution)

    # ----------------------------------------------------------------- persistence
    def save(self, directory: Path | None = None) -> Path:
        """Write the predictor as one file, atomically (see the module docstring); returns its directory."""
        directory = directory or predictor_dir(self.meta["target"])
        meta = {**self.meta, "calibration": asdict(self.calibration), "margin": asdict(self.margin)}
        model = bytes(self.model.get_booster().save_raw("json")).decode()
        content = {"format": FORMAT, "sha256": _digest(meta, model), "meta": meta, "model": model}
        atomic_write_text(directory / PREDICTOR_FILE, json.dumps(content) + "\n")
        (directory / OLD_MODEL_FILE).unlink(missing_ok=True)
        return directory

    @classmethod
    def load(cls, target: Target, directory: Path | None = None) -> LatencyPredictor:
        """The saved predictor of ``target``; PredictorError if missing, damaged or made for something else."""
        directory = directory or predictor_dir(target.name)
        path = directory / PREDICTOR_FILE
        refit = f"refit with `hwnas predictor fit --target {target.name}`"
        if not path.is_file():
            raise PredictorError(
                f"no latency predictor for target {target.name!r} in {directory}; "
                f"run `hwnas predictor fit --target {target.name}`"
            )
        meta, model_json = _read(path, refit)
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
        try:
            calibration, margin = Calibration(**meta.pop("calibration")), Margin(**meta.pop("margin"))
            model = xgb.XGBRegressor()
            model.load_model(bytearray(model_json.encode()))
            return cls(model, calibration, meta, margin)
        except Exception as exc:  # a hash-consistent file whose content this hwnas cannot read
            raise PredictorError(f"{path}: malformed predictor ({type(exc).__name__}: {exc}); {refit}") from None


def _digest(meta: dict[str, Any], model: str) -> str:
    """SHA-256 of a predictor's metadata (canonical JSON) and model."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")) + "\n" + model
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: Path, refit: str) -> tuple[dict[str, Any], str]:
    """The metadata and model JSON of a predictor file whose hash checks out; PredictorError otherwise."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictorError(f"{path}: not a predictor file ({exc}); {refit}") from None
    except OSError as exc:
        raise PredictorError(f"{path}: cannot read it ({exc.strerror}); {refit}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise PredictorError(f"{path}: predictor format {found!r}, this hwnas reads {FORMAT}; {refit}")
    meta, model, digest = content.get("meta"), content.get("model"), content.get("sha256")
    if not isinstance(meta, dict) or not isinstance(model, str) or not isinstance(digest, str):
        raise PredictorError(f"{path}: malformed predictor (meta, model or sha256 missing); {refit}")
    if _digest(meta, model) != digest:
        raise PredictorError(f"{path}: content does not match its SHA-256 (damaged or edited); {refit}")
    return meta, model


def fit(
    target: Target,
    store: Store,
    resolution: int = 224,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    n_estimators: int = 400,
    alpha: float = DEFAULT_ALPHA,
    source: LatencyPredictor | None = None,
) -> LatencyPredictor:
    """Train the layer model (or take ``source``'s) and the network calibration on the store's
    training split; the margin from its held-out networks."""
    if target.connection.emulated or store.emulated_rows():
        raise PredictorError(
            f"target {target.name!r} is an emulated device: its timings are not a board's, so no predictor "
            "is fitted on them; profile the real board"
        )
    train, held = split(store, resolution, holdout)
    if source is None and len(train.layers) < 2:
        raise PredictorError(
            f"target {target.name!r} has {len(train.layers)} layer measurement(s) for training; "
            f"run `hwnas profile --target {target.name}` first (or `--transfer-from` another target)"
        )
    if len(train.networks) < MIN_CALIBRATION_NETWORKS:
        how = f" --transfer-from {source.meta['target']} --networks 20" if source else ""
        raise PredictorError(
            f"target {target.name!r} has {len(train.networks) + len(held.networks)} whole networks measured at "
            f"{resolution}x{resolution} ({len(train.networks)} for training, {MIN_CALIBRATION_NETWORKS} needed to "
            f"calibrate); run `hwnas profile --target {target.name}{how}`"
        )
    meta: dict[str, Any] = {
        "target": target.name,
        "target_fingerprint": target.fingerprint(),
        "tvm_version": store.version,
        "measure_methods": store.methods,
        "feature_schema": FEATURE_SCHEMA_VERSION,
        "features": list(LAYER_FEATURES),
        "units": UNITS,
        "nominal_reference_ms": store.nominal_reference_ms(),
        "resolution": resolution,
        "holdout": holdout,
        "seed": seed,
        "parts": part_table(store),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if source is not None:
        model = source.model
        meta.update(transfer_from=source.meta["target"], trained_layers=source.meta["trained_layers"])
    else:
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
        meta["trained_layers"] = len(train.layers)
    predictor = LatencyPredictor(model, Calibration(), meta)
    layer_sums = predictor.predict_many(train.networks)
    work = network_work(train.networks, resolution)
    predictor.calibration = Calibration.fit_with_work(layer_sums, work, train.network_ms)
    held_pred = predictor.predict_many(held.networks) if held.networks else np.zeros(0)
    predictor.margin = Margin.fit(held_pred, held.network_ms, alpha)
    return predictor
