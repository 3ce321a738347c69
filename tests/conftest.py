"""Shared fixtures: seeded torch, a small search space for brute-force checks, a tiny digits
configuration and one toy supernet trained once per session."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from hwnas.space import SearchSpace, StageSpace
from hwnas.train.config import TrainConfig
from hwnas.train.run import train_supernet

TINY = TrainConfig(
    resolution=16, width_mult=0.125, batch_size=64, epochs=2, base_lr=0.04, calib_batches=2, num_random=1, processes=1
)
"""16x16 digits, an eighth of the NAS-BNN widths, 19 steps per epoch: seconds per run on 2 cores;
one process (tests of the spawned workers ask for two)."""


def pytest_report_header(config) -> list[str]:
    """Which CPU ran the suite and which mcpu each compiled build used, so a failure says where."""
    from tests.builds import report_lines

    return report_lines()


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


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory) -> None:
    """No test reads or writes the user's data directory (measurements, predictors, targets)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_HOME", str(tmp_path_factory.mktemp("hwnas-home")))
        yield


@pytest.fixture(autouse=True, scope="session")
def _no_slow_windows() -> None:
    """Real timings in tests neither wait out nor fail on the device's slow windows: this VM has
    them 10-20 % of the time, and another job's load on a loopback RPC board (which the session
    cannot see) reads as one. Tests of the slow-window rule use fake probes and set the factor.
    Nor do they wait for a slow state to pass (the tests of that rule set the wait)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("hwnas.targets.session.SLOW_FACTOR", math.inf)
        mp.setattr("hwnas.targets.driver.SLOW_STATE_WAIT_S", 0.0)
        yield


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def tiny_space() -> SearchSpace:
    """Two stages whose width sets overlap (ND acts across stages) and whose groups do not always divide."""
    return SearchSpace(
        stem_widths=(4, 8),
        stages=(
            StageSpace(depths=(1, 2), widths=(4, 8, 12), kernels=(3,), groups=(1, 3), stride=1),
            StageSpace(depths=(1, 2), widths=(8, 12, 16), kernels=(3, 5), groups=(2, 8), stride=2),
        ),
    )
