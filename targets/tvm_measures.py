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
kind's entry of ``hwnas.targets.store.MEASURE_METHODS``: earlier measurements of it then stop counting.

Kernel times do not depend on the data (popcounts and selects are branch-free), so every input is
random with a fixed seed, and networks get a seeded random supernet's weights.

Every measure function installs the session's slow-window probe (:class:`hwnas.targets.session.SlowWindows`):
the binary conv of ``PROBE_LAYER``, timed before and after each batch.

The reference network (:func:`reference_reader`) is ``REFERENCE_ARCH`` compiled end to end like
any network and timed beside every batch of measurements: a whole subnet feels the caches, memory
and thread pool as the measured networks do, where the tiny probe kernel does not.

A measure function compiles and returns a :data:`hwnas.targets.driver.Timer`, and may be called from
several threads at once (the driver compiles in parallel). TVM's IR builders keep global state
(Relax's BlockBuilder a class-level stack), so building the IR holds ``_IR_LOCK``; compiling it
runs in parallel. Timers load and time on the device, from the driver's thread only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hwnas.arch import Arch, LayerConfig
from hwnas.errors import HwnasError
from hwnas.space import NASBNN, SearchSpace
from hwnas.targets.configs import NETWORK_CLASSES, PartConfig
from hwnas.targets.driver import LayerMeasure, NetworkMeasure, PartMeasure, RetryLater, Timer
from hwnas.targets.session import DEFAULT_TIMING, Session, SlowWindows, Timing

_log = logging.getLogger(__name__)
_IR_LOCK = threading.Lock()

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


def compile_func(func: Any, target: Any) -> Any:
    """A PrimFunc compiled for ``target`` (an Executable whose function is ``main``)."""
    import tvm

    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)


def load_func(session: Session, func: Any, exe: Any, rng: np.random.Generator) -> tuple[Any, list[Any]]:
    """``exe``, the compiled ``func``, loaded on the session's device, with random arguments there."""
    return session.load(exe), [session.tensor(a) for a in random_args(func, rng)]


def watch_slow_windows(session: Session) -> None:
    """Install the session's slow-window probe, the binary conv of ``PROBE_LAYER`` (once per session).
    Not on an emulated device: its speed follows the host's load, and its timings are not a board's."""
    if session.slow_windows is not None or session.target.connection.emulated:
        return
    target = session.target.tvm_target()
    probe = layer_kernels(PROBE_LAYER, target)[1]
    mod, args = load_func(session, probe, compile_func(probe, target), np.random.default_rng(0))
    mod["main"](*args)
    timer = mod.time_evaluator("main", session.device, number=1, repeat=3, min_repeat_ms=5)
    session.slow_windows = SlowWindows(lambda: float(np.median(timer(*args).results)) * 1e3)
    for _ in range(3):  # past the thread pool's start, and a first estimate of the fast mode
        session.slow_windows.read()


class _KernelTimer:
    """Compiles PrimFuncs for the session's target; the Timer times them on its device with random inputs."""

    def __init__(self, session: Session, timing: Timing) -> None:
        watch_slow_windows(session)
        self.session = session
        self.target = session.target.tvm_target()
        self.timing = timing
        self.rng = np.random.default_rng(0)

    def __call__(self, make_funcs: Callable[[], Sequence[Any]]) -> Timer:
        """Compile the PrimFuncs ``make_funcs()`` builds; the Timer gives their per-repeat
        milliseconds, each function timed on its own, summed repeat by repeat."""
        with _IR_LOCK:
            funcs = make_funcs()
        exes = [compile_func(func, self.target) for func in funcs]

        def time() -> list[float]:
            total = np.zeros(self.timing.repeat)
            for func, exe in zip(funcs, exes, strict=True):
                total += self.session.time_ms(*load_func(self.session, func, exe, self.rng), timing=self.timing)
            return total.tolist()

        return time


