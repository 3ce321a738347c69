"""hwnas: hardware-aware NAS for binary neural networks.

The public Python API, for notebooks and other programs (the ``hwnas`` command is a thin shell over
the same functions). Names load on first use, so ``import hwnas`` stays light:

- the search space and architectures: :data:`NASBNN`, :class:`SearchSpace`, :class:`Arch`
- the supernet: :func:`build_supernet`, :class:`Mode`; a trained run: :func:`load_run`
- cost: :func:`count_ops` (the paper's OPs), :class:`LatencyPredictor` of a target, :func:`load_target`
- deployment: :func:`compile_subnet` (a TVM module), :func:`deployed` (a run's arch at full width)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0"

_API = {
    "Arch": "hwnas.arch",
    "NASBNN": "hwnas.space",
    "SearchSpace": "hwnas.space",
    "deployed": "hwnas.space",
    "build_supernet": "hwnas.model",
    "Mode": "hwnas.model",
    "load_run": "hwnas.train.run",
    "count_ops": "hwnas.predictors.ops",
    "LatencyPredictor": "hwnas.predictors.latency",
    "load_target": "hwnas.targets.target",
    "compile_subnet": "hwnas.compile.deploy",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hwnas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
