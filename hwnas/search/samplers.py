"""The samplers a user names with ``--sampler``: Optuna's own, the NAS-BNN authors' evolution as
their search.py writes it (``nasbnn``), and hwnas's interval evolution (``intervals``; ``paper``
is its former name)."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.search.encoding import Encoding

SAMPLERS = ("tpe", "nsga2", "gp", "nasbnn", "intervals", "random", "paper")
EVOLUTION = ("nasbnn", "intervals", "paper")
PAPER_INTERVALS = 4
"""Cost intervals the paper's evolution searches one after another (the union is the front)."""


def make_sampler(
    name: str,
    seed: int,
    encoding: Encoding,
    cost: Callable[[Arch], float],
    budget: float | None,
    trials: int,
) -> optuna.samplers.BaseSampler:
    """A fresh sampler; ``cost`` and ``budget`` (the first cost objective) only matter to ``paper``.

    The paper's intervals split the cost range from the smallest subnet's to the budget (or the
    largest subnet's); its schedule is shrunk proportionally when ``trials`` is below the paper's.
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name in EVOLUTION:
        from hwnas.search.evolution import (
            NASBNN_SCHEDULE,
            EvolutionConfig,
            NasbnnSampler,
            PaperSampler,
            intervals_between,
        )

        space = encoding.space
        low, high = cost(space.smallest()), cost(space.largest())
        if budget is not None:
            high = min(high, budget)
        if high <= low:
            raise HwnasError(f"the budget {budget} is below the smallest subnet's cost {low:.3f}")
        if name == "nasbnn":
            return NasbnnSampler(encoding, cost, low, high, NASBNN_SCHEDULE.scaled(trials, 1), seed=seed)
        config = EvolutionConfig().scaled(trials, PAPER_INTERVALS)
        return PaperSampler(encoding, cost, intervals_between(low, high, PAPER_INTERVALS), config, seed=seed)
    raise HwnasError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
