"""From a subnet to a runtime library, and what a user asks of it: run, verify, time, profile.

The library exported here is self-contained: ``tvm.runtime.load_module(path)`` and a Relax
``VirtualMachine`` run it with nothing but TVM's runtime (:class:`CompiledNet`).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

from hwnas.arch import Arch
from hwnas.compile.fold import fold
from hwnas.compile.network import build_module
from hwnas.compile.runner import link
from hwnas.errors import HwnasError
from hwnas.model import BinaryNet, Mode, ModelOptions, Skeleton


@dataclass(frozen=True)
class Compiled:
    """A compiled network: the executable and the label of each kernel call, in order."""

    executable: relax.VMExecutable
    labels: list[str]
    target: tvm.target.Target


def subnet_module(subnet: BinaryNet, resolution: int, target: tvm.target.Target) -> tuple[tvm.IRModule, list[str]]:
    """``subnet`` (its active arch, BWBA, eval) folded into a Relax module for ``target``, not yet
    compiled, and the label of each kernel call. Not thread-safe: Relax's BlockBuilder keeps a
    class-level stack (:mod:`hwnas.targets.tvm_measures` builds under a lock and compiles in parallel)."""
    return build_module(fold(subnet, resolution), target)


def compile_subnet(subnet: BinaryNet, resolution: int, target: tvm.target.Target) -> Compiled:
    """Fold ``subnet`` (its active arch, BWBA, eval) and compile it for ``target``."""
    module, labels = subnet_module(subnet, resolution, target)
    return Compiled(tvm.compile(module, target=target), labels, target)


def export(compiled: Compiled, path: str | Path, cc: str = "") -> Path:
    """Write the runtime library, linked by ``cc`` when given (a foreign target's cross compiler,
    its target file's ``[export] cc``), else by the host's compiler; written atomically."""
    return link(compiled.executable, path, cc)


class CompiledNet:
    """A loaded runtime library (or an in-memory executable) running on the host CPU, or on
    ``device``, a remote device whose session loaded the library (the calls go over TVM RPC)."""

    def __init__(
        self, module: tvm.runtime.Module | relax.VMExecutable, device: tvm.runtime.Device | None = None
    ) -> None:
        self.device = device or tvm.cpu()
        self.vm = relax.VirtualMachine(module, self.device)

    @classmethod
    def load(cls, path: str | Path) -> CompiledNet:
        if not Path(path).is_file():
            raise HwnasError(f"compiled library not found: {path}")
        try:
            return cls(tvm.runtime.load_module(str(path)))
        except Exception as exc:  # a truncated or foreign file: TVM's loader fails in several ways
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HwnasError(f"{path}: not a loadable compiled library ({first[:160]})") from None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """image [1, 3, R, R] float32 -> logits [1, classes]."""
        return self.vm["main"](self._tensor(image)).numpy()

    def _tensor(self, image: np.ndarray) -> tvm.runtime.Tensor:
        return tvm.runtime.tensor(np.ascontiguousarray(image, dtype="float32"), self.device)

    def time_ms(self, image: np.ndarray, repeat: int = 20) -> tuple[float, float]:
        """Median and spread (max - min) in ms over ``repeat`` batches of calls, after a warm-up."""
        times = self.time_samples_ms(image, repeat)
        return statistics.median(times), max(times) - min(times)

    def time_samples_ms(self, image: np.ndarray, repeat: int = 20) -> list[float]:
        """Ms per call of each of ``repeat`` batches (each of at least 3 calls and 20 ms), after a warm-up."""
        arg = self._tensor(image)
        timer = self.vm.time_evaluator("main", self.device, number=3, repeat=repeat, min_repeat_ms=20)
        return [t * 1e3 for t in timer(arg).results]

    def profile(self, image: np.ndarray, labels: list[str], repeat: int = 10) -> list[tuple[str, float]]:
        """Median ms of every kernel call, labelled in execution order (``Compiled.labels``)."""
        arg = tvm.runtime.tensor(np.ascontiguousarray(image, dtype="float32"))
        kernels = {"stem", "pack", "binconv", "head"}
        samples: dict[int, list[float]] = defaultdict(list)
        state = {"index": 0, "start": 0.0}

        def instrument(func, symbol, before, ret, *args):  # TVM calls it with this signature
            if symbol.rstrip("0123456789_") not in kernels:
                return 0
            if before:
                state["start"] = time.perf_counter()
            else:
                samples[state["index"]].append((time.perf_counter() - state["start"]) * 1e3)
                state["index"] += 1
            return 0

        self.vm.set_instrument(instrument)
        try:
            for _ in range(repeat + 1):
                state["index"] = 0
                self.vm["main"](arg)
        finally:
            self.vm.set_instrument(None)
        if len(samples) != len(labels):
            raise HwnasError(f"profile saw {len(samples)} kernel calls, the network has {len(labels)}")
        return [(label, statistics.median(samples[i][1:])) for i, label in enumerate(labels)]


def profile_library(path: str | Path, image: np.ndarray, labels: list[str]) -> list[tuple[str, float]]:
    """``CompiledNet.profile`` of a library in a fresh process (see why in ``hwnas compile``)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_profile, str(path), image, labels).result()


def _profile(path: str, image: np.ndarray, labels: list[str]) -> list[tuple[str, float]]:
    return CompiledNet.load(path).profile(image, labels)


@dataclass(frozen=True)
class Verification:
    max_rel_error: float  # max |logit difference| / max |reference logit|, over all samples
    top1_agree: bool
    samples: int

    @property
    def ok(self) -> bool:
        return self.max_rel_error <= 1e-3 and self.top1_agree


def verify(compiled: CompiledNet, subnet: BinaryNet, resolution: int, samples: int = 4, seed: int = 0) -> Verification:
    """Run random images through the compiled network and the PyTorch BWBA subnet and compare."""
    rng = np.random.default_rng(seed)
    worst, agree = 0.0, True
    with torch.no_grad():
        for _ in range(samples):
            image = rng.standard_normal((1, 3, resolution, resolution), dtype=np.float32)
            ref = subnet(torch.from_numpy(image)).numpy()
            got = compiled(image)
            worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)))
            agree &= bool(got.argmax() == ref.argmax())
    return Verification(worst, agree, samples)


def float_baseline(arch: Arch, num_classes: int) -> BinaryNet:
    """The same architecture as an ordinary float32 PyTorch network (real weights and activations)."""
    net = BinaryNet(
        Skeleton.of_arch(arch), num_classes, ModelOptions(bi_transform=False, weight_norm=False), active=arch
    )
    net.set_mode(Mode.FWFA)
    return net.eval()


def time_torch_ms(module: torch.nn.Module, image: np.ndarray, repeat: int = 20) -> tuple[float, float]:
    """Median and spread in ms of a PyTorch forward pass, after a warm-up, in this process: a
    baseline for speedups is timed alone instead (:mod:`hwnas.compile.timing`)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype="float32"))
    times = []
    with torch.inference_mode():
        module(x)
        for _ in range(repeat):
            start = time.perf_counter()
            module(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), max(times) - min(times)
