"""Build, run, time and cross-export single kernels, outside a whole network.

The network compiler places the PrimFuncs into its own Relax module; these helpers exist for
tests, benchmarks and latency profiling of one layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tvm
from tvm.support.cc import cross_compiler

from hwnas.errors import HwnasError
from hwnas.files import atomic_path


def build(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.runtime.Module:
    """Compile one PrimFunc (as ``main``) for a target; returns the runtime module."""
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target).mod


def run(mod: tvm.runtime.Module, *args: np.ndarray, out_shape: tuple[int, ...], out_dtype: str) -> np.ndarray:
    """Call ``main`` on the host CPU with NumPy inputs; returns the output as NumPy."""
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    mod["main"](*(tvm.runtime.tensor(a, dev) for a in args), out)
    return out.numpy()


def batch_timer(
    mod: tvm.runtime.Module, *args: np.ndarray, out_shape: tuple[int, ...], out_dtype: str, min_repeat_ms: int = 10
) -> Callable[[], float]:
    """A callable that times one batch of calls of ``main`` and returns seconds per call.

    The batch size is calibrated once so that a batch lasts about ``min_repeat_ms``; benchmarks
    call several such timers in turn so that kernels compared with each other see the same load.
    """
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    tensors.append(tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev))
    mod["main"](*tensors)  # warm-up
    once = mod.time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=min_repeat_ms)(*tensors).mean
    number = max(1, math.ceil(min_repeat_ms * 1e-3 / once))
    timer = mod.time_evaluator("main", dev, number=number, repeat=1)
    return lambda: float(timer(*tensors).mean)


def link(exe: tvm.runtime.Executable, path: str | Path, cc: str = "") -> Path:
    """Write ``exe`` as a shared library, linked by ``cc`` when given (a foreign target's cross
    compiler, its target file's ``[export] cc``), else by the host's compiler."""
    path = Path(path)
    with atomic_path(path) as tmp:  # its suffix stays the path's (.so, .tar): export_library reads it
        try:
            exe.export_library(str(tmp), **({"fcompile": cross_compiler(cc)} if cc else {}))
        except OSError:
            raise
        except Exception as exc:  # TVM reports a failed compiler or linker run as a RuntimeError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HwnasError(f"linking {path} with {cc or 'the host compiler'} failed: {first[:200]}") from None
    return path


def export_cross(func: tvm.tirx.PrimFunc, target: tvm.target.Target, path: str | Path, cc: str) -> Path:
    """Compile one PrimFunc for a foreign target and link it with its cross compiler ``cc``."""
    exe = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    return link(exe, path, cc)
