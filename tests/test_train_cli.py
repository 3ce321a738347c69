"""The commands: one clear line for bad input, one JSON object with --json, config precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hwnas.cli import main
from hwnas.train.config import TrainConfig
from hwnas.train.data import build_splits
from hwnas.train.run import load_run

TINY_FLAGS = ["--resolution", "16", "--width-mult", "0.125", "--calib-batches", "2", "--num-random", "1"]


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_give_one_line(capsys, tmp_path: Path) -> None:
    err = _error_line(capsys, ["train", "--data", f"imagefolder:{tmp_path}/nowhere", "--out", str(tmp_path / "r")])
    assert "dataset directory not found" in err
    assert "run directory not found" in _error_line(capsys, ["eval", str(tmp_path / "missing"), "--random", "2"])
    (tmp_path / "empty").mkdir()
    assert "not a training run" in _error_line(capsys, ["eval", str(tmp_path / "empty"), "--random", "2"])
    assert "config file not found" in _error_line(capsys, ["train", "--config", str(tmp_path / "no.toml")])
    (tmp_path / "bad.toml").write_text("epochs = 'many'\n")
    assert "epochs must be int" in _error_line(capsys, ["train", "--config", str(tmp_path / "bad.toml")])
    assert "teacher must be one of" in _error_line(capsys, ["train", "--teacher", "owl", "--out", str(tmp_path / "o")])


def test_config_file_then_command_line(capsys, tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text("epochs = 5\nbatch_size = 32\ndistill = false\n")
    out = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "cfg.toml"), "--epochs", "1", "--max-steps", "2", "--out", str(out)]
    assert main([*argv, *TINY_FLAGS, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 32 and saved["distill"] is False
    assert set(json.loads((out / "splits.json").read_text())) == {"train", "val", "test"}


def test_eval_finetune_and_plot_commands(capsys, toy_run, tmp_path: Path) -> None:
    assert main(["eval", str(toy_run), "--random", "3", "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["random"]["n"] == 3 and 0 <= report["random"]["min"] <= report["random"]["max"] <= 1
    assert {"largest", "smallest"} <= set(report)
    assert main(["sample", "--smallest", "-o", str(tmp_path / "arch.json")]) == 0
    err = _error_line(capsys, ["eval", str(toy_run), str(tmp_path / "arch.json")])
    assert "not in" in err  # the full-width NAS-BNN subnet is outside the toy run's scaled space
    (tmp_path / "small.json").write_text(load_run(toy_run).space.smallest().dumps())
    assert main(["eval", str(toy_run), str(tmp_path / "small.json"), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1
    ft = tmp_path / "ft"
    argv = ["finetune", str(toy_run), str(tmp_path / "small.json"), "--out", str(ft), "--epochs", "1"]
    assert main([*argv, "--max-steps", "3", "--json"]) == 0
    capsys.readouterr()
    assert main([*argv, "--resume", "--json"]) == 0
    assert "val_acc" in json.loads(capsys.readouterr().out)
    assert json.loads((ft / "arch.json").read_text())["stem"] == 3
    assert main(["plot-run", str(toy_run), "-o", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("with_val", [True, False])
def test_imagefolder_splits(tmp_path: Path, with_val: bool) -> None:
    for split in ("train", "val") if with_val else ("train",):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    splits = build_splits(TrainConfig(data=f"imagefolder:{tmp_path}", resolution=24, val_per_class=2))
    assert len(splits.train) == 8 and len(splits.val) == 4 and splits.num_classes == 2
    assert not set(splits.indices["train"]) & set(splits.indices["val"])
    assert splits.train[0][0].shape == (3, 24, 24)
    assert (len(splits.test) == 12) if with_val else splits.test is None
