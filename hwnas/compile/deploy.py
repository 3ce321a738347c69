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
from hwnas.compile.fold import FoldedNet, fold
from hwnas.compile.network import build_module
from hwnas.compile.reference import reference_outputs
from hwnas.compile.runner import link
from hwnas.errors import HwnasError
from hwnas.model import BinaryNet, Mode, ModelOptions, Skeleton


@dataclass(frozen=True)
class Compiled:
    """A compiled network: the executable and the label of each kernel call, in order."""

    executable: relax.VMExecutable
    labels: list[str]
    target: tvm.target.Target


def subnet_module(
    subnet: BinaryNet, resolution: int, target: tvm.target.Target, trace: bool = False
) -> tuple[tvm.IRModule, list[str]]:
    """``subnet`` (its active arch, BWBA, eval) folded into a Relax module for ``target``, not yet
    compiled, and the label of each kernel call. Not thread-safe: Relax's BlockBuilder keeps a
    class-level stack (:mod:`hwnas.targets.tvm_measures` builds under a lock and compiles in parallel).
    With ``trace`` the module returns every activation (``network.build_module``)."""
    return build_module(fold(subnet, resolution), target, trace)


def compile_subnet(subnet: BinaryNet, resolution: int, target: tvm.target.Target, trace: bool = False) -> Compiled:
    """Fold ``subnet`` (its active arch, BWBA, eval) and compile it for ``target``."""
    module, labels = subnet_module(subnet, resolution, target, trace)
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
        return self.outputs(image)[-1]

    def outputs(self, image: np.ndarray, function: str = "main") -> list[np.ndarray]:
        """What ``function`` returns for ``image``: [logits], or every activation of a traced build
        (``compile_subnet(..., trace=True)``), activations channels last [H, W, C]."""
        result = self.vm[function](self._tensor(image))
        if isinstance(result, tvm.runtime.Tensor):
            return [result.numpy()]
        return [t.numpy() for t in result]

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
    """The compiled network against :mod:`hwnas.compile.reference` (bit for bit, see there why).

    ``differing`` counts the values (logits, and every activation of a traced build) that are not
    identical (the same float32 bits, a zero of either sign being the same value);
    ``first_difference`` names the first tensor with one. Ties near a sign threshold are not
    accepted: there is nothing to tie, both sides compute the same float32 values.
    """

    max_rel_error: float  # max |logit difference| / max |reference logit|, over all samples
    top1_agree: bool
    samples: int
    values: int = 0  # values compared
    differing: int = 0
    first_difference: str = ""

    @property
    def ok(self) -> bool:
        return self.differing == 0 and self.top1_agree


def verification_images(resolution: int, samples: int = 4, seed: int = 0) -> list[np.ndarray]:
    """The random inputs [1, 3, R, R] a verification runs, the same on every machine."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, resolution, resolution), dtype=np.float32) for _ in range(samples)]


def check_outputs(net: FoldedNet, images: list[np.ndarray], outputs: list[list[np.ndarray]]) -> Verification:
    """Compare what a compiled network returned for ``images`` (``CompiledNet.outputs`` of each:
    the logits, or every activation of a traced build) with the reference, value for value.

    Pure NumPy on the compiled side, so the outputs may come from anywhere (a board over RPC).
    """
    worst, agree, values, differing, first = 0.0, True, 0, 0, ""
    for image, got in zip(images, outputs, strict=True):
        expected = reference_outputs(net, image)
        if len(got) == 1:
            expected = expected[-1:]
        if len(got) != len(expected):
            raise HwnasError(f"the compiled network returned {len(got)} outputs, the reference has {len(expected)}")
        for (name, ref), out in zip(expected, got, strict=True):
            ref = ref.numpy() if name == "logits" else ref[0].permute(1, 2, 0).numpy()
            if out.shape != ref.shape:
                raise HwnasError(f"{name}: the compiled network returned shape {out.shape}, expected {ref.shape}")
            bad = int(np.count_nonzero(~(out == ref)))  # equal values: the same bits, but +0 == -0
            values, differing = values + ref.size, differing + bad
            first = first or (name if bad else "")
        logits, ref_logits = got[-1], expected[-1][1].numpy()
        worst = max(worst, float(np.abs(logits - ref_logits).max() / max(np.abs(ref_logits).max(), 1e-12)))
        agree &= bool(logits.argmax() == ref_logits.argmax())
    return Verification(worst, agree, len(images), values, differing, first)


def verify(compiled: CompiledNet, subnet: BinaryNet, resolution: int, samples: int = 4, seed: int = 0) -> Verification:
    """Run random images through the compiled network and the folded PyTorch reference of the BWBA
    ``subnet`` (:mod:`hwnas.compile.reference`) and compare them bit for bit."""
    images = verification_images(resolution, samples, seed)
    return check_outputs(fold(subnet, resolution), images, [compiled.outputs(image) for image in images])


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
