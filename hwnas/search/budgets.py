"""Default search budgets that bind: a quantile of the cost of random subnets of the space.

Halfway between the smallest and the largest subnet's cost sounds central but is not: costs of
random subnets pile up near the middle-low end, so such a budget admitted 96 of 100 trials and
every front point sat under a third of it. A quantile of the costs of seeded random subnets
instead says what share of the space a budget excludes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hwnas.arch import Arch
from hwnas.space import SearchSpace

QUANTILE = 0.4
"""Default: the budget admits the cheapest 40 % of random subnets (60 % of the space is over it)."""
SAMPLES = 200


@dataclass(frozen=True)
class Budget:
    """A cost budget and how it was chosen, for logs and reports."""

    value: float
    quantile: float
    samples: int
    cheapest: float
    dearest: float

    def reason(self, unit: str) -> str:
        return (
            f"{self.value:.4g} {unit}: the {self.quantile:.0%} quantile of {self.samples} random subnets' costs "
            f"({self.cheapest:.4g}-{self.dearest:.4g} {unit}), so about {1 - self.quantile:.0%} of the space is over it"
        )


def quantile_budget(
    space: SearchSpace,
    cost: Callable[[Arch], float],
    quantile: float = QUANTILE,
    samples: int = SAMPLES,
    seed: int = 0,
) -> Budget:
    """The ``quantile`` of ``cost`` over ``samples`` seeded uniform random subnets of ``space``."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    rng = random.Random(seed)
    costs = np.array([cost(space.sample(rng)) for _ in range(samples)])
    return Budget(float(np.quantile(costs, quantile)), quantile, samples, float(costs.min()), float(costs.max()))
