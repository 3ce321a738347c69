"""Targets: TOML files and their errors, the layer configurations profiled, sessions local and over RPC."""

from __future__ import annotations

import json
import random
import re
import socket
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tvm
from test_space import brute_force
from tvm import relax, rpc, te
from tvm.rpc.tracker import Tracker

from hwnas.arch import Arch
from hwnas.cli import main
from hwnas.errors import HwnasError
from hwnas.model import build_supernet
from hwnas.predictors.ops import count_ops
from hwnas.space import NASBNN
from hwnas.targets import session as session_module
from hwnas.targets import tvm_measures
from hwnas.targets.configs import (
    LayerConfig,
    arch_configs,
    arch_parts,
    layer_configs,
    part_configs,
    sample_configs,
    sample_networks,
)
from hwnas.targets.driver import layer_jobs, network_jobs, run_jobs
from hwnas.targets.session import DeviceUnreachable, SlowDevice, SlowWindows, Timing, open_session
from hwnas.targets.store import Store
from hwnas.targets.target import TargetError, load_target, read_target, target_files, user_targets_dir
from hwnas.targets.tvm_measures import watch_slow_windows

VALID = """
description = "test"
[tvm]
kind = "llvm"
mcpu = "haswell"
threads = 1
[connection]
kind = "rpc"
host = "127.0.0.1"
port = 9090
"""


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_user_target(name: str, text: str) -> Path:
    user_targets_dir().mkdir(parents=True, exist_ok=True)
    path = user_targets_dir() / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rpc_target(name: str, port: int, extra: str = "") -> None:
    write_user_target(
        name,
        f"""
        [tvm]
        kind = "llvm"
        mtriple = "detect"
        mcpu = "detect"
        threads = 1
        [connection]
        kind = "rpc"
        host = "127.0.0.1"
        port = {port}
        timeout_s = 2
        {extra}
        """,
    )


# ----------------------------------------------------------------- target files


def test_builtin_targets(_home):
    assert set(target_files()) == {"local", "x86-avx2", "aarch64", "aarch64-qemu", "rpi4", "rpi5", "cortex-a53"}
    local = load_target("local")
    assert local.tvm["mcpu"] == tvm.target.codegen.llvm_get_system_cpu() and local.connection.kind == "local"
    assert str(local.tvm_target().kind) == "llvm"
    arm = load_target("aarch64")
    assert arm.tvm["mtriple"] == "aarch64-linux-gnu" and arm.cc == "aarch64-linux-gnu-gcc"
    assert arm.connection.kind == "rpc" and arm.connection.port == 9090
    assert load_target("x86-avx2").tvm_target().attrs["mcpu"] == "haswell"
    assert user_targets_dir() == _home / "targets"


def test_user_target_adds_and_overrides(capsys):
    write_user_target("my-board", VALID)
    write_user_target("aarch64", VALID.replace("9090", "9091"))
    assert load_target("my-board").connection.port == 9090
    assert load_target("aarch64").connection.port == 9091  # the user's file wins
    assert main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = ["aarch64", "aarch64-qemu", "cortex-a53", "local", "my-board", "rpi4", "rpi5", "x86-avx2"]
    assert [t["name"] for t in data["targets"]] == names


def test_fingerprint_follows_the_file():
    write_user_target("a", VALID)
    write_user_target("b", VALID.replace("haswell", "skylake"))
    assert load_target("a").fingerprint() != load_target("b").fingerprint()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[tvm]", "[tvm", "not valid TOML"),
        ('description = "test"', "description = 3", "description: must be a string"),
        ('description = "test"', "colour = 1", "colour: unknown key"),
        ('kind = "llvm"', "", "tvm.kind: missing"),
        ('kind = "llvm"', 'kind = "cuda"', "tvm.kind: only CPU targets"),
        ('mcpu = "haswell"', "mcpu = 5", "tvm.mcpu: must be a string"),
        ('mcpu = "haswell"', 'mattr = ["neon"]', "tvm.mattr: must be a list of strings like '+neon'"),
        ('mcpu = "haswell"', 'mattr = "+neon"', "tvm.mattr: must be a list"),
        ('mcpu = "haswell"', "cpus = 2", "tvm.cpus: unknown key"),
        ("threads = 1", "threads = -1", "tvm.threads: must be 0"),
        ("threads = 1", "threads = true", "tvm.threads: must be an integer"),
        ('kind = "rpc"', 'kind = "ssh"', "connection.kind: must be one of local, rpc, tracker"),
        ('kind = "rpc"', 'kind = "tracker"', "connection.key: missing"),
        ("port = 9090", 'port = 9090\nkey = "pi"', "connection.key: a device key needs kind = 'tracker'"),
        ('kind = "rpc"', 'kind = "local"', "connection.host: a local target has no address"),
        ('host = "127.0.0.1"', "", "connection.host: missing"),
        ("port = 9090", "port = 70000", "connection.port: must be between 1 and 65535"),
        ("port = 9090", 'port = "9090"', "connection.port: must be an integer"),
        ("port = 9090", "port = 9090\ntimeout_s = 0", "connection.timeout_s: must be positive"),
        ("port = 9090", "port = 9090\n[export]\ncc = 1", "export.cc: must be a string"),
        ("[connection]", "[connexion]", "connexion: unknown key"),
    ],
)
def test_malformed_target_names_file_and_key(old, new, message):
    assert old in VALID
    path = write_user_target("bad", VALID.replace(old, new))
    with pytest.raises(TargetError, match=re.escape(message)) as info:
        load_target("bad")
    assert str(info.value).startswith(str(path))


