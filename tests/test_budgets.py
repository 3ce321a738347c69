"""Default budgets that bind: a quantile of random subnets' cost."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hwnas.predictors.ops import count_ops
from hwnas.search.budgets import quantile_budget
from hwnas.space import NASBNN


def ops_m(arch) -> float:
    return count_ops(arch).ops / 1e6


def test_quantile_budget_excludes_the_share_it_says():
    budget = quantile_budget(NASBNN, ops_m, quantile=0.4, samples=200, seed=0)
    rng = random.Random(123)  # fresh subnets, not the ones the budget was computed from
    fresh = np.array([ops_m(NASBNN.sample(rng)) for _ in range(300)])
    assert 0.3 < float((fresh <= budget.value).mean()) < 0.5
    assert budget.cheapest < budget.value < budget.dearest
    assert "40% quantile of 200 random subnets" in budget.reason("MOPs")
    halfway = (ops_m(NASBNN.smallest()) + ops_m(NASBNN.largest())) / 2
    assert float((fresh <= halfway).mean()) > 0.9  # the old default hardly bound at all


def test_quantile_budget_is_seeded_and_checked():
    assert quantile_budget(NASBNN, ops_m, samples=50, seed=1) == quantile_budget(NASBNN, ops_m, samples=50, seed=1)
    with pytest.raises(ValueError):
        quantile_budget(NASBNN, ops_m, quantile=1.0)
