"""The `hwnas` command line: outputs, --json, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hwnas.cli import build_parser, main
from hwnas.commands.pipeline import PROFILE_NETWORKS
from hwnas.space import NASBNN
from tests.processes import kill_when
from tests.synthetic import fill_store


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_space_json(capsys):
    code, out, _ = run(capsys, "space", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["with_nd"] == NASBNN.count() and data["without_nd"] == NASBNN.without_nd().count()
    assert [st["with_nd"] for st in data["stages"]] == [16, 736, 736, 17367040, 736]


def test_space_text(capsys):
    code, out, _ = run(capsys, "space")
    assert code == 0 and "332353674695147520" in out and "stage 4" in out


def test_sample_ops_show(capsys, tmp_path):
    path = tmp_path / "arch.json"
    assert run(capsys, "sample", "--seed", "3", "-o", str(path))[0] == 0
    arch = NASBNN.load(path)
    code, out, _ = run(capsys, "ops", str(path), "--json", "--resolution", "32", "--classes", "10")
    data = json.loads(out)
    assert code == 0 and set(data) == {"ops_m", "flops_m", "bops_m", "int8ops_m"}
    assert data["ops_m"] == pytest.approx(data["flops_m"] + data["int8ops_m"] / 8 + data["bops_m"] / 64)
    code, out, _ = run(capsys, "show", str(path))
    assert code == 0 and str(arch.stages[3][0]) in out and "OPs" in out
    code, out, _ = run(capsys, "show", str(path), "--json")
    assert len(json.loads(out)["layers"]) == sum(arch.depths)


def test_sample_extremes_to_stdout(capsys):
    _, out, _ = run(capsys, "sample", "--largest")
    assert NASBNN.parse(json.loads(out)) == NASBNN.largest()
    _, out, _ = run(capsys, "sample", "--smallest")
    assert NASBNN.parse(json.loads(out)) == NASBNN.smallest()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "architecture file not found"),
        ("not json", "not valid JSON"),
        ('{"stem": 24, "stages": [["c48_k3_g1"], [], [], [], []]}', "stage 1: depth 1 not in {2, 3}"),
    ],
)
@pytest.mark.parametrize("command", ["ops", "show"])
def test_bad_arch_gives_one_line_and_exit_2(capsys, tmp_path, command, content, message):
    path = tmp_path / "arch.json"
    if content is not None:
        path.write_text(content)
    code, out, err = run(capsys, command, str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("hwnas: error: ") and message in err


def test_pipeline_runs_and_reuses_finished_steps(capsys, tmp_path, monkeypatch):
    """Every step on a toy budget, after a first pipeline was killed (-9) once its OPs search was
    recorded. The local target's store is filled synthetically beforehand (every layer, stem, head
    and the 60 profiled networks), so profiling has nothing left to measure; the fronts are then
    compiled and measured for real by the compare step."""
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    fill_store("local", networks=PROFILE_NETWORKS)
    out = tmp_path / "out"
    argv = ["pipeline", "--out", str(out), "--data", "digits", "--epochs", "1", "--width-mult", "0.125"]
    argv += [
        "--resolution",
        "16",
        "--num-random",
        "0",
        "--profile-networks",
        str(PROFILE_NETWORKS),
        "--search-trials",
        "3",
        "--json",
    ]
    kill_when([sys.executable, "-m", "hwnas", *argv], lambda: (out / "search-ops.json").exists())
    code, stdout, err = run(capsys, *argv)
    data = json.loads(stdout)
    assert code == 0 and set(data["step_seconds"]) == {"search-latency", "compile", "compare"}
    assert "[search-ops] done before" in err and "[search-latency] done before" not in err
    assert set(data["compile"]) == {"best-ops", "best-latency"}
    assert all(c["verified"] and c["speedup"] > 0 for c in data["compile"].values())
    assert 0 <= data["eval"]["largest"] <= 1 and data["eval"]["random"]["n"] == 20
    assert data["profile"]["runs"] == {} and data["predictor"]["networks"]["n"] == 14  # of 60, held out by hash
    assert data["predictor"]["networks"]["enough_to_judge"] and data["predictor"]["margin"]["n"] == 14
    assert data["search-ops"]["trials"] == 3 and data["search-latency"]["trials"] == 3
    assert (out / "report" / "report.md").exists() and data["compare"]["fronts"]["latency"]
    (out / "compare.json").unlink()  # as if killed during the last step
    code, stdout, err = run(capsys, *argv)
    again = json.loads(stdout)
    assert code == 0 and again["eval"] == data["eval"] and set(again["step_seconds"]) == {"compare"}
    assert again["compare"]["fronts"] == data["compare"]["fronts"]  # measurements reused from the store
    assert "[train] done before" in err and "[search-latency] done before" in err


def test_pipeline_trains_on_clutter_unless_told_otherwise(tmp_path):
    """The main job's task is the one with headroom, at its own budget; a flag or the file may name another."""
    from hwnas.commands.pipeline import _train_overrides
    from hwnas.train.config import resolve

    args = build_parser().parse_args(["pipeline"])
    assert _train_overrides(args) == {"data": "clutter"}
    config = resolve(None, _train_overrides(args))
    assert (config.data, config.epochs, config.warmup_epochs) == ("clutter", 5, 0.2)
    assert _train_overrides(build_parser().parse_args(["pipeline", "--data", "digits"])) == {"data": "digits"}
    (tmp_path / "c.toml").write_text('data = "digits"\nepochs = 2\n')
    args = build_parser().parse_args(["pipeline", "--config", str(tmp_path / "c.toml")])
    assert _train_overrides(args) == {} and resolve(args.config, {}).epochs == 2


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "hwnas", "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("hwnas ")
