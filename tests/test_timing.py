"""The honest-speedup helpers: each side in its own process, and a baseline that must be plausible."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from hwnas.compile import timing as timing_module
from hwnas.compile.timing import (
    LARGE_MACS,
    CallTime,
    check_baseline,
    conv_macs,
    in_fresh_process,
    isa_environment,
    torch_convs,
)
from hwnas.errors import HwnasError


def test_fresh_process_is_another_process() -> None:
    assert in_fresh_process(os.getpid) != os.getpid()


def test_fresh_process_starts_with_the_environment_given_and_leaves_ours() -> None:
    name = "HWNAS_TEST_ISA_VARIABLE"
    assert in_fresh_process(os.getenv, name, env={name: "AVX2"}) == "AVX2"
    assert name not in os.environ
    assert in_fresh_process(os.getenv, name) is None


def test_an_avx2_baseline_runs_on_avx2_or_says_it_cannot() -> None:
    """Kept to AVX2, PyTorch reports AVX2 (checked inside ``torch_convs``); a host without AVX2
    gets one clear error instead of a baseline of another instruction set."""
    assert isa_environment(None) == {}
    with pytest.raises(HwnasError, match="no way to keep PyTorch to 'sse9'"):
        isa_environment("sse9")
    with pytest.raises(HwnasError, match="PyTorch ran with AVX512, not avx2"):
        timing_module._check_capability("AVX512", "avx2")  # an environment PyTorch ignored
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        with pytest.raises(HwnasError, match="not avx2"):
            torch_convs([(8, 8, 1, 1, 1, 4)], threads=1, repeat=1, min_repeat_ms=1, isa="avx2")
        return
    [timing] = torch_convs([(8, 8, 1, 1, 1, 4)], threads=1, repeat=1, min_repeat_ms=1, isa="avx2")
    assert timing.macs == 8 * 8 * 16


@pytest.mark.parametrize("conv", [(16, 32, 3, 1, 2, 9), (24, 24, 5, 4, 1, 7), (8, 40, 1, 1, 1, 6)])
def test_conv_macs_counts_what_torch_computes(conv) -> None:
    c_in, c_out, k, groups, stride, height = conv
    out = F.conv2d(
        torch.zeros(1, c_in, height, height), torch.zeros(c_out, c_in // groups, k, k), None, stride, k // 2, 1, groups
    )
    assert conv_macs(conv) == out[0, 0].numel() * c_out * (c_in // groups) * k * k


def test_torch_convs_times_every_conv() -> None:
    convs = [(16, 16, 3, 1, 1, 8), (32, 64, 1, 1, 1, 4)]
    timings = torch_convs(convs, threads=1, repeat=3, min_repeat_ms=1)
    assert [t.macs for t in timings] == [conv_macs(c) for c in convs]
    assert all(0 < t.best_s <= t.median_s < 1 for t in timings)


def _timing(gflops: float, macs: int) -> CallTime:
    return CallTime(best_s=2 * macs / (gflops * 1e9), median_s=1.0, macs=macs)


def test_baseline_check_judges_large_workloads_only() -> None:
    large, small = 4 * LARGE_MACS, LARGE_MACS // 10
    assert check_baseline([_timing(1.0, small)], "tiny") is None  # overhead-bound: not judged
    assert check_baseline([_timing(50.0, large), _timing(1.0, small)], "x") == pytest.approx(50.0)
    with pytest.raises(HwnasError, match=r"ran at 3\.0 GFLOP/s"):
        check_baseline([_timing(3.0, large), _timing(2.0, large), _timing(500.0, large)], "the shapes")
    assert check_baseline([_timing(3.0, large)], "x", minimum=2.0) == pytest.approx(3.0)


def test_network_speed_flags_an_implausible_baseline(monkeypatch) -> None:
    from hwnas.compile import timing
    from hwnas.space import NASBNN

    fast = timing.CallTime(best_s=0.001, median_s=0.002)
    monkeypatch.setattr(timing, "tvm_library", lambda *args: fast)
    slow = _timing(2.0, 2 * timing.LARGE_NETWORK_MACS)
    monkeypatch.setattr(timing, "torch_network", lambda *args: slow)
    speed = timing.network_speed("lib.so", NASBNN.smallest(), 1000, 224)
    assert speed.to_json()["baseline_plausible"] is False
    with pytest.raises(HwnasError, match=r"2\.0 GFLOP/s"):
        speed.check()
    plausible = _timing(80.0, 2 * timing.LARGE_NETWORK_MACS)
    monkeypatch.setattr(timing, "torch_network", lambda *args: plausible)
    speed = timing.network_speed("lib.so", NASBNN.smallest(), 1000, 224)
    speed.check()
    assert speed.baseline_gflops == pytest.approx(80.0) and speed.to_json()["baseline_plausible"] is True
    assert speed.to_json()["speedup"] == pytest.approx(plausible.best_s / 0.001)
    small = _timing(2.0, timing.LARGE_NETWORK_MACS // 10)  # a small input: overheads, not judged
    monkeypatch.setattr(timing, "torch_network", lambda *args: small)
    timing.network_speed("lib.so", NASBNN.smallest(), 10, 32).check()


def test_network_speed_keeps_each_sides_best_round(monkeypatch) -> None:
    """A slow state lasting one round (2.4x for TVM here, once) does not make the speedup."""
    from hwnas.compile import timing
    from hwnas.space import NASBNN

    tvm = iter([timing.CallTime(0.00018, 0.0002), timing.CallTime(0.000075, 0.00008), timing.CallTime(0.00009, 0.0001)])
    monkeypatch.setattr(timing, "tvm_library", lambda *args: next(tvm))
    torch = _timing(80.0, timing.LARGE_NETWORK_MACS // 10)
    monkeypatch.setattr(timing, "torch_network", lambda *args: torch)
    speed = timing.network_speed("lib.so", NASBNN.smallest(), 10, 32)
    assert speed.tvm.best_s == 0.000075 and speed.speedup == pytest.approx(torch.best_s / 0.000075)
    assert speed.to_json()["round_speedups"] == pytest.approx([torch.best_s / t for t in (0.00018, 0.000075, 0.00009)])
