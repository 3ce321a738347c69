"""A fake device for profiling tests: no compiler, no session; each measurement's timing is a fixed
function of what is measured, so two profiles of one plan store exactly the same rows."""

from __future__ import annotations

import contextlib
import importlib
import time
import zlib
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any


def fake_ms(label: str) -> list[float]:
    return [1.0 + zlib.crc32(label.encode()) % 1000 / 100]


def install(
    setattr: Callable[[str, Any], None], delay_s: float = 0.0, fail: Callable[[str], bool] = lambda label: False
) -> None:
    """Replace the session and the TVM measure functions the profiler uses (``setattr`` is
    ``monkeypatch.setattr``, or :func:`set_here` in a subprocess). ``fail(label)``: whose build fails."""

    @contextlib.contextmanager
    def open_session(target: Any) -> Iterator[SimpleNamespace]:
        yield SimpleNamespace(slow_windows=None, reference=None)

    def measure_of(label_of: Callable[..., str]) -> Callable[..., Callable]:
        def factory(session: Any, timing: Any = None, *rest: Any) -> Callable:
            def measure(*args: Any) -> Callable[[], list[float]]:
                label = label_of(*args)
                if fail(label):
                    raise RuntimeError(f"fake build failure of {label}")

                def timer() -> list[float]:
                    time.sleep(delay_s)
                    return fake_ms(label)

                return timer

            return measure

        return factory

    setattr("hwnas.targets.plan.open_session", open_session)
    setattr("hwnas.targets.tvm_measures.layer_measure", measure_of(lambda c: f"layer {c}"))
    setattr("hwnas.targets.tvm_measures.part_measure", measure_of(lambda p, r: f"{p} {r}"))
    setattr("hwnas.targets.tvm_measures.network_measure", measure_of(lambda a, r: f"network {a} {r}"))


def set_here(dotted: str, value: Any) -> None:
    """``monkeypatch.setattr(dotted, value)`` for a process of its own."""
    module, name = dotted.rsplit(".", 1)
    setattr(importlib.import_module(module), name, value)
