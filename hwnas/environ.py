"""Setting environment variables for a block of code, restored afterwards.

Two callers need it: a spawned worker inherits the environment at its start (PyTorch kept to
AVX2 by its variables, :mod:`hwnas.compile.timing`), and a benchmark points ``HWNAS_HOME`` at a
private copy of a store while it measures (benchmarks/predictor_holdout.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def patched_environ(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``env`` set inside the block; each name's old value (or absence) after."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
