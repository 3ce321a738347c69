"""Latency features and the per-target predictor, on synthetic measurements from a known formula."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from hwnas.cli import main
from hwnas.errors import HwnasError
from hwnas.predictors.evaluate import evaluate
from hwnas.predictors.features import (
    FEATURE_SCHEMA_VERSION,
    LAYER_FEATURES,
    arch_config_matrix,
    config_matrix,
    layer_features,
    network_work,
)
from hwnas.predictors.latency import (
    MIN_CALIBRATION_NETWORKS,
    PREDICTOR_FILE,
    Calibration,
    LatencyPredictor,
    Margin,
    PredictorError,
    _digest,
    fit,
    predictor_dir,
)
from hwnas.predictors.metrics import accuracy
from hwnas.predictors.ops import layer_bops
from hwnas.space import NASBNN
from hwnas.targets.configs import arch_configs
from hwnas.targets.store import Store, network_key
from hwnas.targets.target import load_target
from tests.synthetic import RES, column, fill_store, true_network_ms, true_part_ms

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
    few = np.arange(1.0, MIN_CALIBRATION_NETWORKS)
    assert Calibration.fit(few, 2 * few + 1) == Calibration(networks=len(few))
    enough = np.arange(1.0, MIN_CALIBRATION_NETWORKS + 1)
    fitted = Calibration.fit(enough, 2 * enough + 1)
    assert (fitted.slope, fitted.intercept) == pytest.approx((2.0, 1.0))


def test_accuracy_metrics():
    report = accuracy(np.array([1.0, 2.09, 3.5, 4.0]), np.array([1.0, 2.0, 3.0, 4.4]))
    assert report["within_10pct"] == 0.75 and report["within_5pct"] == 0.5
    assert report["rmse_ms"] == pytest.approx(np.sqrt((0.0081 + 0.25 + 0.16) / 4))
    assert report["kendall_tau"] == 1.0 and accuracy(np.zeros(0), np.zeros(0)) == {"n": 0}


# ----------------------------------------------------------------- refusals and the CLI


def _rewrite(path: Path, **meta_changes) -> None:
    """Edit a saved predictor's metadata and re-sign it, as a consistent but different file."""
    content = json.loads(path.read_text())
    content["meta"].update(meta_changes)
    content["sha256"] = _digest(content["meta"], content["model"])
    path.write_text(json.dumps(content))


def test_missing_other_target_and_other_schema_are_refused(trained, tmp_path):
    predictor, _ = trained
    target = load_target(TARGET)
    with pytest.raises(PredictorError, match=r"no latency predictor for target 'x86-avx2'.*hwnas predictor fit"):
        LatencyPredictor.load(target)
    saved = predictor.save(tmp_path / "p")
    assert [p.name for p in saved.iterdir()] == [PREDICTOR_FILE]  # one unit
    with pytest.raises(PredictorError, match="holds a predictor for target 'x86-avx2', not 'local'"):
        LatencyPredictor.load(load_target("local"), saved)
    _rewrite(saved / PREDICTOR_FILE, feature_schema=0)
    with pytest.raises(PredictorError, match=f"feature schema 0, this hwnas uses {FEATURE_SCHEMA_VERSION}"):
        LatencyPredictor.load(target, saved)
    _rewrite(saved / PREDICTOR_FILE, feature_schema=FEATURE_SCHEMA_VERSION, target_fingerprint="{}")
    with pytest.raises(PredictorError, match="which is now"):
        LatencyPredictor.load(target, saved)


