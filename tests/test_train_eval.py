"""Pipeline 1: BN recalibration changes the statistics, helps accuracy and spares the supernet."""

from __future__ import annotations

import random

import torch

from hwnas.model import Mode
from hwnas.train.evaluate import accuracy, calibrate_bn, evaluate_subnet, summarize
from hwnas.train.run import load_run


def test_recalibration_changes_stats_and_improves_accuracy(toy_run) -> None:
    run = load_run(toy_run)
    calib, val = run.calibration_batches(), run.batches("val")
    arch = run.space.largest()
    stale = run.supernet.extract(arch).eval()
    stale.set_mode(Mode.FWFA)
    before = accuracy(stale, val)
    fresh = run.supernet.extract(arch)
    fresh.set_mode(Mode.FWFA)
    calibrate_bn(fresh, calib)
    assert not torch.equal(fresh.stem.bn.running_mean, stale.stem.bn.running_mean)
    assert int(fresh.stem.bn.num_batches_tracked) == len(calib)
    assert fresh.stem.bn.momentum == stale.stem.bn.momentum  # restored after the cumulative average
    after = accuracy(fresh, val)
    assert after > before + 0.05, (before, after)
    assert evaluate_subnet(run.supernet, arch, calib, val, Mode.FWFA) == after


def test_evaluation_leaves_the_supernet_untouched(toy_run) -> None:
    run = load_run(toy_run)
    state = {k: v.clone() for k, v in run.supernet.state_dict().items()}
    active, mode = run.supernet.active, run.supernet.mode
    calib, val = run.calibration_batches(), run.batches("val")
    for arch in (run.space.sample(random.Random(1)), run.space.largest()):
        evaluate_subnet(run.supernet, arch, calib, val)
    assert run.supernet.active == active and run.supernet.mode == mode
    for name, tensor in run.supernet.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_toy_supernet_learned_something(toy_run) -> None:
    run = load_run(toy_run)
    calib, test = run.calibration_batches(), run.batches("test")
    assert evaluate_subnet(run.supernet, run.space.largest(), calib, test, Mode.FWFA) > 0.6


def test_summary_statistics() -> None:
    stats = summarize([0.1, 0.2, 0.3, 0.4, 0.5])
    assert stats["mean"] == 0.3 and stats["median"] == 0.3 and stats["min"] == 0.1 and stats["max"] == 0.5
    assert stats["q1"] == 0.2 and stats["q3"] == 0.4 and stats["n"] == 5


def test_runs_saved_before_dense_group_weights_load_with_their_rule(tmp_path) -> None:
    """A config.json without ``group_weights`` (written before the key existed) means ``first``:
    such a run loads and computes what it did; a new run records ``dense``, the default. Likewise
    ``residual_init``: absent means the plain scale 1 (it only acts at the start)."""
    import json

    from hwnas.train.run import read_config, train_supernet
    from tests.conftest import tiny

    old, new = tmp_path / "old", tmp_path / "new"
    train_supernet(tiny(max_steps=1, group_weights="first"), old)
    train_supernet(tiny(max_steps=1), new)
    assert json.loads((new / "config.json").read_text())["group_weights"] == "dense"
    assert json.loads((new / "config.json").read_text())["residual_init"] == 0.2
    saved = json.loads((old / "config.json").read_text())
    del saved["group_weights"], saved["residual_init"]
    (old / "config.json").write_text(json.dumps(saved))
    assert read_config(old).group_weights == "first"
    assert read_config(old).residual_init == 1.0
    run = load_run(old)
    conv = run.supernet.stages[2][1].conv1
    assert conv.weight.shape[1] < conv.weight.shape[0] and not conv.dense
    assert load_run(new).supernet.stages[2][1].conv1.dense
