"""`hwnas compare` end to end on a tiny run: two searches, both fronts compiled and measured for real
on this machine (full-width subnets at 32x32, so it takes seconds), the report written, nothing
measured twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwnas.cli import main
from hwnas.search.study import SearchSettings, search
from hwnas.targets.store import Store
from hwnas.targets.target import load_target
from tests.synthetic import fit_predictor

RES = 32


@pytest.fixture
def searched(toy_run, tmp_path, monkeypatch) -> Path:
    """A copy of the toy run with an OPs study and a latency study of 3 trials each on ``local``,
    whose predictor is synthetic (the fronts are then measured for real)."""
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    fit_predictor("local", networks=20, n_estimators=50, res=RES)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "splits.json", "checkpoint.pt"):
        (run / name).symlink_to(toy_run / name)
    for objective in ("ops", "latency"):
        search(run, SearchSettings(objective, ("local",), resolution=RES), trials=3, sampler="random", progress=False)
    return run


def test_compare_measures_both_fronts_once_and_writes_the_report(searched, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", str(searched), "--target", "local", "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (out / "report.md").is_file()
    for png in ("accuracy_vs_latency.png", "accuracy_vs_ops.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    points = [p for f in ("ops", "latency") for p in data["fronts"][f]] + data["other_subnets"]
    measured = {json.dumps(p["deployed"], sort_keys=True) for p in points}  # fronts and the other trials it ranks
    with Store.for_target(load_target("local")) as store:
        networks = store.measurements("network")
    measured_here = [n for n in networks if n.reference_ms is not None]  # not the 20 synthetic ones
    assert len(measured_here) == len(measured) and all(n.median_ms > 0 for n in measured_here)
    assert all(p["measured_ms"] > 0 for f in ("ops", "latency") for p in data["fronts"][f])
    assert main(["compare", str(searched), "--target", "local", "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fronts"] == data["fronts"]  # cached: same numbers
    with Store.for_target(load_target("local")) as store:
        assert len(store.measurements("network")) == len(networks)


def test_compare_errors(searched, capsys):
    assert main(["compare", str(searched), "--studies", "ops", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert main(["compare", str(searched), "--studies", "latency-local", "ops"]) == 2
    assert "minimises latency, not OPs" in capsys.readouterr().err


def test_measure_is_cached_per_target_arch_and_resolution(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    arch = tmp_path / "small.json"
    assert main(["sample", "--smallest", "-o", str(arch)]) == 0
    argv = ["measure", str(arch), "--target", "local", "--resolution", str(RES), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["latency_ms"] > 0 and first["spread_ms"] >= 0
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == first  # read from the store, not measured again
