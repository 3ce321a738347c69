"""Measure functions backed by TVM: the compiler's kernels and whole networks on a session's device.

TVM and the compiler are imported when a measure function is made, not when this module is, so
that profiling's plumbing (jobs, store, sessions) loads without them.

What one ``layer`` measurement is
---------------------------------
The four kernels a searched layer runs in the compiled network, built by the network compiler's
own :func:`hwnas.compile.network.layer_convs` and :func:`~hwnas.compile.network.conv_kernels`,
each compiled for the target, loaded on the device and timed on its own, their per-repeat times
added:

1. pack the layer's float input [size_in, size_in, c_in] (channels last) into bits for the
   k x k group conv, with its zero (= +1) border;
2. the binary k x k group conv c_in -> c_in, g groups, the layer's stride, with its fused
   epilogue: folded BatchNorm, the shortcut (the input, 2x2-average-pooled when the layer
   strides) and RPReLU;
3. pack that output for the 1x1 conv;
4. the binary 1x1 conv c_in -> c_out with its fused epilogue (shortcut tiled over channels, RPReLU).

A ``stem`` or ``head`` measurement is the one kernel of :mod:`hwnas.compile.realparts`. A
``network`` measurement is the whole subnet compiled by :func:`hwnas.compile.deploy.compile_subnet`
and run by TVM's Relax VM, so it adds what kernels leave out: the VM's per-call work and memory
traffic between kernels. Whenever the kernels or these definitions change, bump the
kind's entry of ``targets.store.MEASURE_METHODS``: earlier measurements of it then stop counting.

Kernel times do not depend on the data (popcounts and selects are branch-free), so every input is
random with a fixed seed, and networks get a seeded random supernet's weights.

Every measure function installs the session's slow-window probe (:class:`targets.session.SlowWindows`):
the binary conv of ``PROBE_LAYER``, timed before and after each batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hwnas.arch import Arch
from targets.configs import NETWORK_CLASSES, LayerConfig, PartConfig
from targets.profile import LayerMeasure, NetworkMeasure, PartMeasure
from targets.session import Session, SlowWindows

PROBE_LAYER = LayerConfig(c_in=128, c_out=128, k=3, g=4, stride=1, size_in=28)
"""The layer whose binary conv is the slow-window probe: a mid-sized kernel of the space (about 0.04 ms here)."""


def random_args(func: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """Random arrays for every buffer of a PrimFunc (its output included), in parameter order."""
    arrays = []
    for param in func.params:  # in TVM 0.27 a parameter is its buffer: it has a shape and a dtype
        shape, dtype = tuple(int(d) for d in param.shape), np.dtype(str(param.dtype))
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True))
    return arrays


def layer_kernels(config: LayerConfig, target: Any) -> list[Any]:
    """The layer's four PrimFuncs in the order the network runs them (see the module docstring)."""
    from hwnas.compile.network import conv_kernels, layer_convs

    kernels = [conv_kernels(shape, residual, target) for shape, residual in layer_convs(config)]
    return [func for k in kernels for func in (k.packer, k.conv)]


def part_kernel(part: PartConfig, resolution: int) -> Any:
    """The stem's or head's PrimFunc."""
    from hwnas.compile.realparts import head_kernel, stem_kernel

    c = part.to_json()
    if part.kind == "stem":
        return stem_kernel(c["c"], resolution)
    return head_kernel(c["c"], c["size"], c["classes"])


def load_func(session: Session, func: Any, rng: np.random.Generator) -> tuple[Any, list[Any]]:
    """A PrimFunc compiled for the session's target and loaded on its device, with random arguments there."""
    import tvm

    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    exe = tvm.compile(module, target=session.target.tvm_target())
    return session.load(exe), [session.tensor(a) for a in random_args(func, rng)]


def watch_slow_windows(session: Session) -> None:
    """Install the session's slow-window probe, the binary conv of ``PROBE_LAYER`` (once per session)."""
    if session.slow_windows is not None:
        return
    mod, args = load_func(session, layer_kernels(PROBE_LAYER, session.target.tvm_target())[1], np.random.default_rng(0))
    mod["main"](*args)
    timer = mod.time_evaluator("main", session.device, number=1, repeat=3, min_repeat_ms=5)
    session.slow_windows = SlowWindows(lambda: float(np.median(timer(*args).results)) * 1e3)
    for _ in range(3):  # past the thread pool's start, and a first estimate of the fast mode
        session.slow_windows.read()


class _KernelTimer:
    """Compiles PrimFuncs for the session's target and times them on its device with random inputs."""

    def __init__(self, session: Session, timing: dict[str, int]) -> None:
        watch_slow_windows(session)
        self.session = session
        self.target = session.target.tvm_target()
        self.timing = timing
        self.rng = np.random.default_rng(0)

    def __call__(self, funcs: Sequence[Any]) -> list[float]:
        """Per-repeat milliseconds of the functions, each timed on its own, summed repeat by repeat."""
        total = np.zeros(self.timing["repeat"])
        for func in funcs:
            total += self.session.time_ms(*load_func(self.session, func, self.rng), **self.timing)
        return total.tolist()


def layer_measure(session: Session, repeat: int = 10, min_repeat_ms: int = 20, tries: int = 1) -> LayerMeasure:
    """A LayerMeasure timing the layer's four kernels on the session's device (``Session.time_ms``
    says what ``repeat``, ``min_repeat_ms`` and ``tries`` do)."""
    timer = _KernelTimer(session, {"repeat": repeat, "min_repeat_ms": min_repeat_ms, "tries": tries})
    return lambda config: timer(layer_kernels(config, timer.target))


def part_measure(session: Session, repeat: int = 10, min_repeat_ms: int = 20, tries: int = 1) -> PartMeasure:
    """A PartMeasure timing the stem's or head's kernel on the session's device."""
    timer = _KernelTimer(session, {"repeat": repeat, "min_repeat_ms": min_repeat_ms, "tries": tries})
    return lambda part, resolution: timer([part_kernel(part, resolution)])


def network_measure(
    session: Session,
    repeat: int = 10,
    min_repeat_ms: int = 20,
    tries: int = 1,
    classes: int = NETWORK_CLASSES,
    seed: int = 0,
) -> NetworkMeasure:
    """A NetworkMeasure: the subnet of NAS-BNN's space compiled end to end (random weights of a
    seeded supernet, ``classes`` outputs), loaded through the session (exported with the target's
    cross compiler and uploaded when remote), ``main`` timed by the Relax VM's time_evaluator."""
    import torch
    from tvm import relax

    from hwnas.compile.deploy import compile_subnet
    from hwnas.model import build_supernet
    from hwnas.space import NASBNN

    watch_slow_windows(session)
    target = session.target.tvm_target()
    torch.manual_seed(seed)
    supernet = build_supernet(NASBNN, classes).eval()
    rng = np.random.default_rng(seed)

    def measure(arch: Arch, resolution: int) -> Sequence[float]:
        compiled = compile_subnet(supernet.extract(arch), resolution, target)
        vm = relax.VirtualMachine(session.load(compiled.executable), session.device)
        image = session.tensor(rng.standard_normal((1, 3, resolution, resolution), dtype=np.float32))
        return session.time_ms(vm, [image], repeat=repeat, min_repeat_ms=min_repeat_ms, tries=tries)

    return measure
