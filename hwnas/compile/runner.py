"""Build, run, time and cross-export single kernels, outside a whole network.

The network compiler places the PrimFuncs into its own Relax module; these helpers exist for
tests, benchmarks and latency profiling of one layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm.support.cc import cross_compiler

from hwnas.compile.tvm_targets import AARCH64_CC


def build(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.runtime.Module:
    """Compile one PrimFunc (as ``main``) for a target; returns the runtime module."""
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target).mod


def run(mod: tvm.runtime.Module, *args: np.ndarray, out_shape: tuple[int, ...], out_dtype: str) -> np.ndarray:
    """Call ``main`` on the host CPU with NumPy inputs; returns the output as NumPy."""
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    mod["main"](*(tvm.runtime.tensor(a, dev) for a in args), out)
    return out.numpy()


def time_median(mod: tvm.runtime.Module, *args: np.ndarray, out_shape: tuple[int, ...], out_dtype: str,
                repeat: int = 25, min_repeat_ms: int = 20) -> float:
    """Median seconds per call of ``main``: one warm-up call, then ``repeat`` timed batches."""
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    tensors.append(tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev))
    mod["main"](*tensors)
    timer = mod.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(np.median(timer(*tensors).results))


def export_cross(func: tvm.tirx.PrimFunc, target: tvm.target.Target, path: str | Path,
                 cc: str = AARCH64_CC) -> Path:
    """Compile for a foreign target and link a shared library with a cross compiler."""
    exe = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    path = Path(path)
    exe.export_library(str(path), fcompile=cross_compiler(cc))
    return path
