"""Shared fixtures: a tiny digits configuration and one toy supernet trained once per session."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hwnas.train.config import TrainConfig
from hwnas.train.run import train_supernet

TINY = TrainConfig(
    resolution=16, width_mult=0.125, batch_size=64, epochs=2, base_lr=0.04, calib_batches=2, num_random=1
)
"""16x16 digits, an eighth of the NAS-BNN widths, 19 steps per epoch: seconds per run on 2 cores."""


def tiny(**changes) -> TrainConfig:
    return replace(TINY, **changes)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """A toy supernet trained for 3 epochs with a full-precision (FWFA) teacher; its run directory.

    A binary network needs far more steps than a test can afford before its accuracy leaves
    chance level, so tests that need a *trained* network evaluate the FWFA largest subnet.
    """
    run_dir = tmp_path_factory.mktemp("toy") / "run"
    train_supernet(tiny(epochs=3, teacher="fwfa", num_random=0, base_lr=0.008), run_dir)
    return run_dir
