"""The samplers a user names with ``--sampler``: Optuna's own, and the NAS-BNN paper's evolution."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.search.encoding import Encoding

SAMPLERS = ("tpe", "nsga2", "gp", "paper", "random")
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
    if name == "paper":
        from hwnas.search.evolution import EvolutionConfig, PaperSampler, intervals_between

        space = encoding.space
        low, high = cost(space.smallest()), cost(space.largest())
        if budget is not None:
            high = min(high, budget)
        if high <= low:
            raise HwnasError(f"the budget {budget} is below the smallest subnet's cost {low:.3f}")
        config = EvolutionConfig().scaled(trials, PAPER_INTERVALS)
        return PaperSampler(encoding, cost, intervals_between(low, high, PAPER_INTERVALS), config, seed=seed)
    raise HwnasError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
