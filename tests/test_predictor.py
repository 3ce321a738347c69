"""Latency features and the per-target predictor, on synthetic measurements from a known formula."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from hwnas.cli import main
from hwnas.predictors.evaluate import evaluate
from hwnas.predictors.features import (
    FEATURE_SCHEMA_VERSION,
    LAYER_FEATURES,
    arch_config_matrix,
    config_matrix,
    layer_features,
)
from hwnas.predictors.latency import Calibration, LatencyPredictor, PredictorError, fit, predictor_dir
from hwnas.predictors.metrics import accuracy
from hwnas.predictors.ops import layer_bops
from hwnas.space import NASBNN
from hwnas.targets.configs import arch_configs
from hwnas.targets.store import Store
from hwnas.targets.target import load_target
from tests.synthetic import RES, column, fill_store, true_part_ms

TARGET = "x86-avx2"  # needs no device: the measurements here are synthetic


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[LatencyPredictor, Path]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_HOME", str(home))
        fill_store(TARGET, networks=60)
        target = load_target(TARGET)
        with Store.for_target(target) as store:
            predictor = fit(target, store, RES, n_estimators=300)
        predictor.save()
    return predictor, home


# ----------------------------------------------------------------- features


def test_features_are_deterministic_and_agree_with_ops():
    archs = [NASBNN.sample(random.Random(i)) for i in range(20)]
    configs, owner = arch_config_matrix(archs, RES)
    again, _ = arch_config_matrix(archs, RES)
    np.testing.assert_array_equal(configs, again)
    assert configs.dtype == np.int64 and configs.shape == (sum(sum(a.depths) for a in archs), 6)
    np.testing.assert_array_equal(np.bincount(owner), [sum(a.depths) for a in archs])
    features = layer_features(configs)
    assert features.shape == (len(configs), len(LAYER_FEATURES)) and np.isfinite(features).all()
    np.testing.assert_array_equal(features, layer_features(configs))
    shapes = [s for a in archs for s in a.layer_shapes(RES)]
    np.testing.assert_array_equal(column(features, "bops"), [layer_bops(s) for s in shapes])
    np.testing.assert_array_equal(column(features, "size_out"), [s.size_out for s in shapes])


def test_word_features_round_channels_up_to_words():
    (row,) = layer_features(config_matrix(arch_configs(NASBNN.smallest(), RES)[:1]))
    # smallest: stem 24 -> c48 k3 g1 stride 1 at 112: 24 channels fill one 64-bit word
    assert row[LAYER_FEATURES.index("words_per_group")] == 1
    assert row[LAYER_FEATURES.index("word_ops_group")] == 112 * 112 * 24 * 9 * 1


# ----------------------------------------------------------------- fit, predict, evaluate


def test_predictor_learns_a_known_formula(trained):
    predictor, home = trained
    target = load_target(TARGET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_HOME", str(home))
        with Store.for_target(target) as store:
            summary = evaluate(predictor, store).summary
    nets, layers = summary["networks"], summary["layers"]
    assert nets["n"] >= 5 and layers["n"] >= 30
    assert nets["kendall_tau"] > 0.85 and nets["within_10pct"] >= 0.9
    assert layers["kendall_tau"] > 0.9 and layers["within_10pct"] >= 0.7
    assert predictor.calibration.networks >= 40 and 1.0 < predictor.calibration.slope < 1.3


def test_predict_one_and_many_agree_and_round_trip(trained):
    predictor, home = trained
    archs = [NASBNN.sample(random.Random(100 + i)) for i in range(50)]
    many = predictor.predict_many(archs)
    np.testing.assert_allclose([predictor.predict(a) for a in archs], many, rtol=1e-9)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_HOME", str(home))
        loaded = LatencyPredictor.load(load_target(TARGET))
    np.testing.assert_allclose(loaded.predict_many(archs), many, rtol=1e-6)
    assert loaded.meta["feature_schema"] == predictor.meta["feature_schema"] and loaded.resolution == RES
    assert predictor.predict(NASBNN.largest()) > predictor.predict(NASBNN.smallest())


def test_stem_and_head_are_looked_up_and_must_be_measured(trained):
    predictor, _ = trained
    arch = NASBNN.smallest()
    assert predictor.parts_ms(arch, RES) == pytest.approx(true_part_ms("stem", arch.stem) + true_part_ms("head", 0))
    with pytest.raises(PredictorError, match=r"no stem c=24 measurement at 160x160 .*--resolution 160"):
        predictor.predict(arch, 160)


def test_calibration_falls_back_to_identity():
    assert Calibration.fit(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == Calibration(networks=2)
    fitted = Calibration.fit(np.array([1.0, 2.0, 3.0]), np.array([3.0, 5.0, 7.0]))
    assert (fitted.slope, fitted.intercept) == pytest.approx((2.0, 1.0))


def test_accuracy_metrics():
    report = accuracy(np.array([1.0, 2.09, 3.5, 4.0]), np.array([1.0, 2.0, 3.0, 4.4]))
    assert report["within_10pct"] == 0.75 and report["within_5pct"] == 0.5
    assert report["rmse_ms"] == pytest.approx(np.sqrt((0.0081 + 0.25 + 0.16) / 4))
    assert report["kendall_tau"] == 1.0 and accuracy(np.zeros(0), np.zeros(0)) == {"n": 0}


# ----------------------------------------------------------------- refusals and the CLI


def test_missing_other_target_and_other_schema_are_refused(trained, tmp_path):
    predictor, _ = trained
    target = load_target(TARGET)
    with pytest.raises(PredictorError, match=r"no latency predictor for target 'x86-avx2'.*hwnas predictor fit"):
        LatencyPredictor.load(target)
    saved = predictor.save(tmp_path / "p")
    with pytest.raises(PredictorError, match="holds a predictor for target 'x86-avx2', not 'local'"):
        LatencyPredictor.load(load_target("local"), saved)
    meta = json.loads((saved / "predictor.json").read_text())
    (saved / "predictor.json").write_text(json.dumps({**meta, "feature_schema": 0}))
    with pytest.raises(PredictorError, match=f"feature schema 0, this hwnas uses {FEATURE_SCHEMA_VERSION}"):
        LatencyPredictor.load(target, saved)
    (saved / "predictor.json").write_text(json.dumps({**meta, "target_fingerprint": "{}"}))
    with pytest.raises(PredictorError, match="which is now"):
        LatencyPredictor.load(target, saved)


def test_fit_without_measurements_is_a_clear_error(capsys):
    assert main(["predictor", "fit", "--target", TARGET]) == 2
    assert "has 0 layer measurement(s)" in capsys.readouterr().err
    assert main(["predictor", "eval", "--target", TARGET]) == 2
    assert "no latency predictor for target" in capsys.readouterr().err


def test_cli_fit_and_eval_json(capsys, _home, trained):
    _, home = trained
    shutil.copytree(home / "measurements", _home / "measurements")
    assert main(["predictor", "fit", "--target", TARGET, "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["target"] == TARGET and fitted["calibration"]["networks"] >= 40
    assert (predictor_dir(TARGET) / "layers.json").is_file()
    plot = _home / "eval.png"
    assert main(["predictor", "eval", "--target", TARGET, "--json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["networks"]["kendall_tau"] > 0.85 and data["plot"] == str(plot) and plot.stat().st_size > 0
    assert set(data["networks"]) >= {"within_10pct", "within_5pct", "rmse_ms", "kendall_tau", "ops_kendall_tau"}
    assert main(["predictor", "eval", "--target", TARGET]) == 0
    assert "held out" in capsys.readouterr().out
