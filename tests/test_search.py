"""The search: encoding, constraints, resumption, multi-target studies, front and the CLI's errors."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hwnas.cli import main
from hwnas.predictors.latency import LatencyPredictor
from hwnas.search.encoding import Encoding
from hwnas.search.hypervolume import hypervolume
from hwnas.search.storage import redact, scrub, secrets
from hwnas.search.study import SearchSettings, default_storage, finished, load_study, open_storage, search
from hwnas.space import NASBNN
from hwnas.targets.target import load_target
from hwnas.train.checkpoint import load_checkpoint, save_checkpoint
from hwnas.train.run import read_config
from hwnas.train.supernet import config_space
from tests.postgres import fresh_database, postgres_server
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
    assert space.stem_widths != NASBNN.stem_widths  # the toy run is scaled: deployed differs from searched
    for trial in finished(study):
        arch = space.parse(trial.user_attrs["arch"])
        assert trial.values[1] == pytest.approx(trial.user_attrs["latency_ms"][TARGETS[0]])
        assert 0.0 <= trial.values[0] <= 1.0
        assert NASBNN.parse(trial.user_attrs["deployed"]) == space.translate(arch, NASBNN)  # priced at full width
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


def test_a_subnet_proposed_again_is_not_counted_as_a_trial(run_copy):
    """Repeats finish (the sampler learns from them) but the study runs on to ``trials`` distinct subnets."""
    settings = SearchSettings("latency", (TARGETS[0],))
    search(run_copy, settings, trials=3, sampler="random", seed=1, progress=False)
    study, _ = load_study(open_storage(default_storage(run_copy)), None)
    again = finished(study)[-1].params
    for _ in range(2):
        study.enqueue_trial(again)
    result = search(run_copy, settings, trials=5, sampler="random", seed=1, progress=False)
    done = finished(study)
    assert len(done) == 7 and result.trials == 5 and result.repeats == 2
    assert len({json.dumps(t.user_attrs["arch"], sort_keys=True) for t in done}) == 5
    assert [t.user_attrs["cached_accuracy"] for t in done[3:5]] == [True, True]


def test_paper_sampler_in_a_search_keeps_nd(run_copy):
    result = search(run_copy, SearchSettings("ops", ()), trials=12, sampler="paper", progress=False)
    study, _ = load_study(open_storage(result.storage), "ops")
    space = config_space(read_config(run_copy))
    assert len(finished(study)) == 12
    for t in finished(study):
        space.validate(space.parse(t.user_attrs["arch"]))


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


# ----------------------------------------------------------------- storage: workers, faults, secrets, names


@pytest.fixture(scope="module")
def pg_server() -> str:
    """One throwaway PostgreSQL server for the module; each test takes a fresh database on it."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def fast_heartbeat(monkeypatch) -> None:
    """Heartbeats every second, stale after two: a killed worker's trial is freed within seconds."""
    monkeypatch.setattr("hwnas.search.storage.HEARTBEAT_S", 1)
    monkeypatch.setattr("hwnas.search.study.POLL_S", 0.2)


