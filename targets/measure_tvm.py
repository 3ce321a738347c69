"""Measure functions backed by TVM: the binary layer kernels of ``hwnas.compile`` on a session's device.

``hwnas.compile`` (kernels) and its network compiler are imported when a measure function is
made, not when this module is, so that profiling's plumbing works and is tested without them.

What one ``layer`` measurement is
---------------------------------
The four kernels a searched layer runs, each compiled for the target, loaded on the device and
timed on its own, their per-repeat times added:

1. pack the layer's float input [size_in, size_in, c_in] (channels last) into bits for the
   k x k group conv, with its zero (= +1) border;
2. the binary k x k group conv c_in -> c_in, g groups, the layer's stride, with the affine
   epilogue (BatchNorm folded into a per-channel scale and bias), float output;
3. pack that output for the 1x1 conv;
4. the binary 1x1 conv c_in -> c_out with the affine epilogue.

Whenever the kernels or this definition change, bump ``targets.store.MEASURE_METHOD``: earlier
measurements then stop counting instead of mixing with new ones.

Not included: the element-wise work around them (RPReLU, shortcuts and the stride-2 shortcut's
pooling), the stem, the classifier and the runtime's per-call overhead; the predictor's
calibration on whole networks accounts for those. Kernel times do not depend on the data
(popcounts are branch-free), so inputs are random with a fixed seed.

Contract for whole networks
---------------------------
The network compiler provides ``hwnas.compile.network.measure_network(arch, resolution, session,
repeat, min_repeat_ms) -> list[float]``: compile ``arch`` end to end for ``session.target``, load
it with ``session.load`` and return per-repeat milliseconds of one batch-1 inference from
``session.time_ms``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from targets.configs import LayerConfig
from targets.profile import LayerMeasure, NetworkMeasure
from targets.session import Session


def _require(module: str, what: str) -> ModuleType:
    """Import a part of hwnas that may not be merged into this installation yet, or explain why not."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("hwnas."):
            raise
        raise HwnasError(f"{what} needs {module}, which cannot be imported here ({exc})") from None


def _kernel_modules() -> tuple[ModuleType, ModuleType]:
    return _require("hwnas.compile.binconv", "layer profiling"), _require("hwnas.compile.bitpack", "layer profiling")


def layer_kernels(config: LayerConfig, target: Any, rng: np.random.Generator) -> list[tuple[Any, list[np.ndarray]]]:
    """The layer's four kernels in order, each as (PrimFunc, NumPy arguments including the output).

    Each conv's tile (and with it the word size, 32 or 64 bits) is chosen first; the packer
    feeding the conv writes that word size.
    """
    binconv, bitpack = _kernel_modules()
    c, size = config.c_in, config.size_in
    group = binconv.ConvShape(c, c, config.k, config.g, config.stride, size, size)
    point = binconv.ConvShape(c, config.c_out, 1, 1, 1, config.size_out, config.size_out)
    kernels = []
    for shape in (group, point):
        conv, tile = binconv.binary_conv2d(shape, target, affine=True)
        words = shape.packed_input_shape(tile.word_bits)
        x = rng.standard_normal((shape.height, shape.width, shape.c_in), dtype=np.float32)
        packer_args = [x, np.zeros(shape.c_in, np.float32), np.zeros(words, tile.dtype)]
        kernels.append((bitpack.packer_for(shape, tile, target), packer_args))
        weight = rng.standard_normal((shape.c_out, shape.cg, shape.k, shape.k), dtype=np.float32)
        act = rng.integers(0, np.iinfo(tile.dtype).max, size=words, dtype=tile.dtype, endpoint=True)
        packed_weight = bitpack.pack_weights(weight, shape.groups, tile.vb, tile.word_bits)
        scale_bias = [np.ones(shape.c_out, np.float32), np.zeros(shape.c_out, np.float32)]
        out = np.zeros(shape.output_shape, np.float32)
        kernels.append((conv, [act, packed_weight, *scale_bias, out]))
    return kernels


def layer_measure(session: Session, repeat: int = 10, min_repeat_ms: int = 20) -> LayerMeasure:
    """A LayerMeasure timing the layer's kernels on the session's device (see the module docstring)."""
    import tvm

    _kernel_modules()  # fail now, not once per layer, when the kernels are missing
    target = session.target.tvm_target()
    rng = np.random.default_rng(0)

    def measure(config: LayerConfig) -> Sequence[float]:
        total = np.zeros(repeat)
        for func, arrays in layer_kernels(config, target, rng):
            exe = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
            args = [session.tensor(a) for a in arrays]
            total += session.time_ms(session.load(exe), args, repeat=repeat, min_repeat_ms=min_repeat_ms)
        return total.tolist()

    return measure


def network_measure(session: Session, repeat: int = 10, min_repeat_ms: int = 20) -> NetworkMeasure:
    """A NetworkMeasure from the network compiler (see the contract in the module docstring)."""
    network = _require("hwnas.compile.network", "whole-network profiling (--networks)")

    def measure(arch: Arch, resolution: int) -> Sequence[float]:
        return network.measure_network(arch, resolution, session, repeat, min_repeat_ms)

    return measure
