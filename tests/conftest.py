"""Shared fixtures: a tiny digits configuration and one toy supernet trained once per session."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

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
    """A toy supernet trained for 4 epochs; returns its run directory."""
    torch.set_num_threads(2)
    run_dir = tmp_path_factory.mktemp("toy") / "run"
    train_supernet(tiny(epochs=4), run_dir)
    return run_dir