def test_missing_table_and_bad_name(tmp_path):
    path = write_user_target("bad", VALID.split("[connection]")[0])
    with pytest.raises(TargetError, match=r"bad.toml: \[connection\]: missing table"):
        load_target("bad")
    odd = tmp_path / "_odd name.toml"
    odd.write_text(VALID)
    with pytest.raises(TargetError, match="a target name uses letters"):
        read_target(odd)
    assert path.exists()


def test_cli_unknown_target_and_bad_file_are_one_line(capsys):
    assert main(["profile", "--target", "nope"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("hwnas: error: unknown target 'nope'; known: aarch64, aarch64-qemu, cortex-a53, local, rpi4")
        and err.count("\n") == 1
    )
    write_user_target("bad", VALID.replace("threads = 1", "threads = -1"))
    assert main(["targets"]) == 2
    assert "bad.toml: tvm.threads" in capsys.readouterr().err


# ----------------------------------------------------------------- what is profiled


@pytest.mark.parametrize("nd", [True, False])
@pytest.mark.parametrize("resolution", [32, 17])
def test_layer_configs_match_brute_force(tiny_space, nd, resolution):
    space = tiny_space if nd else tiny_space.without_nd()
    expected = {c for arch in brute_force(space) for c in arch_configs(arch, resolution)}
    assert layer_configs(space, resolution) == sorted(expected)


def test_layer_configs_of_nasbnn():
    configs = layer_configs(NASBNN, 224)
    assert len(configs) == len(set(configs)) == 252
    for arch in (NASBNN.largest(), NASBNN.smallest()):
        assert set(arch_configs(arch, 224)) <= set(configs)
    assert LayerConfig.from_json(configs[7].to_json()) == configs[7]


def test_samples_are_seeded_and_grow_by_prefix():
    configs = layer_configs(NASBNN, 224)
    small, large = sample_configs(configs, 10, 3), sample_configs(configs, 40, 3)
    assert small == sample_configs(configs, 10, 3) and set(small) <= set(large)
    assert small != sample_configs(configs, 10, 4)
    assert sample_configs(configs, None, 3) == configs
    nets = sample_networks(NASBNN, 5, 1)
    assert nets == sample_networks(NASBNN, 5, 1) and len(set(nets)) == 5
    assert sample_networks(NASBNN, 3, 1) == nets[:3]


def test_profiled_networks_reach_both_ends_of_the_cost_range():
    """Uniform subnets alone stay in the middle (53-164 MOPs of 21-332); half of the profile's
    networks are drawn around a size level so the calibration sees the cheap corner searches reach."""
    smallest, largest = count_ops(NASBNN.smallest()).ops, count_ops(NASBNN.largest()).ops
    uniform = random.Random(0)
    middle = [count_ops(NASBNN.sample(uniform)).ops for _ in range(30)]
    profiled = [count_ops(a).ops for a in sample_networks(NASBNN, 60, 0)]
    low, high = smallest + 0.1 * (largest - smallest), largest - 0.3 * (largest - smallest)
    assert min(middle) > low and max(middle) < high
    assert sum(o < low for o in profiled) >= 3 and sum(o > high for o in profiled) >= 3


def test_sample_at_a_level_moves_from_the_smallest_to_the_largest():
    rng = random.Random(0)
    assert NASBNN.sample_at(rng, 0.0, spread=0.0) == NASBNN.smallest()
    assert NASBNN.sample_at(rng, 1.0, spread=0.0) == NASBNN.largest()
    for _ in range(50):  # every draw lies in the space (ND, groups dividing the channels)
        NASBNN.validate(NASBNN.sample_at(rng, rng.random()))
    mean_ops = [sum(count_ops(NASBNN.sample_at(rng, level)).ops for _ in range(20)) for level in (0.2, 0.5, 0.8)]
    assert mean_ops == sorted(mean_ops)


# ----------------------------------------------------------------- sessions


def add_one() -> tvm.runtime.Executable:
    a = te.placeholder((64,), name="a")
    b = te.compute((64,), lambda i: a[i] + 1.0, name="b")
    return tvm.compile(te.create_prim_func([a, b]), target=load_target("local").tvm_target())


def run_add(session) -> tuple[np.ndarray, list[float]]:
    mod = session.load(add_one())
    a = session.tensor(np.arange(64, dtype="float32"))
    b = session.tensor(np.zeros(64, "float32"))
    times = session.time_ms(mod, [a, b], timing=Timing(repeat=3, min_repeat_ms=1, tries=1))
    return b.numpy(), times


def test_local_session():
    with open_session(load_target("local")) as session:
        out, times = run_add(session)
    assert not session.is_remote
    np.testing.assert_array_equal(out, np.arange(64) + 1)
    assert len(times) == 3 and all(t > 0 for t in times)


class FakeTimed:
    """A module whose time_evaluator returns the given batches of seconds, one batch per call."""

    def __init__(self, batches: list[list[float]]) -> None:
        self.batches = iter(batches)

    def __getitem__(self, name: str):
        return lambda *args: None

    def time_evaluator(self, name, device, number, repeat, min_repeat_ms):
        return lambda *args: type("Result", (), {"results": next(self.batches)})()


class QuietLoad:
    """ForeignLoad on an idle machine: no other process used the CPU."""

    def start(self) -> None:
        pass

    def stop(self) -> float:
        return 0.0


def test_timing_retries_an_unsteady_batch(monkeypatch):
    monkeypatch.setattr(session_module, "ForeignLoad", QuietLoad)
    noisy, steady, noisier = [1e-3, 3e-3, 1e-3, 2e-3], [2e-3, 2.01e-3, 2e-3, 2.02e-3], [1e-3, 5e-3, 1e-3, 9e-3]
    with open_session(load_target("local")) as session:
        assert session.time_ms(FakeTimed([noisy, steady, noisy]), [], timing=Timing(tries=3)) == pytest.approx(
            [2, 2.01, 2, 2.02]
        )
        assert session.time_ms(FakeTimed([noisier, noisy]), [], timing=Timing(tries=2)) == pytest.approx([1, 3, 1, 2])
        assert session.time_ms(FakeTimed([noisy, steady]), [], timing=Timing(tries=1)) == pytest.approx([1, 3, 1, 2])


def test_timing_waits_out_a_slow_window(monkeypatch):
    fast, slow = [2e-3, 2e-3, 2e-3, 2e-3], [4.4e-3, 4.4e-3, 4.4e-3, 4.4e-3]
    monkeypatch.setattr(session_module, "SLOW_PAUSE_S", 0.0)
    monkeypatch.setattr(session_module, "SLOW_FACTOR", 1.2)  # the conftest turns the probe off
    monkeypatch.setattr(session_module, "ForeignLoad", QuietLoad)  # the test must not depend on the machine's load
    with open_session(load_target("local")) as session:
        # the probe reads 1.0 ms outside a window, 2.2 inside; read before and after each batch
        readings = iter([1.0, 1.0, 1.0, 2.2, 2.2, 2.2, 2.2, 1.0, 1.0])
        session.slow_windows = SlowWindows(lambda: next(readings))
        session.slow_windows.read()
        assert session.time_ms(FakeTimed([fast]), [], timing=Timing(tries=1)) == pytest.approx([2, 2, 2, 2])
        assert session.time_ms(FakeTimed([slow, slow, fast]), [], timing=Timing(tries=1)) == pytest.approx([2, 2, 2, 2])
        assert session.slow_windows.slow_batches == 2
        monkeypatch.setattr(session_module, "SLOW_WAIT_S", 0.0)  # a window that outlasts the wait
        session.slow_windows = SlowWindows(iter([1.0, 2.2, 2.2]).__next__)
        session.slow_windows.read()
        with pytest.raises(SlowDevice, match="slow window"):  # no 2x slow batch is kept
            session.time_ms(FakeTimed([slow, fast]), [], timing=Timing(tries=1))


def test_under_another_jobs_load_the_probe_is_not_asked(monkeypatch):
    class BusyLoad(QuietLoad):
        def stop(self) -> float:
            return 1.0  # another process used a whole core

    monkeypatch.setattr(session_module, "ForeignLoad", BusyLoad)
    monkeypatch.setattr(session_module, "SLOW_FACTOR", 1.2)
    monkeypatch.setattr(session_module, "BURST_PAUSE_S", 0.0)
    monkeypatch.setattr(session_module, "SLOW_WAIT_S", 0.0)
    noisy, steady = [1e-3, 3e-3, 1e-3, 2e-3], [2e-3, 2.01e-3, 2e-3, 2.02e-3]
    with open_session(load_target("local")) as session:
        session.slow_windows = SlowWindows(iter([1.0, 2.2, 2.2, 2.2, 2.2]).__next__)  # the load slows the probe
        session.slow_windows.read()
        assert session.time_ms(FakeTimed([noisy, steady]), [], timing=Timing(tries=2)) == pytest.approx(
            [2, 2.01, 2, 2.02]
        )
        assert session.slow_windows.slow_batches == 0


def test_measuring_installs_the_slow_window_probe():
    with open_session(load_target("local")) as session:
        watch_slow_windows(session)
        probe = session.slow_windows
        watch_slow_windows(session)
        assert session.slow_windows is probe and 0 < probe.read() < 10 and probe.fastest < 10


@pytest.fixture
def rpc_server():
    server = rpc.Server(host="127.0.0.1", port=free_port(), port_end=65535, silent=True)
    yield server
    server.terminate()


def test_rpc_session_uploads_and_times(rpc_server):
    rpc_target("loopback", rpc_server.port)
    with open_session(load_target("loopback")) as session:
        out, times = run_add(session)
        assert session.is_remote
    np.testing.assert_array_equal(out, np.arange(64) + 1)
    assert len(times) == 3 and all(t > 0 for t in times)


def test_tracker_session():
    tracker = Tracker(host="127.0.0.1", port=free_port(), port_end=65535, silent=True)
    server = rpc.Server(
        host="127.0.0.1",
        port=free_port(),
        port_end=65535,
        tracker_addr=("127.0.0.1", tracker.port),
        key="t1",
        silent=True,
    )
    try:
        write_user_target(
            "pool",
            f"""
            [tvm]
            kind = "llvm"
            mcpu = "detect"
            [connection]
            kind = "tracker"
            host = "127.0.0.1"
            port = {tracker.port}
            key = "t1"
            """,
        )
        with open_session(load_target("pool")) as session:
            out, _ = run_add(session)
        np.testing.assert_array_equal(out, np.arange(64) + 1)
    finally:
        server.terminate()
        tracker.terminate()


def test_unreachable_device_is_a_clear_error(capsys):
    port = free_port()  # nothing listens there
    rpc_target("gone", port)
    with pytest.raises(DeviceUnreachable, match=f"cannot reach the RPC server at 127.0.0.1:{port}"):
        with open_session(load_target("gone")):
            pass
    assert main(["profile", "--target", "gone", "--layers", "1"]) == 2
    assert "cannot reach the RPC server" in capsys.readouterr().err


def test_layer_kernels_profiled_through_rpc(rpc_server):
    pytest.importorskip("hwnas.compile.binconv")
    from hwnas.targets.tvm_measures import layer_measure

    rpc_target("loopback", rpc_server.port)
    target = load_target("loopback")
    configs = [LayerConfig(96, 128, 3, 2, 2, 16), LayerConfig(384, 384, 5, 8, 1, 7)]
    with Store.for_target(target) as store, open_session(target) as session:
        report = run_jobs(
            store, layer_jobs(configs, 32, layer_measure(session, Timing(repeat=3, min_repeat_ms=1, tries=1)))
        )
        assert report.measured == 2 and not report.failed
        assert all(m.median_ms > 0 and m.repeats == 3 for m in store.measurements("layer"))


def test_cli_profile_resumes(capsys):
    pytest.importorskip("hwnas.compile.binconv")
    argv = ["profile", "--target", "local", "--layers", "2", "--networks", "0", "--resolution", "32", "--repeat", "2"]
    argv += ["--json"]
    assert main([*argv, "--min-repeat-ms", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["runs"]["layers"]["measured"] == 2 and first["stored"]["layer"] == 2
    assert main([*argv, "--min-repeat-ms", "1"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["runs"] == {} and second["stored"]["layer"] == 2


# ----------------------------------------------------------------- what is measured is what the network runs


def network_kernels(arch, resolution: int, target) -> list:
    """The PrimFunc of every kernel call of the compiled network, in execution order."""
    from hwnas.compile.fold import fold
    from hwnas.compile.network import build_module

    subnet = build_supernet(NASBNN, 10).eval().extract(arch)
    module, labels = build_module(fold(subnet, resolution), target)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    bindings = module["main"].body.blocks[0].bindings
    funcs = [module[b.value.args[0]] for b in bindings if isinstance(b.value, relax.Call) and b.value.op == call_tir]
    assert len(funcs) == len(labels)
    return [f.without_attr("op_pattern") for f in funcs]


def test_measured_kernels_are_the_networks():
    from hwnas.compile.binconv import ConvShape, binary_conv2d
    from hwnas.targets.tvm_measures import layer_kernels, part_kernel

    target = load_target("local").tvm_target()
    arch = NASBNN.sample(random.Random(3))  # stride-2 layers (pooled shortcut), widening 1x1s (tiled)
    stem, head = arch_parts(arch, 32, classes=10)
    measured = [
        part_kernel(stem, 32),
        *(f for config in arch_configs(arch, 32) for f in layer_kernels(config, target)),
        part_kernel(head, 32),
    ]
    network = network_kernels(arch, 32, target)
    assert len(measured) == len(network) == 2 + 4 * sum(arch.depths)
    for ours, theirs in zip(measured, network, strict=True):
        tvm.ir.assert_structural_equal(ours.without_attr("global_symbol"), theirs)
    # the comparison can fail: the conv without its fused shortcut and RPReLU (the former measurement) differs
    config = arch_configs(arch, 32)[0]
    shape = ConvShape(config.c_in, config.c_in, config.k, config.g, config.stride, config.size_in, config.size_in)
    affine_only, _ = binary_conv2d(shape, target, affine=True)
    with pytest.raises(ValueError, match="StructuralEqual"):
        tvm.ir.assert_structural_equal(affine_only.without_attr("global_symbol"), network[2])


def test_part_configs_cover_every_arch():
    parts = set(part_configs(NASBNN, 224))
    for seed in range(30):
        assert set(arch_parts(NASBNN.sample(random.Random(seed)), 224)) <= parts
    assert len(parts) == len(NASBNN.stem_widths) + len(NASBNN.stages[-1].widths)


# ----------------------------------------------------------------- whole networks


def test_cli_profiles_networks_end_to_end_and_resumes(capsys):
    argv = ["profile", "--target", "local", "--layers", "0", "--networks", "2", "--resolution", "32"]
    argv += ["--repeat", "3", "--min-repeat-ms", "1", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["runs"]["networks"]["measured"] == 2 and first["stored"]["network"] == 2
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == {}
    with Store.for_target(load_target("local")) as store:
        rows = store.measurements("network")
    assert [m.key.resolution for m in rows] == [32, 32] and all(m.median_ms > 0 and m.repeats == 3 for m in rows)
    # the reference network was timed before and after the batch (and again when the two disagree)
    assert len(first["runs"]["networks"]["reference_ms"]) >= 2 and all(m.reference_ms > 0 for m in rows)
    assert {Arch.from_json(m.key.config_json()) for m in rows} == set(sample_networks(NASBNN, 2, 0))


def test_network_profiled_through_rpc(rpc_server):
    from hwnas.targets.tvm_measures import network_measure

    rpc_target("loopback", rpc_server.port)
    target = load_target("loopback")
    with Store.for_target(target) as store, open_session(target) as session:
        measure = network_measure(session, Timing(repeat=2, min_repeat_ms=1, tries=1), classes=10)
        report = run_jobs(store, network_jobs([NASBNN.smallest()], 32, measure), progress=False)
        assert report.measured == 1 and not report.failed, report.failed
        (row,) = store.measurements("network")
    assert row.median_ms > 0 and row.repeats == 2


def test_the_reference_waits_out_slow_windows_for_minutes_then_says_rerun():
    """The VM's "two speeds" state flipped for minutes; four tries (a minute) had stopped a pipeline."""
    now = [0.0]

    def clock() -> float:
        return now[0]

    def flaky(slow: int):
        left = [slow]

        def timer() -> list[float]:
            now[0] += 20.0  # each try waits out a window
            if left[0]:
                left[0] -= 1
                raise SlowDevice("the device stayed in a slow window for 15 s")
            return [1.0, 3.0, 2.0]

        return timer

    assert tvm_measures._patient(flaky(10), clock)() == 2.0  # 200 s of slow windows: read
    now[0] = 0.0
    with pytest.raises(HwnasError, match="rerun to continue"):
        tvm_measures._patient(flaky(1000), clock)()
    assert now[0] >= tvm_measures.REFERENCE_WAIT_S
