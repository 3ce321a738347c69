"""One evaluated subnet of a study, as the front, the compare report and the plots read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial

from hwnas.arch import Arch


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's rule: every constraint value is at most 0 (a study without a budget has none)."""
    return all(v <= 0 for v in trial.constraints.values())


@dataclass(frozen=True)
class Point:
    """A finished trial: the subnet (as searched and at deployment scale) and what is known of it.

    ``arch`` is in the supernet's space; ``deployed`` is the same choices at deployment scale
    (the full NAS-BNN widths), which is what OPs, predicted and measured latency describe.
    ``latency_ms`` holds the predicted latency per target; ``feasible`` whether it met the budget.
    """

    number: int
    arch: Arch
    deployed: Arch
    accuracy: float
    ops_m: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    feasible: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.number,
            "arch": self.arch.to_json(),
            "deployed": self.deployed.to_json(),
            "accuracy": self.accuracy,
            "ops_m": self.ops_m,
            "latency_ms": dict(self.latency_ms),
            "feasible": self.feasible,
        }