def _cli(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hwnas", "search", str(run), "--target", TARGETS[0], *extra]


def _wait_for(study_name: str, url: str, n: int, timeout: float = 180) -> None:
    storage = open_storage(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):
            if len(finished(optuna.load_study(study_name=study_name, storage=storage))) >= n:
                return
        time.sleep(0.3)
    raise AssertionError(f"{study_name} never had {n} finished trials")


def _assert_exact(url: str, name: str, trials: int, run: Path) -> list[optuna.trial.FrozenTrial]:
    """The study has exactly ``trials`` finished trials, no two for one slot, each anchor once."""
    study, _ = load_study(open_storage(url), name)
    done = finished(study)
    assert len(done) == trials and len({t.number for t in done}) == trials
    space = config_space(read_config(run))
    archs = [space.parse(t.user_attrs["arch"]) for t in done]
    assert archs.count(space.smallest()) == 1 and archs.count(space.largest()) == 1
    return study.get_trials()


@pytest.mark.parametrize("start", ["together", "apart"])
def test_two_cli_workers_on_a_fresh_postgresql_database_finish_exactly_the_trials(run_copy, pg_server, start):
    url = fresh_database(pg_server, f"fresh_{start}")
    secret_url = url.replace("postgres@", "postgres:s3cr3t-pw@")  # trust auth: the password is ignored
    trials = 12 if start == "together" else 6  # together: the case that raced on table creation
    cmd = _cli(run_copy, "--trials", str(trials), "--storage", secret_url, "--json")
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    first = subprocess.Popen(cmd, **pipes)
    if start == "apart":
        _wait_for("latency-x86-avx2", url, 2)
    second = subprocess.Popen(cmd, **pipes)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert len(_assert_exact(url, "latency-x86-avx2", trials, run_copy)) == trials  # none failed or waiting
    for out, err in outputs:
        assert json.loads(out)["trials"] == trials and "s3cr3t" not in out + err
        assert json.loads(out)["storage"] == url.replace("postgres@", "postgres:***@")
    study, _ = load_study(open_storage(url), None)
    stored = study.user_attrs, study._storage.get_study_system_attrs(study._study_id)
    assert "s3cr3t" not in json.dumps(stored)
    assert study.metric_names == ["accuracy", "latency_ms:x86-avx2"]


def test_local_workers_share_one_study_on_postgresql(run_copy, pg_server):
    url = fresh_database(pg_server, "local_workers")
    settings = SearchSettings("latency", (TARGETS[0],))
    result = search(run_copy, settings, trials=4, sampler="tpe", storage=url, workers=2, progress=False)
    assert result.trials == 4
    assert [t.number for t in _assert_exact(url, "latency-x86-avx2", 4, run_copy)] == list(range(4))
    assert search(run_copy, settings, trials=5, storage=url, progress=False).trials == 5


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_mid_search_then_rerun_finishes_exactly_the_trials(run_copy, request, fast_heartbeat, backend):
    url = default_storage(run_copy)
    if backend == "postgresql":
        url = fresh_database(request.getfixturevalue("pg_server"), "killed")
    kill_after = random.Random(backend).randint(1, 3)  # a seeded moment: after this many finished trials
    proc = subprocess.Popen(
        _cli(run_copy, "--trials", "6", "--storage", url),
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for("latency-x86-avx2", url, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study, _ = load_study(open_storage(url), None)
    before = {t.number: t.params for t in finished(study)}
    result = search(run_copy, SearchSettings("latency", (TARGETS[0],)), trials=6, storage=url, progress=False)
    assert result.trials == 6
    _assert_exact(url, "latency-x86-avx2", 6, run_copy)
    after = {t.number: t.params for t in finished(study)}
    assert all(after[n] == p for n, p in before.items())  # finished trials kept as they were


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_anchor_trial_of_a_dead_worker_is_enqueued_again(run_copy, fast_heartbeat):
    settings = SearchSettings("latency", (TARGETS[0],))
    url = default_storage(run_copy)
    search(run_copy, settings, trials=0, progress=False)  # creates the study and enqueues both anchors
    study = optuna.load_study(study_name="latency-x86-avx2", storage=open_storage(url))
    orphan = study.ask()  # a worker takes the first anchor and dies: no tell, no more heartbeats
    study._storage.record_heartbeat(orphan._trial_id)
    assert orphan.user_attrs["anchor"] == "smallest"
    time.sleep(2.5)  # the heartbeat lapses
    assert search(run_copy, settings, trials=3, sampler="random", progress=False).trials == 3
    trials = _assert_exact(url, "latency-x86-avx2", 3, run_copy)
    assert [t.state for t in trials].count(optuna.trial.TrialState.FAIL) == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_worker_killed_before_its_first_heartbeat_does_not_hang_the_rerun(run_copy, fast_heartbeat):
    """Killed between ``ask`` and its first heartbeat, a worker leaves a running trial that Optuna's
    stale check never sees; the rerun must still free its slot and finish (it waited forever)."""
    settings = SearchSettings("latency", (TARGETS[0],))
    url = default_storage(run_copy)
    search(run_copy, settings, trials=0, progress=False)
    study = optuna.load_study(study_name="latency-x86-avx2", storage=open_storage(url))
    silent = study.ask()  # no heartbeat: the worker died right here
    assert silent.user_attrs["anchor"] == "smallest"
    time.sleep(2.5)
    assert search(run_copy, settings, trials=3, sampler="random", progress=False).trials == 3
    trials = _assert_exact(url, "latency-x86-avx2", 3, run_copy)
    assert [t.state for t in trials].count(optuna.trial.TrialState.FAIL) == 1


def test_a_study_scored_by_other_weights_is_refused(run_copy, capsys):
    assert main(["search", str(run_copy), "--target", TARGETS[0], "--trials", "2", "--sampler", "random"]) == 0
    capsys.readouterr()
    state = load_checkpoint(run_copy / "checkpoint.pt")  # training resumed: new weights, one more epoch
    next(iter(state["model"].values())).add_(0.5)
    state["position"]["epoch"] += 1
    (run_copy / "checkpoint.pt").unlink()
    save_checkpoint(run_copy / "checkpoint.pt", state)
    argv = ["search", str(run_copy), "--target", TARGETS[0], "--trials", "3", "--sampler", "random"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "scored by checkpoint" in err and "--study NEWNAME" in err and len(err.splitlines()) == 1, err
    study, _ = load_study(open_storage(default_storage(run_copy)), "latency-x86-avx2")
    assert len(finished(study)) == 2  # untouched
    assert main([*argv, "--study", "retrained"]) == 0


def test_password_never_shown_when_the_server_is_unreachable(run_copy, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://hwnas:pa55-w0rd@127.0.0.1:{port}/studies?sslpassword=k3y-pw"
    for loud, extra in (([], []), (["-v"], ["--json"])):
        cmd = [
            sys.executable,
            "-m",
            "hwnas",
            *loud,
            "search",
            str(run_copy),
            "--target",
            TARGETS[0],
            "--storage",
            url,
            *extra,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip()
        assert err.startswith("hwnas: error: cannot open storage") and len(err.splitlines()) == 1, err
        assert "hwnas:***@" in err
        for secret in ("pa55-w0rd", "k3y-pw"):
            assert secret not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not any(b"pa55-w0rd" in p.read_bytes() for p in written)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql+psycopg://u:p%40ss@h/db?sslmode=require", "postgresql+psycopg://u:***@h/db?sslmode=require"),
        ("postgresql://u@h/db?password=pw&x=1", "postgresql://u@h/db?password=***&x=1"),
        ("sqlite:////tmp/run/search.db", "sqlite:////tmp/run/search.db"),
        ("not a url :pw@", "not a url :pw@"),
    ],
)
def test_redact_masks_every_password(url, shown):
    assert redact(url) == shown
    for secret in secrets(url):  # an error quoting the URL, or the password alone, shows neither
        assert secret not in scrub(f"failed: {url} (password {secret})", url)


@pytest.mark.parametrize("command", ["search", "front"])
@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "..", "x" * 101])
def test_study_names_that_could_leave_the_run_are_refused(run_copy, tmp_path, capsys, command, name):
    if command == "front":
        search(run_copy, SearchSettings("ops", ()), trials=1, sampler="random", progress=False)
    before = sorted(tmp_path.rglob("*"))
    argv = [command, str(run_copy), "--study", name] + (["--target", TARGETS[0]] if command == "search" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "bad study name" in err and len(err.splitlines()) == 1, err
    assert sorted(tmp_path.rglob("*")) == before


def test_front_plots_hypervolume_over_trials(run_copy, tmp_path, capsys):
    search(run_copy, SearchSettings("latency", (TARGETS[0],)), trials=6, sampler="random", progress=False)
    assert main(["front", str(run_copy), "--json", "--plot", str(tmp_path / "f.png")]) == 0
    data = json.loads(capsys.readouterr().out)
    png = Path(data["hypervolume_plot"])
    assert png == tmp_path / "f-hypervolume.png" and png.read_bytes()[:4] == b"\x89PNG"
    numbers, volumes = zip(*data["hypervolume"]["history"], strict=True)
    assert list(numbers) == sorted(numbers) and len(numbers) == data["feasible"] == 6
    assert list(volumes) == sorted(volumes) and volumes[-1] > 0  # a front only grows
    acc_ref, cost_ref = data["hypervolume"]["reference"]
    front = [(p["accuracy"], p["latency_ms"][TARGETS[0]]) for p in data["front"]]
    assert volumes[-1] == pytest.approx(hypervolume(front, (acc_ref, cost_ref)))  # the front holds it all
