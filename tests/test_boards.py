"""Boards: presets and target strings, the NEON popcount, remote sessions that cannot hang or lie,
and the emulated aarch64 board (qemu-user) running compiled subnets through RPC and a tracker.

The emulated-board tests need qemu-user-static, mmdebstrap and gcc-aarch64-linux-gnu; they skip
without them, except under ``HWNAS_REQUIRE_BOARD=1`` (set by ``.ci/run``), where they fail. The
board's root and wheels are built once in the user cache dir (``HWNAS_CACHE`` overrides it).
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import time
from pathlib import Path

import pytest
import tvm
from platformdirs import user_cache_dir
from test_targets import free_port, rpc_target, write_user_target
from tvm import rpc
from tvm.rpc.tracker import Tracker

from hwnas.arch import LayerConfig
from hwnas.cli import main
from hwnas.errors import HwnasError
from hwnas.predictors.latency import PredictorError, fit
from hwnas.space import NASBNN
from hwnas.targets import board as board_module
from hwnas.targets.driver import DeviceLost, Job, layer_jobs, run_jobs
from hwnas.targets.session import DeviceUnreachable, SlowWindows, Timing, open_session
from hwnas.targets.store import Store, layer_key
from hwnas.targets.target import TargetError, load_target

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ----------------------------------------------------------------- presets, tags and target strings


def test_board_presets():
    expected = {"rpi4": "cortex-a72", "rpi5": "cortex-a76", "cortex-a53": "cortex-a53", "aarch64-qemu": "cortex-a72"}
    for name, mcpu in expected.items():
        target = load_target(name)
        assert target.tvm["mtriple"] == "aarch64-linux-gnu" and target.tvm["mcpu"] == mcpu, name
        assert target.cc == "aarch64-linux-gnu-gcc"
        assert "+neon" in target.tvm["mattr"]
    for name in ("rpi4", "rpi5", "cortex-a53"):
        assert load_target(name).threads == 4 and load_target(name).tvm["num-cores"] == 4
    assert load_target("rpi4").tvm == A72  # from TVM's tag raspberry-pi/4b-aarch64
    assert load_target("aarch64-qemu").connection.emulated and not load_target("rpi4").connection.emulated


@pytest.mark.parametrize(
    "tvm_table",
    [
        'tag = "raspberry-pi/4b-aarch64"',
        'target = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon -num-cores=4"',
        f"target = '{json.dumps(A72)}'",
        'tag = "arm/rasp4b64"\ncores = 4',  # the file's keys override the tag's
    ],
)
def test_target_file_takes_a_tag_or_target_string(tvm_table):
    write_user_target("pi", f'[tvm]\n{tvm_table}\nthreads = 2\n[connection]\nkind = "rpc"\nhost = "h"\nport = 1\n')
    target = load_target("pi")
    assert target.tvm == A72 and target.threads == 2
    assert dict(target.tvm_target().export())["mcpu"] == "cortex-a72"


@pytest.mark.parametrize(
    ("tvm_table", "message"),
    [
        ('tag = "no/such-board"', "tvm.tag: TVM does not accept 'no/such-board'"),
        ('target = "llvm mcpu=x"', "tvm.target: TVM does not accept 'llvm mcpu=x': option 'mcpu=x' is not -key=value"),
        ('tag = "arm/rasp4b64"\ntarget = "llvm"', "tvm.target: give a tag or a target string, not both"),
        ('kind = "llvm"\ncores = 0', "tvm.cores: must be a positive count"),
    ],
)
def test_bad_tag_or_target_string_is_one_line(tvm_table, message):
    path = write_user_target("pi", f'[tvm]\n{tvm_table}\n[connection]\nkind = "local"\n')
    with pytest.raises(TargetError, match=re.escape(f"{path}: {message}")):
        load_target("pi")


def test_emulated_connection_takes_no_address():
    path = write_user_target("q", '[tvm]\nkind = "llvm"\n[connection]\nkind = "emulated"\nport = 5\n')
    with pytest.raises(TargetError, match=re.escape(f"{path}: connection.port: a emulated target has no address")):
        load_target("q")


def test_aarch64_binary_conv_uses_the_vector_popcount():
    """NEON's ``cnt`` on whole 16-byte vectors, widened into 64-bit lanes, not a scalar popcount
    (``cnt v.8b`` on one word moved to a SIMD register, then summed across it)."""
    from hwnas.compile.binconv import ConvShape, binary_conv2d

    for name in ("rpi4", "cortex-a53"):
        target = load_target(name).tvm_target()
        func, _ = binary_conv2d(ConvShape(128, 128, 3, 4, 1, 14, 14), target)
        exe = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        asm = exe.mod.inspect_source("asm")
        counts = re.findall(r"\bcnt\s+v\d+\.(\d+b)", asm)
        assert counts and set(counts) == {"16b"}, name
        assert re.search(r"\buadalp\s+v\d+\.2d", asm), name  # accumulated in 64-bit lanes


# ----------------------------------------------------------------- sessions that cannot hang or lie


def test_missing_board_tools_is_one_line_naming_the_packages(monkeypatch, capsys):
    monkeypatch.setattr(board_module.shutil, "which", lambda tool: None if tool != "aarch64-linux-gnu-gcc" else tool)
    with pytest.raises(HwnasError, match=r"run `apt-get install qemu-user-static mmdebstrap`$"):
        board_module.check_tools()
    assert main(["board", "setup"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "apt-get install qemu-user-static mmdebstrap" in err


def test_tracker_key_nobody_serves_ends_after_timeout():
    tracker = Tracker(host="127.0.0.1", port=free_port(), port_end=65535, silent=True)
    try:
        write_user_target(
            "pool",
            f"""
            [tvm]
            kind = "llvm"
            [connection]
            kind = "tracker"
            host = "127.0.0.1"
            port = {tracker.port}
            key = "nobody"
            timeout_s = 1
            """,
        )
        start = time.monotonic()
        with pytest.raises(DeviceUnreachable, match=r"no device with key 'nobody' became free .* within 1 s"):
            with open_session(load_target("pool")):
                pass
        assert time.monotonic() - start < 20
    finally:
        tracker.terminate()


def test_slow_window_baseline_follows_a_device_that_settles_slower(monkeypatch):
    monkeypatch.setattr("hwnas.targets.session.SLOW_FACTOR", 1.2)
    now = [0.0]
    readings = iter([1.0] * 10 + [1.5] + [1.3] * 200)
    windows = SlowWindows(readings.__next__, clock=lambda: now[0])
    for _ in range(10):  # warm and fast
        windows.read()
        now[0] += 1
    assert windows.is_slow(windows.read())  # 1.5 shortly after 1.0: a slow window
    while now[0] < 30:  # throttled to 1.3 for 20 s: still compared with the fast readings
        now[0] += 1
        assert windows.is_slow(windows.read())
    while now[0] < 80:  # settled for longer than the baseline's span: 1.3 is its speed now
        now[0] += 1
        windows.read()
    assert windows.fastest == 1.3 and not windows.is_slow(1.3) and windows.is_slow(1.6)


def test_device_lost_stops_the_run_and_keeps_what_was_stored():
    def timer(ms):
        return lambda: [ms, ms]

    def lost():
        raise DeviceLost("target t: the device stopped answering (connection reset)")

    jobs = [
        Job(layer_key(LayerConfig(8, 8, 3, 1, 1, i + 4), 32), f"layer {i}", build)
        for i, build in enumerate([lambda: timer(1.0), lambda: lost, lambda: timer(2.0)])
    ]
    with Store(Path(os.environ["HWNAS_HOME"]) / "s.sqlite", "fp", "v") as store:
        report = run_jobs(store, jobs, progress=False)
        assert report.measured == 1 and len(report.failed) == 1
        assert "stopped: target t: the device stopped answering" in report.stopped
        assert [m.median_ms for m in store.measurements("layer")] == [1.0]


def test_board_lost_mid_profile_is_device_lost():
    """A real RPC server killed between two jobs: the second job's timing raises DeviceLost."""
    from hwnas.targets.tvm_measures import layer_measure

    server = rpc.Server(host="127.0.0.1", port=free_port(), port_end=65535, silent=True)
    rpc_target("doomed", server.port)
    target = load_target("doomed")
    configs = [LayerConfig(96, 128, 3, 2, 2, 16), LayerConfig(128, 128, 3, 4, 1, 8)]
    with Store.for_target(target) as store, open_session(target) as session:
        measure = layer_measure(session, Timing(repeat=2, min_repeat_ms=1, tries=1))

        def then_kill(config):
            built = measure(config)
            if config == configs[1]:
                server.terminate()
            return built

        report = run_jobs(store, layer_jobs(configs, 32, then_kill), progress=False)
        assert report.measured == 1 and report.stopped and "stopped answering" in report.stopped
        assert len(store.measurements("layer")) == 1


