"""The search: encoding, constraints, resumption, multi-target studies, front and the CLI's errors."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hwnas.cli import main
from hwnas.predictors.latency import LatencyPredictor
from hwnas.search.encoding import Encoding
from hwnas.search.study import SearchSettings, default_storage, finished, load_study, open_storage, search
from hwnas.space import NASBNN
from hwnas.targets.target import load_target
from hwnas.train.run import read_config
from hwnas.train.supernet import config_space
from tests.postgres import postgres_server
from tests.synthetic import fit_predictor
from tests.test_space import brute_force

TARGETS = ("x86-avx2", "aarch64")  # synthetic predictors: no device needed


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A data directory holding synthetic predictors for two targets (the second 3x slower)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_HOME", str(home))
        fit_predictor(TARGETS[0], n_estimators=100)
        fit_predictor(TARGETS[1], scale=3.0, n_estimators=100)
    return home


@pytest.fixture
def run_copy(toy_run, tmp_path, home, monkeypatch) -> Path:
    """The toy run without any search in it, and HWNAS_HOME pointing at the synthetic predictors."""
    monkeypatch.setenv("HWNAS_HOME", str(home))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "splits.json", "checkpoint.pt"):
        (run / name).symlink_to(toy_run / name)
    return run


def _params(study: optuna.Study) -> list[dict]:
    return [t.params for t in sorted(finished(study), key=lambda t: t.number)]


# ----------------------------------------------------------------- encoding


def test_every_decoded_arch_is_valid_and_every_arch_is_reachable(tiny_space):
    enc = Encoding(tiny_space)
    names, sizes = zip(*enc.choices.items(), strict=True)
    decoded = {enc.decode(dict(zip(names, combo, strict=True))) for combo in itertools.product(*map(range, sizes))}
    assert decoded == set(brute_force(tiny_space))  # valid (decode validates) and all reached


@pytest.mark.parametrize("space", [NASBNN, NASBNN.without_nd()], ids=["nd", "free"])
def test_encoding_round_trips_and_random_params_decode_valid(space):
    enc = Encoding(space)
    rng = random.Random(0)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(300)]:
        assert enc.decode(enc.encode(arch)) == arch
    for _ in range(300):
        space.validate(enc.decode({name: rng.randrange(n) for name, n in enc.choices.items()}))
    # stem, 5 depths, stage 1 (3 layers, width only: one kernel, one group), stages 2, 3, 5 (3 layers) and 4 (9)
    assert len(enc.choices) == 1 + 5 + 3 + 3 * 3 * 3 + 9 * 3


def test_translate_maps_a_scaled_subnet_to_the_full_widths(toy_run):
    space = config_space(read_config(toy_run))
    assert space.translate(space.largest(), NASBNN) == NASBNN.largest()
    assert space.translate(space.smallest(), NASBNN) == NASBNN.smallest()


# ----------------------------------------------------------------- studies


def test_latency_search_records_trials_and_a_valid_front(run_copy):
    settings = SearchSettings("latency", (TARGETS[0],))
    result = search(run_copy, settings, trials=6, sampler="random", progress=False)
    assert result.trials == 6 and result.feasible == 6 and result.front
    study, saved = load_study(open_storage(default_storage(run_copy)), "latency-x86-avx2")
    assert saved == settings
    space = config_space(read_config(run_copy))
    for trial in finished(study):
        arch = space.parse(trial.user_attrs["arch"])
        assert trial.values[1] == pytest.approx(trial.user_attrs["latency_ms"][TARGETS[0]])
        assert 0.0 <= trial.values[0] <= 1.0 and NASBNN.parse(trial.user_attrs["deployed"])
        assert arch == space.translate(arch, NASBNN) or space != NASBNN
    costs = [p.latency_ms[TARGETS[0]] for p in result.front]
    accs = [p.accuracy for p in result.front]
    assert costs == sorted(costs) and accs == sorted(accs)  # a front: more cost buys more accuracy


def test_budget_marks_over_budget_trials_infeasible_and_keeps_them(run_copy):
    settings = SearchSettings("latency", (TARGETS[0],), budget_ms=None)
    probe = search(run_copy, settings, trials=8, sampler="random", study_name="probe", progress=False)
    study, _ = load_study(open_storage(probe.storage), "probe")
    latencies = sorted(t.values[1] for t in finished(study))
    budget = latencies[len(latencies) // 2]  # about half the same trials fit
    bounded = SearchSettings("latency", (TARGETS[0],), budget_ms=budget)
    result = search(run_copy, bounded, trials=8, sampler="random", study_name="bounded", progress=False)
    study, _ = load_study(open_storage(result.storage), "bounded")
    trials = finished(study)
    assert len(trials) == 8  # infeasible trials are recorded, not hidden
    margin = LatencyPredictor.load(load_target(TARGETS[0])).margin.factor  # from the held-out networks
    assert margin != 1.0
    for t in trials:  # the budget holds the prediction times the predictor's margin
        assert t.user_attrs["latency_margin"] == {TARGETS[0]: margin}
        assert t.constraints["latency_x86-avx2"] == pytest.approx(margin * t.values[1] - budget)
    feasible = [t for t in trials if margin * t.values[1] <= budget]
    assert result.feasible == len(feasible) and 0 < len(feasible) < 8
    assert all(margin * p.latency_ms[TARGETS[0]] <= budget for p in result.front)


def test_ops_search_and_two_targets_make_one_objective_each(run_copy):
    ops = search(run_copy, SearchSettings("ops", ()), trials=4, sampler="nsga2", progress=False)
    assert ops.study == "ops" and all(p.latency_ms == {} for p in ops.front)
    both = search(run_copy, SearchSettings("latency", TARGETS), trials=5, sampler="tpe", progress=False)
    study, _ = load_study(open_storage(both.storage), "latency-x86-avx2+aarch64")
    assert len(study.directions) == 3
    for t in finished(study):
        fast, slow = t.values[1], t.values[2]
        assert slow > 2 * fast  # the second synthetic target is about 3x slower per layer


def test_rerun_continues_the_study_and_reuses_cached_accuracy(run_copy):
    settings = SearchSettings("latency", (TARGETS[0],))
    search(run_copy, settings, trials=3, sampler="tpe", seed=1, progress=False)
    study, _ = load_study(open_storage(default_storage(run_copy)), None)
    first = _params(study)
    result = search(run_copy, settings, trials=6, sampler="tpe", seed=1, progress=False)
    assert result.trials == 6 and _params(study)[:3] == first
    assert search(run_copy, settings, trials=6, progress=False).trials == 6  # nothing left to do


def test_paper_sampler_in_a_search_keeps_nd(run_copy):
    result = search(run_copy, SearchSettings("ops", ()), trials=12, sampler="paper", progress=False)
    study, _ = load_study(open_storage(result.storage), "ops")
    space = config_space(read_config(run_copy))
    assert len(finished(study)) == 12
    for t in finished(study):
        space.validate(space.parse(t.user_attrs["arch"]))


def test_killed_search_keeps_every_finished_trial(run_copy):
    cmd = [sys.executable, "-m", "hwnas", "search", str(run_copy), "--target", TARGETS[0], "--trials", "500"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    storage = open_storage(default_storage(run_copy))
    deadline = time.monotonic() + 120
    done = []
    while time.monotonic() < deadline and len(done) < 3:
        time.sleep(0.5)
        try:
            done = finished(optuna.load_study(study_name="latency-x86-avx2", storage=storage))
        except KeyError:  # the study is not created yet
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study = optuna.load_study(study_name="latency-x86-avx2", storage=storage)
    before = {t.number: t.params for t in finished(study)}
    assert len(before) >= 3
    result = search(run_copy, SearchSettings("latency", (TARGETS[0],)), trials=len(before) + 2, progress=False)
    after = {t.number: t.params for t in finished(study)}
    assert result.trials == len(before) + 2 and all(after[n] == p for n, p in before.items())


# ----------------------------------------------------------------- CLI


def test_cli_search_front_and_predict_json(run_copy, tmp_path, capsys):
    argv = ["search", str(run_copy), "--target", TARGETS[0], "--trials", "4", "--sampler", "random", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trials"] == 4 and data["front"]
    plot = tmp_path / "front.png"
    assert main(["front", str(run_copy), "--json", "--plot", str(plot)]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front["front"] == data["front"] and plot.read_bytes()[:4] == b"\x89PNG"
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(data["front"][0]["arch"]))
    assert main(["predict", str(arch), "--target", TARGETS[0], "--run", str(run_copy), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["latency_ms"] == pytest.approx(data["front"][0]["latency_ms"][TARGETS[0]])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{run}", "--target", "local"], "no latency predictor for target 'local'"),
        (["search", "{run}", "--target", "nowhere"], "unknown target 'nowhere'"),
        (
            ["search", "{run}", "--target", "x86-avx2", "--storage", "nosuchdb://x/y"],
            "cannot open storage 'nosuchdb://x/y'",
        ),
        (["front", "{run}", "--study", "nope"], "no study 'nope'"),
        (["search", "{tmp}/missing"], "run directory not found"),
    ],
)
def test_cli_errors_are_one_line(run_copy, tmp_path, capsys, argv, message):
    search(run_copy, SearchSettings("ops", ()), trials=1, sampler="random", progress=False)
    args = [a.format(run=run_copy, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_two_workers_share_one_study_on_postgresql(run_copy):
    with postgres_server() as url:
        settings = SearchSettings("latency", (TARGETS[0],))
        result = search(run_copy, settings, trials=6, sampler="tpe", storage=url, workers=2, progress=False)
        study, _ = load_study(open_storage(url), None)
        numbers = sorted(t.number for t in study.get_trials())
        assert result.trials == 6 and numbers == list(range(6))  # no trial lost or duplicated
        assert search(run_copy, settings, trials=8, storage=url, progress=False).trials == 8
