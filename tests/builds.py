"""The builds the compiled network ships for, as the tests compile them, and the host they run on.

``local`` is this CPU as LLVM detects it (AVX-512 VPOPCNTDQ on the project's machines, Zen 4/5
or Rocket Lake), ``x86-avx2`` the haswell-class target, and ``x86-64`` a test-only generic
x86-64 build (SSE2, no AVX, no FMA): together they cover every contraction and vector width an
x86 host can give a kernel. The x86 builds run here only on an x86-64 host.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

import tvm
from tvm.target import codegen

from hwnas.targets.target import load_target

GENERIC_X86 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}
BUILDS = ("local", "x86-avx2", "x86-64")


@cache
def build_target(name: str) -> tvm.target.Target:
    return tvm.target.Target(GENERIC_X86) if name == "x86-64" else load_target(name).tvm_target()


def runs_here(name: str) -> bool:
    return name == "local" or platform.machine() in ("x86_64", "AMD64")


def host_cpu() -> str:
    """The host CPU as /proc/cpuinfo names it (vendor, family, model, name) and as LLVM calls it."""
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    parts = [info.get("vendor_id", platform.machine()), f"family {info.get('cpu family', '?')}"]
    parts += [f"model {info.get('model', '?')}", info.get("model name", platform.processor())]
    return f"{', '.join(parts)}; LLVM host cpu {codegen.llvm_get_system_cpu()}"


def report_lines() -> list[str]:
    """What a test run prints first: the host CPU and the mcpu each build compiles for."""
    builds = []
    for name in BUILDS:
        target = build_target(name)
        mcpu = str(target.attrs.get("mcpu", "generic"))
        builds.append(f"{name}: mcpu {mcpu}" + ("" if runs_here(name) else " (not run here)"))
    return [f"host cpu: {host_cpu()}", "compiled-network builds: " + "; ".join(builds)]
