"""What the kernels ask of a TVM target (CPU features, vector width), and the runtime's thread count.

The targets themselves are described once, in the TOML files of :mod:`hwnas.targets.target`
(``load_target(name).tvm_target()``); the kernels only query the ``tvm.target.Target`` they get.
"""

from __future__ import annotations

import os

import tvm
from tvm.target import codegen

# TVM's pool starts lazily with the first parallel kernel; unless the user chose a count, make it
# use every core rather than the half it assumes on (hyper-threaded) x86.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def cpu_features(target: tvm.target.Target) -> set[str]:
    """The LLVM CPU features of a target (from its mtriple, mcpu and mattr)."""
    return set(codegen.llvm_get_cpu_features(target))


def vector_bits(target: tvm.target.Target) -> int:
    """Width in bits of the target's widest SIMD registers."""
    features = cpu_features(target)
    if "avx512f" in features:
        return 512
    if "avx2" in features:
        return 256
    return 128


def has_vector_popcount(target: tvm.target.Target) -> bool:
    """True when the target has a native 64-bit-lane vector popcount (AVX-512 VPOPCNTDQ)."""
    return "avx512vpopcntdq" in cpu_features(target)


def has_movemask(target: tvm.target.Target) -> bool:
    """True when the target has AVX's ``vmovmskps`` (8 float sign bits to an integer)."""
    return "avx" in cpu_features(target)


def set_num_threads(n: int | None = None) -> int:
    """Make TVM's thread pool use ``n`` threads (default: every core) and return what it uses.

    TVM assumes hyper-threading on x86 and by default uses half the cores, so on a 2 vCPU machine
    every parallel loop would run on one thread. The pool reads ``TVM_NUM_THREADS`` when it
    starts, so this must run before the first parallel kernel; afterwards it cannot change it.
    """
    os.environ["TVM_NUM_THREADS"] = str(n or os.cpu_count() or 1)
    return int(tvm.runtime.num_threads())
