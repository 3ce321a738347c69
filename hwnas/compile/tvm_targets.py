"""TVM target descriptions for the binary kernels, and the runtime's thread count.

Three targets are known by name: ``local`` (this host, mcpu and features detected by LLVM, so an
AVX-512 VPOPCNTDQ machine gets ``vpopcntq``), ``x86-avx2`` (x86-64 without AVX-512, as on most
laptops and older servers) and ``aarch64`` (64-bit Arm with NEON, cross-compiled). A later issue
moves these descriptions into TOML files under ``targets/``.
"""

from __future__ import annotations

import os

import tvm
from tvm.target import codegen

TARGET_NAMES = ("local", "x86-avx2", "aarch64")
# TVM's pool starts lazily with the first parallel kernel; unless the user chose a count, make it
# use every core rather than the half it assumes on (hyper-threaded) x86.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
AARCH64_CC = "aarch64-linux-gnu-gcc"


def target_dict(name: str) -> dict:
    """The TVM target dict for a target name (see ``TARGET_NAMES``)."""
    if name == "local":
        # Detected, not hard-coded: LLVM reads the host CPU with cpuid.
        return {
            "kind": "llvm",
            "mtriple": codegen.llvm_get_system_triple(),
            "mcpu": codegen.llvm_get_system_cpu(),
        }
    if name == "x86-avx2":
        return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    if name == "aarch64":
        return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGET_NAMES)}")


def get_target(name: str) -> tvm.target.Target:
    """The ``tvm.target.Target`` for a target name."""
    return tvm.target.Target(target_dict(name))


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
