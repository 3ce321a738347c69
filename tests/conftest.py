"""Shared fixtures: a small search space for brute-force checks, seeded torch."""

from __future__ import annotations

import pytest
import torch

from hwnas.space import SearchSpace, StageSpace


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
