"""Fault injection: kill -9 a training or a profile at seeded moments, rerun, and get what an
uninterrupted run gives (training bit-exact; profiling the same stored rows, none twice).
The pipeline's kill test is ``tests/test_cli.py::test_pipeline_runs_and_reuses_finished_steps``."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import sys
from pathlib import Path

import pytest

from hwnas.cli import main
from hwnas.train.checkpoint import FILENAME, load_checkpoint
from hwnas.train.loop import METRICS
from hwnas.train.run import train_supernet
from tests.conftest import tiny
from tests.fake_device import install
from tests.processes import kill_when
from tests.test_train_resume import _assert_same

CONFIG = tiny(epochs=1, checkpoint_minutes=0.0)  # a checkpoint after every step: 19 steps


def _step(run_dir: Path) -> int:
    try:
        return load_checkpoint(run_dir / FILENAME)["position"]["global_step"]
    except Exception:  # not written yet
        return -1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    whole, _ = train_supernet(CONFIG, run_dir)
    return whole.state_dict()


@pytest.mark.parametrize("moment", ["config-written", "step-seed-0", "metrics-appended"])
def test_train_killed_then_plain_resume_is_bit_exact(capsys, uninterrupted: dict, tmp_path: Path, moment: str) -> None:
    run_dir = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in CONFIG.to_json().items() if not isinstance(v, bool)]
    argv = [sys.executable, "-m", "hwnas", "train", "--out", str(run_dir), *flags]
    if moment == "metrics-appended":  # between the epoch's metrics line and its checkpoint, or just after
        kill_when(argv, lambda: (run_dir / METRICS).exists())
    elif moment == "config-written":  # most often before the first checkpoint
        kill_when(argv, lambda: (run_dir / "config.json").exists())
    else:
        at = random.Random(int(moment[-1])).randint(1, 17)
        kill_when(argv, lambda: _step(run_dir) >= at)
    assert main(["train", "--out", str(run_dir), "--resume", "--json"]) == 0  # a plain resume
    assert json.loads(capsys.readouterr().out)["epoch"] == 1
    resumed = load_checkpoint(run_dir / FILENAME)
    assert resumed["position"]["global_step"] == 19
    _assert_same(uninterrupted, resumed["model"])
    assert [json.loads(line)["epoch"] for line in (run_dir / METRICS).read_text().splitlines()] == [1]
    assert main(["eval", str(run_dir), "--random", "1", "--json"]) == 0  # and it evaluates
    assert 0 <= json.loads(capsys.readouterr().out)["largest"] <= 1


# ----------------------------------------------------------------- profiling

PROFILE = ["profile", "--target", "local", "--layers", "10", "--resolution", "32", "--json"]


def stored_rows(home: Path) -> list[tuple]:
    """Every row of the local target's store under ``home`` (whatever the key), sorted."""
    path = home / "measurements" / "local.sqlite"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT kind, config, resolution, median_ms FROM measurements ORDER BY kind, config"
        ).fetchall()


@pytest.fixture
def reference_rows(monkeypatch, tmp_path: Path) -> list[tuple]:
    """The rows an uninterrupted profile stores."""
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "reference"))
    with monkeypatch.context() as m:
        install(m.setattr)
        assert main(PROFILE) == 0
    return stored_rows(tmp_path / "reference")


@pytest.mark.parametrize("seed", [0])
def test_profile_killed_then_rerun_stores_the_same_rows_once(
    capsys, monkeypatch, reference_rows: list[tuple], tmp_path: Path, seed: int
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HWNAS_HOME", str(home))
    at = random.Random(seed).randint(1, len(reference_rows) - 2)
    script = (
        "from tests.fake_device import install, set_here; install(set_here, delay_s=0.1)\n"
        f"from hwnas.cli import main; raise SystemExit(main({PROFILE!r}))"
    )

    def rows_stored() -> int:
        try:
            return len(stored_rows(home))
        except sqlite3.Error:  # being created
            return 0

    kill_when([sys.executable, "-c", script, "profile"], lambda: rows_stored() >= at, {"HWNAS_HOME": str(home)})
    before = rows_stored()
    assert at <= before < len(reference_rows)
    capsys.readouterr()
    install(monkeypatch.setattr)
    assert main(PROFILE) == 0  # the store's lock died with the killed profiler
    report = json.loads(capsys.readouterr().out)
    assert sum(r["measured"] for r in report["runs"].values()) == len(reference_rows) - before
    assert not any(report["unmeasured"].values())
    rows = stored_rows(home)
    assert rows == reference_rows  # the same keys and timings, each once (sorted, so a duplicate would show)
    assert len({row[:3] for row in rows}) == len(rows)