def test_a_damaged_or_edited_predictor_is_one_line(trained, tmp_path, capsys, _home):
    """#18 scenario 4: the predictor is one file with a hash; anything else is refused in one line."""
    predictor, _ = trained
    path = predictor.save() / PREDICTOR_FILE
    good = path.read_text()
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(NASBNN.smallest().to_json()))
    assert main(["predict", str(arch), "--target", TARGET]) == 0
    capsys.readouterr()
    tampered = json.loads(good)
    tampered["meta"]["calibration"]["slope"] *= 2  # a new calibration beside the old model
    damaged = {
        "truncated": good[: len(good) // 2],
        "tampered": json.dumps(tampered),
        "not an object": "[1, 2]",
        "old format": json.dumps({"target": TARGET}),
        "not UTF-8": b"\xff\xfe".decode("latin-1"),
    }
    for what, text in damaged.items():
        path.write_text(text, encoding="latin-1" if what == "not UTF-8" else "utf-8")
        assert main(["predict", str(arch), "--target", TARGET]) == 2, what
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("hwnas: error: ") and err.count("\n") == 1, (what, err)
        assert "predictor fit --target x86-avx2" in err, what
    path.write_text(good)
    _rewrite(path, calibration={"slope": "steep"}, margin=None)  # signed, but malformed metadata
    assert main(["predict", str(arch), "--target", TARGET]) == 2
    assert "malformed predictor" in capsys.readouterr().err


def test_a_save_that_dies_leaves_the_previous_predictor(trained):
    predictor, _ = trained
    path = predictor.save() / PREDICTOR_FILE
    before = path.read_bytes()

    def dies(*args):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(HwnasError, match="No space left"):
        mp.setattr("os.replace", dies)
        LatencyPredictor(predictor.model, Calibration(2.0, 0.0, 50), predictor.meta, predictor.margin).save()
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == [PREDICTOR_FILE]
    assert LatencyPredictor.load(load_target(TARGET)).calibration == predictor.calibration


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
    assert [p.name for p in predictor_dir(TARGET).iterdir()] == [PREDICTOR_FILE]
    plot = _home / "eval.png"
    assert main(["predictor", "eval", "--target", TARGET, "--json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["networks"]["kendall_tau"] > 0.85 and data["plot"] == str(plot) and plot.stat().st_size > 0
    assert set(data["networks"]) >= {"within_10pct", "within_5pct", "rmse_ms", "kendall_tau", "ops_kendall_tau"}
    assert main(["predictor", "eval", "--target", TARGET]) == 0
    assert "held out" in capsys.readouterr().out


def test_fit_refuses_too_few_networks_and_eval_says_when_it_cannot_judge(capsys):
    fill_store(TARGET, networks=10)  # all 10 for training (held out by hash)
    assert main(["predictor", "fit", "--target", TARGET]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "10 whole networks measured at 224x224 (10 for training, 12 needed" in err
    assert "run `hwnas profile --target x86-avx2`" in err
    fill_store(TARGET, networks=40, seed=0)  # the first 10 again (kept), 30 more: 8 held out
    assert main(["predictor", "fit", "--target", TARGET, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]["networks"] == 32
    assert main(["predictor", "eval", "--target", TARGET, "--json"]) == 0
    nets = json.loads(capsys.readouterr().out)["networks"]
    assert nets["n"] == 8 and nets["enough_to_judge"] is False
    assert main(["predictor", "eval", "--target", TARGET]) == 0
    assert "only 8 held-out whole networks: too few to judge" in capsys.readouterr().out


def test_margin_is_the_conformal_quantile_of_held_out_ratios():
    ratios = np.arange(1, 40) / 40 + 0.5  # 39 ratios 0.525 .. 1.475
    margin = Margin.fit(np.ones(39), ratios, alpha=0.05)
    assert margin.exact and margin.n == 39 and margin.factor == pytest.approx(ratios[37])  # rank ceil(40 * .95)
    few = Margin.fit(np.ones(5), ratios[:5], alpha=0.05)
    assert not few.exact and few.factor == pytest.approx(ratios[4])
    with pytest.raises(PredictorError, match="alpha must be between 0 and 1"):
        Margin.fit(np.ones(3), np.ones(3), alpha=1.5)


def test_budgets_hold_on_fresh_subnets(trained):
    """Subnets under factor * predicted <= budget measure over it about alpha of the time, not half."""
    predictor, _ = trained
    assert predictor.margin.n == 14 and predictor.margin.factor > 1.0
    rng = np.random.default_rng(7)
    archs = [NASBNN.sample(random.Random(1000 + i)) for i in range(300)]
    measured = np.array([true_network_ms(a) for a in archs]) * rng.lognormal(0, 0.02, len(archs))
    predicted = predictor.predict_many(archs)
    over_plain = np.mean(measured > predicted)
    over_margin = np.mean(measured > predictor.margin.factor * predicted)
    # 14 held-out ratios give a margin whose realized miss rate scatters around alpha (0.05)
    assert over_margin <= 0.15 and over_plain > 2 * over_margin


def test_a_drifting_device_is_read_in_nominal_units(_home):
    """A third of the rows measured while the device ran 1.5-2.5x slow: read against the reference
    timed beside them, the predictor is as good as on a steady device."""
    fill_store(TARGET, networks=60, slow=0.35, seed=0)
    target = load_target(TARGET)
    with Store.for_target(target) as store:
        assert store.nominal_reference_ms() == pytest.approx(4.0)
        rows = store.measurements("network")
        raw = np.array([m.median_ms for m in rows])
        nominal = np.array([m.nominal_ms for m in rows])
        truth = np.array([true_network_ms(m.key.arch()) for m in rows])
        assert np.mean(np.abs(raw / truth - 1) > 0.1) > 0.2  # as timed: a quarter or more far off
        assert np.all(np.abs(nominal / truth - 1) < 0.1)
        predictor = fit(target, store, RES, n_estimators=300)
        evaluation = evaluate(predictor, store).summary
    summary, drift = evaluation["networks"], evaluation["drift"]
    assert summary["within_10pct"] == 1.0 and summary["kendall_tau"] > 0.85
    assert 0.95 < drift["relative_min"] < 1 and drift["relative_max"] > 2.0 and 0.2 < drift["share_over_1_1"] < 0.5
    assert predictor.meta["units"] == "nominal ms" and predictor.meta["nominal_reference_ms"] == pytest.approx(4.0)


def test_transfer_learns_a_new_device_from_a_few_networks(trained, _home, capsys):
    """A device twice as slow on layers: its predictor from another target's layer model and 20 networks."""
    _, home = trained
    shutil.copytree(home / "predictors", _home / "predictors")
    fill_store("local", networks=20, layers=False, scale=2.0)
    assert main(["predictor", "fit", "--target", "local", "--transfer-from", TARGET, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["transfer_from"] == TARGET and data["calibration"]["networks"] == 13
    predictor = LatencyPredictor.load(load_target("local"))
    archs = [NASBNN.sample(random.Random(2000 + i)) for i in range(100)]
    truth = np.array([true_network_ms(a, scale=2.0) for a in archs])
    assert accuracy(predictor.predict_many(archs), truth)["within_10pct"] >= 0.9
    with Store.for_target(load_target("local")) as store:
        with pytest.raises(PredictorError, match="needed to calibrate"):
            fit(load_target("local"), store, RES, holdout=0.9, source=predictor)


def test_transfer_to_a_device_whose_binary_work_costs_more_adds_a_work_term(trained, _home, capsys):
    """Layers twice as slow and popcounts dearer still (about a third of a network): one slope
    cannot follow both, the transfer calibration's work term does."""
    _, home = trained
    shutil.copytree(home / "predictors", _home / "predictors")
    archs = [NASBNN.sample(random.Random(3000 + i)) for i in range(100)]
    per_gbop = 0.5 * np.mean([true_network_ms(a, 2.0) for a in archs]) / network_work(archs, RES)[:, 0].mean()
    truth = np.array([true_network_ms(a, 2.0, per_gbop=per_gbop) for a in archs])
    fill_store("local", networks=20, layers=False, scale=2.0, per_gbop=per_gbop)
    assert main(["predictor", "fit", "--target", "local", "--transfer-from", TARGET, "--json"]) == 0
    calibration = json.loads(capsys.readouterr().out)["calibration"]
    assert calibration["per_gbop"] > 0
    predictor = LatencyPredictor.load(load_target("local"))  # the work terms survive the file
    assert predictor.calibration.per_gbop == calibration["per_gbop"]
    assert accuracy(predictor.predict_many(archs), truth)["within_10pct"] >= 0.9
    assert predictor.predict(archs[0]) == pytest.approx(predictor.predict_many(archs[:1])[0])
    line = Calibration.fit(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert not Calibration(**{k: v for k, v in asdict(line).items() if "per_" not in k}).uses_work  # old files


def test_holdout_benchmark_measures_in_a_private_copy_and_remeasures_disagreements(trained, _home, monkeypatch):
    """benchmarks/predictor_holdout.py: unseen subnets only, measured where the next fit cannot see them;
    a point measured 30 % slow once is measured again and listed, not dropped."""
    from benchmarks import predictor_holdout as bench

    _, home = trained
    shutil.copytree(home, _home, dirs_exist_ok=True)
    with Store.for_target(load_target(TARGET)) as store:
        before = store.measurements()
        stored_archs = {m.key.arch() for m in store.measurements("network")}
    calls: list[int] = []

    def fake_measure(target, archs, resolution):
        calls.append(len(archs))
        assert not stored_archs & set(archs)  # never measured before
        assert os.environ["HWNAS_HOME"] != str(_home)  # the private copy
        with Store.for_target(target) as private:
            for i, arch in enumerate(archs):
                slow = 1.3 if len(calls) == 1 and i == 0 else 1.0
                private.add(network_key(arch, resolution), [slow * true_network_ms(arch)])
            return {arch: private.get(network_key(arch, resolution)) for arch in archs}

    monkeypatch.setattr(bench, "measure_networks", fake_measure)
    result = bench.holdout(TARGET, 20, seed=0)
    assert os.environ["HWNAS_HOME"] == str(_home)
    assert result["n"] == 20 and calls[0] == 20 and len(result["remeasured"]) == calls[1] >= 1
    first = result["remeasured"][0]
    assert first["first_ms"] == pytest.approx(1.3 * first["second_ms"])
    assert result["first_pass"]["within10"] < result["within10"] and result["within10"] >= 0.9
    with Store.for_target(load_target(TARGET)) as store:
        assert store.measurements() == before  # nothing leaked into the real store
