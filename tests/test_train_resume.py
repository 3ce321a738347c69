"""A resumed run equals an uninterrupted one, bit for bit; bad checkpoints fail in one line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import DEVNULL

import pytest
import torch

from hwnas.errors import HwnasError
from hwnas.train.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from hwnas.train.run import load_run, train_supernet
from tests.conftest import tiny


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_mid_epoch_equals_uninterrupted(tmp_path: Path) -> None:
    config = tiny(epochs=1)
    whole, _ = train_supernet(config, tmp_path / "whole")
    train_supernet(tiny(epochs=1, max_steps=7), tmp_path / "cut")  # stops mid-epoch 1, as if killed
    cut = load_checkpoint(tmp_path / "cut" / FILENAME)
    assert cut["position"]["global_step"] == 7 and cut["position"]["step"] == 7
    resumed, _ = train_supernet(config, tmp_path / "cut", resume=True)
    _assert_same(whole.state_dict(), resumed.state_dict())
    a, b = load_checkpoint(tmp_path / "whole" / FILENAME), load_checkpoint(tmp_path / "cut" / FILENAME)
    assert a["sampler"] == b["sampler"] and a["position"]["global_step"] == b["position"]["global_step"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        _assert_same(sa, sb)


def test_starting_twice_or_resuming_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HwnasError, match="nothing to resume"):
        train_supernet(tiny(), tmp_path / "empty", resume=True)
    train_supernet(tiny(max_steps=1), tmp_path / "run")
    with pytest.raises(HwnasError, match="already holds a run"):
        train_supernet(tiny(max_steps=1), tmp_path / "run")


def test_truncated_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    assert load_checkpoint(path)["model"]["w"].shape == (1000,)
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(HwnasError, match="not a readable hwnas checkpoint"):
        load_checkpoint(path)


def test_foreign_and_future_checkpoints_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(HwnasError, match="not an hwnas checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(HwnasError, match="not a readable"):
        load_checkpoint(text)
    future = tmp_path / "future.pt"
    save_checkpoint(future, {})
    state = torch.load(future, weights_only=True)
    torch.save({**state, "format_version": 99}, future)
    with pytest.raises(HwnasError, match="format version 99"):
        load_checkpoint(future)


def test_atomic_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / FILENAME, {"x": 1})
    save_checkpoint(tmp_path / FILENAME, {"x": 2})
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]
    assert load_checkpoint(tmp_path / FILENAME)["x"] == 2


def test_killed_process_resumes_from_its_last_timed_checkpoint(tmp_path: Path) -> None:
    """SIGKILL a real training process mid-epoch; the resumed run still equals an uninterrupted one."""
    config = tiny(epochs=1, checkpoint_minutes=0.0)  # a timed checkpoint after every step
    whole, _ = train_supernet(config, tmp_path / "whole")
    run_dir = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in config.to_json().items() if not isinstance(v, bool)]
    proc = subprocess.Popen([sys.executable, "-m", "hwnas", "train", "--out", str(run_dir), *flags], stderr=DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / FILENAME).exists() and load_checkpoint(run_dir / FILENAME)["position"]["step"] >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    step = load_checkpoint(run_dir / FILENAME)["position"]["step"]
    assert 3 <= step < 19
    resumed, _ = train_supernet(config, run_dir, resume=True)
    _assert_same(whole.state_dict(), resumed.state_dict())


def test_checkpoint_of_another_model_is_one_clear_error(toy_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "width_mult": 0.25}))  # not what was trained
    with pytest.raises(HwnasError, match="does not fit the supernet its config"):
        load_run(run)