def test_profile_exits_nonzero_saying_how_many_jobs_failed(monkeypatch, capsys):
    from hwnas.targets import tvm_measures

    def broken(session, timing):
        def measure(*config):
            raise RuntimeError("kernel build failed")

        return measure

    monkeypatch.setattr(tvm_measures, "layer_measure", broken)
    monkeypatch.setattr(tvm_measures, "part_measure", broken)
    argv = ["profile", "--target", "local", "--layers", "2", "--networks", "0", "--resolution", "32", "--json"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["runs"]["layers"]["failed"]
    assert "8 jobs unmeasured" in err  # 2 layers, 3 stems, 3 heads


# ----------------------------------------------------------------- emulated measurements are marked


def test_emulated_rows_are_marked_and_predictor_fit_refuses_them(capsys):
    write_user_target(
        "emu", '[tvm]\nkind = "llvm"\n[connection]\nkind = "rpc"\nhost = "127.0.0.1"\nport = 1\nemulated = true\n'
    )
    target = load_target("emu")
    with Store.for_target(target) as store:
        for i in range(3):
            store.add(layer_key(LayerConfig(8, 8, 3, 1, 1, i + 4), 32), [1.0 + i])
        assert store.emulated_rows() == 3
        with pytest.raises(PredictorError, match="is an emulated device"):
            fit(target, store, 32)
        path = store.path
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM measurements WHERE emulated = 1").fetchone()[0] == 3
    assert main(["predictor", "fit", "--target", "emu", "--resolution", "32"]) == 2
    assert "emulated device" in capsys.readouterr().err
    assert '"emulated":true' in target.fingerprint()


def test_store_written_before_the_emulated_column_opens():
    path = Path(os.environ["HWNAS_HOME"]) / "old.sqlite"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE measurements (target TEXT NOT NULL, tvm_version TEXT NOT NULL, method TEXT NOT NULL,"
            " kind TEXT NOT NULL, config TEXT NOT NULL, resolution INTEGER NOT NULL, median_ms REAL NOT NULL,"
            " spread_ms REAL NOT NULL, repeats INTEGER NOT NULL, measured_at TEXT NOT NULL,"
            " PRIMARY KEY (target, tvm_version, method, kind, config, resolution))"
        )
    with Store(path, "fp", "v") as store:
        store.add(layer_key(LayerConfig(8, 8, 3, 1, 1, 4), 32), [1.0])
        assert store.emulated_rows() == 0 and len(store.measurements()) == 1


# ----------------------------------------------------------------- the emulated board


@pytest.fixture(scope="module")
def board_cache():
    """The board's parts, built once in the user cache dir (or ``HWNAS_CACHE``)."""
    missing = board_module.missing_packages()
    if missing:
        reason = f"the emulated Arm board needs the apt packages {', '.join(missing)}"
        if os.environ.get("HWNAS_REQUIRE_BOARD") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_CACHE", os.environ.get("HWNAS_CACHE") or user_cache_dir("hwnas"))
        yield board_module.prepare()


@pytest.fixture(scope="module")
def tracked_board(board_cache):
    """An emulated board registered with a local TVM RPC tracker under the key ``qemu-a72``."""
    tracker = Tracker(host="127.0.0.1", port=free_port(), port_end=65535, silent=True)
    board = board_module.EmulatedBoard(tracker=("127.0.0.1", tracker.port), key="qemu-a72", parts=board_cache)
    try:
        board.start()
        yield tracker.port
    finally:
        board.stop()
        tracker.terminate()


def tracker_target(port: int) -> None:
    write_user_target(
        "qemu-pool",
        f"""
        [tvm]
        target = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon"
        threads = 1
        [connection]
        kind = "tracker"
        host = "127.0.0.1"
        port = {port}
        key = "qemu-a72"
        emulated = true
        timeout_s = 60
        [export]
        cc = "aarch64-linux-gnu-gcc"
        """,
    )


def test_subnets_verified_on_the_emulated_board_through_the_tracker(tracked_board, tmp_path):
    """The largest, the smallest and a random subnet at 32x32, compiled for aarch64, run on the
    board (one session through the tracker's device key) and compared with PyTorch on the host."""
    from hwnas.compile.deploy import CompiledNet, compile_subnet, export, verify
    from hwnas.model import build_supernet

    tracker_target(tracked_board)
    target = load_target("qemu-pool")
    supernet = build_supernet(NASBNN, 10).eval()
    archs = [NASBNN.largest(), NASBNN.smallest(), NASBNN.sample(random.Random(7))]
    with open_session(target) as session:
        for i, arch in enumerate(archs):
            subnet = supernet.extract(arch)
            library = export(compile_subnet(subnet, 32, target.tvm_target()), tmp_path / f"net{i}.so", target.cc)
            assert library.read_bytes()[:4] == b"\x7fELF" and library.read_bytes()[18] == 0xB7  # EM_AARCH64
            net = CompiledNet(session.load_library(library), session.device)
            assert net.device.dlpack_device_type() >= 128  # an RPC session's device (a host one is 1)
            check = verify(net, subnet, 32, samples=2)
            assert check.ok, (arch, check)


def test_short_profile_on_the_emulated_board_stores_marked_rows(board_cache, capsys):
    argv = ["profile", "--target", "aarch64-qemu", "--layers", "1", "--networks", "1", "--resolution", "32"]
    assert main([*argv, "--repeat", "2", "--min-repeat-ms", "1", "--tries", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stored"]["layer"] == 1 and data["stored"]["network"] == 1, data
    with Store.for_target(load_target("aarch64-qemu")) as store:
        assert store.emulated_rows() == sum(data["stored"].values()) > 0
    assert main(["predictor", "fit", "--target", "aarch64-qemu", "--resolution", "32"]) == 2


def test_cli_compile_verify_and_bench_on_the_builtin_emulated_target(board_cache, tmp_path, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(NASBNN.sample(random.Random(11)).to_json()))
    argv = ["compile", str(arch), "--weights", "random", "--resolution", "32", "--classes", "10"]
    argv += ["--target", "aarch64-qemu", "--verify", "--bench", "--json", "-o", str(tmp_path / "net.so")]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verified"] is True and data["top1_agree"] is True and data["max_rel_error"] < 1e-3
    assert data["latency_ms"] > 0 and data["spread_ms"] >= 0 and data["emulated"] is True
    assert "torch_fp32_ms" not in data and "predicted_ms" not in data  # no predictor for it
    assert Path(data["output"]).is_file()


def test_profile_refuses_on_remote_targets(capsys, tmp_path):
    rpc_target("far", free_port())
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(NASBNN.smallest().to_json()))
    argv = ["compile", str(arch), "--weights", "random", "--resolution", "32", "--classes", "10", "--target", "far"]
    assert main([*argv, "--bench", "--profile", "-o", str(tmp_path / "x.so")]) == 2
    assert "--profile times each kernel on this machine" in capsys.readouterr().err