def layer_measure(session: Session, timing: Timing = DEFAULT_TIMING) -> LayerMeasure:
    """A LayerMeasure timing the layer's four kernels on the session's device."""
    timer = _KernelTimer(session, timing)
    return lambda config: timer(lambda: layer_kernels(config, timer.target))


def part_measure(session: Session, timing: Timing = DEFAULT_TIMING) -> PartMeasure:
    """A PartMeasure timing the stem's or head's kernel on the session's device."""
    timer = _KernelTimer(session, timing)
    return lambda part, resolution: timer(lambda: [part_kernel(part, resolution)])


def network_measure(
    session: Session,
    timing: Timing = DEFAULT_TIMING,
    space: SearchSpace = NASBNN,
    classes: int = NETWORK_CLASSES,
    seed: int = 0,
) -> NetworkMeasure:
    """A NetworkMeasure: the subnet of ``space`` (NAS-BNN's by default) compiled end to end (random weights of a
    seeded supernet, ``classes`` outputs), loaded through the session (exported with the target's
    cross compiler and uploaded when remote), ``main`` timed by the Relax VM's time_evaluator."""
    import torch
    import tvm
    from tvm import relax

    from hwnas.compile.deploy import subnet_module
    from hwnas.model import build_supernet

    watch_slow_windows(session)
    target = session.target.tvm_target()
    torch.manual_seed(seed)
    supernet = build_supernet(space, classes).eval()
    rng = np.random.default_rng(seed)

    def measure(arch: Arch, resolution: int) -> Timer:
        with _IR_LOCK:  # compile_subnet's two steps, with only tvm.compile outside the lock
            module, _ = subnet_module(supernet.extract(arch), resolution, target)
        executable = tvm.compile(module, target=target)
        loaded: list[tuple[Any, Any]] = []  # loaded on the device once, however often it is timed

        def time() -> Sequence[float]:
            if not loaded:
                vm = relax.VirtualMachine(session.load(executable), session.device)
                image = session.tensor(rng.standard_normal((1, 3, resolution, resolution), dtype=np.float32))
                loaded.append((vm, image))
            vm, image = loaded[0]
            return session.time_ms(vm, [image], timing=timing)

        return time

    return measure


REFERENCE_ARCH = NASBNN.smallest()
"""The reference network timed beside every batch of measurements (about 4 ms at 224 here)."""
REFERENCE_RESOLUTION = 224
REFERENCE_WAIT_S = 600.0
"""How long a reading of the reference keeps trying while the device stays in slow windows. Each
try waits out a window for ``SLOW_WAIT_S``; this VM's "two speeds" state flipped between 1x and 2x
for minutes (2026-12-01: four tries, one minute, were not enough and stopped a pipeline)."""


def reference_reader(session: Session, timing: Timing = DEFAULT_TIMING) -> Callable[[], float]:
    """Times the reference network on the session's device: its median milliseconds per reading.

    Compiled and loaded once per session (kept on it). A reading that stays in a slow window is
    tried again, for up to ``REFERENCE_WAIT_S``, then a HwnasError stops the run: rows without a
    trustworthy reference would be in unknown units. What was measured before stays in the store,
    so a rerun continues.
    """
    if session.reference is None:
        timer = network_measure(session, timing)(REFERENCE_ARCH, REFERENCE_RESOLUTION)
        session.reference = _patient(timer)
    return session.reference


def _patient(timer: Timer, clock: Callable[[], float] = time.monotonic) -> Callable[[], float]:
    """``timer``'s median, tried again past its slow windows until ``REFERENCE_WAIT_S`` have passed."""

    def read() -> float:
        start = told = clock()
        while True:
            try:
                return float(np.median(timer()))
            except RetryLater:
                waited = clock() - start
                if waited >= REFERENCE_WAIT_S:
                    raise HwnasError(
                        f"the device stayed too slow to time the reference network for {waited / 60:.0f} min; "
                        "rerun to continue (what was measured is kept)"
                    ) from None
                if clock() - told >= 60:
                    told = clock()
                    _log.warning("slow windows for %.0f s now; waiting to time the reference", waited)

    return read
