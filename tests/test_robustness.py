"""Nothing lost, nothing stale (issue 18): resumes that do not fit write nothing, files are replaced
atomically, torn metric lines are tolerated, run directories are locked, bad input is one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.cli import main
from hwnas.errors import HwnasError
from hwnas.train.checkpoint import FILENAME, load_checkpoint
from hwnas.train.loop import METRICS, read_metrics
from hwnas.train.run import train_supernet
from tests.conftest import tiny
from tests.test_train_cli import TINY_FLAGS, _error_line


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def _short_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("short") / "run"
    train_supernet(tiny(epochs=2, max_steps=21, eval_every=1), run_dir)
    return run_dir


@pytest.fixture
def short_run(_short_run: Path, tmp_path: Path, capsys) -> Path:
    """A copy of a run of one finished epoch (metrics.jsonl has a line) stopped 2 steps into the second."""
    capsys.readouterr()  # the training's progress bars
    return Path(shutil.copytree(_short_run, tmp_path / "run"))


# ----------------------------------------------------------------- 1. resume validates before writing


def test_resume_with_another_width_writes_nothing(capsys, short_run: Path) -> None:
    before = snapshot(short_run)
    argv = ["train", "--out", str(short_run), "--resume", "--width-mult", "0.25"]
    err = _error_line(capsys, argv)
    assert "does not fit" in err and "width_mult 0.125 -> 0.25" in err and "nothing was written" in err
    assert snapshot(short_run) == before
    assert main(["train", "--out", str(short_run), "--resume", "--max-steps", "23", "--json"]) == 0  # still resumes
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(short_run)
    assert load_checkpoint(short_run / FILENAME)["position"]["global_step"] == 23


def test_finetune_resume_with_another_arch_writes_nothing(capsys, short_run: Path, tmp_path: Path) -> None:
    from hwnas.train.run import load_run

    toy_run = short_run
    space = load_run(toy_run).space
    (tmp_path / "small.json").write_text(space.smallest().dumps())
    (tmp_path / "large.json").write_text(space.largest().dumps())
    ft = tmp_path / "ft"
    argv = ["finetune", str(toy_run), "--out", str(ft), "--epochs", "1", "--max-steps", "2"]
    assert main([*argv[:2], str(tmp_path / "small.json"), *argv[2:]]) == 0
    capsys.readouterr()
    before = snapshot(ft)
    err = _error_line(capsys, [*argv[:2], str(tmp_path / "large.json"), *argv[2:], "--resume"])
    assert "does not fit" in err
    assert snapshot(ft) == before


def test_detector_resume_with_another_arch_writes_nothing(capsys, short_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    from hwnas.detect.synthetic import ensure_synthetic
    from hwnas.train.run import load_run
    from tests.test_detect import SMALL

    tree = ensure_synthetic(SMALL, tmp_path / "data")
    space = load_run(short_run).space
    (tmp_path / "small.json").write_text(space.smallest().dumps())
    (tmp_path / "large.json").write_text(space.largest().dumps())
    det = tmp_path / "det"
    flags = ["--data", f"coco:{tree}", "--epochs", "1", "--max-steps", "1", "--min-size", "64", "--max-size", "64"]
    flags += ["--fpn-channels", "16", "--head-size", "32", "--proposals", "20", "--anchor-size", "8", "--out", str(det)]
    assert main(["detect", "train", str(short_run), str(tmp_path / "small.json"), *flags]) == 0
    capsys.readouterr()
    before = snapshot(det)
    err = _error_line(capsys, ["detect", "train", str(short_run), str(tmp_path / "large.json"), *flags, "--resume"])
    assert "does not fit" in err
    assert snapshot(det) == before


# ----------------------------------------------------------------- 3. a torn last line of metrics.jsonl


def test_torn_metrics_line_is_tolerated_and_trimmed_atomically(capsys, short_run: Path, tmp_path: Path) -> None:
    metrics = short_run / METRICS
    whole = metrics.read_text()
    assert len(whole.splitlines()) == 1
    metrics.write_text(whole + '{"epoch": 2, "loss": 0.')  # killed while appending epoch 2's line
    assert [row["epoch"] for row in read_metrics(metrics)] == [1]
    assert main(["plot-run", str(short_run), "-o", str(tmp_path / "c.png")]) == 0
    train_supernet(tiny(epochs=2, max_steps=22), short_run, resume=True)  # the resume trims the torn line
    assert metrics.read_text() == whole
    capsys.readouterr()
    metrics.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')  # damaged in the middle: not silently skipped
    assert "line 2 is not an epoch's metrics" in _error_line(capsys, ["plot-run", str(short_run)])


# ----------------------------------------------------------------- 8. locked directories


def test_second_writer_of_a_run_is_refused_and_the_lock_dies_with_its_holder(capsys, short_run: Path) -> None:
    # a process that holds the lock the way a running `hwnas train` does, then waits
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from hwnas.locks import dir_lock\n"
            f"with dir_lock({str(short_run)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(short_run)
        err = _error_line(capsys, ["train", "--out", str(short_run), "--resume", "--max-steps", "22"])
        assert "in use by another hwnas command" in err
        with pytest.raises(HwnasError, match="in use"):
            train_supernet(tiny(epochs=2), short_run, resume=True)
        assert "in use by another hwnas command" in _error_line(capsys, ["pipeline", "--out", str(short_run)])
        assert snapshot(short_run) == before
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    train_supernet(tiny(epochs=2, max_steps=22), short_run, resume=True)
    assert load_checkpoint(short_run / FILENAME)["position"]["global_step"] == 22


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_over(capsys, short_run: Path) -> None:
    (short_run / FILENAME).unlink()  # as if killed during its first minutes
    (short_run / METRICS).unlink()
    assert main(["train", "--out", str(short_run), "--resume", "--max-steps", "1", "--json"]) == 0
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert load_checkpoint(short_run / FILENAME)["position"]["global_step"] == 1


def test_resume_of_a_missing_directory_creates_nothing(capsys, tmp_path: Path) -> None:
    assert "not a training run" in _error_line(capsys, ["train", "--out", str(tmp_path / "no"), "--resume"])
    with pytest.raises(HwnasError, match="nothing to resume"):
        train_supernet(tiny(), tmp_path / "no", resume=True)
    assert not (tmp_path / "no").exists()


# ----------------------------------------------------------------- 2. atomic writes, 9. a full disk


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write fails as on a full disk, after its temporary file was written."""

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("hwnas.files.os.fsync", fsync)


def test_full_disk_keeps_every_old_file(capsys, monkeypatch, short_run: Path, tmp_path: Path) -> None:
    from hwnas.detect.config import DetectConfig
    from hwnas.train.data import build_splits, load_indices, save_indices

    before = snapshot(short_run)
    config = tiny(epochs=2)
    splits = build_splits(config, load_indices(short_run / "splits.json"))
    (tmp_path / "curves.png").write_bytes(b"old")
    (tmp_path / "arch.json").write_text("old")
    _full_disk(monkeypatch)
    writers = [
        lambda: config.save(short_run / "config.json"),
        lambda: save_indices(splits, short_run / "splits.json"),
        lambda: DetectConfig().save(short_run / "config.json"),
    ]
    for write in writers:
        with pytest.raises(HwnasError, match="No space left on device"):
            write()
    err = _error_line(capsys, ["plot-run", str(short_run), "-o", str(tmp_path / "curves.png")])
    assert err.startswith(f"hwnas: error: cannot write {tmp_path / 'curves.png'}: No space left")
    err = _error_line(capsys, ["sample", "--smallest", "-o", str(tmp_path / "arch.json")])
    assert "No space left" in err
    assert (tmp_path / "curves.png").read_bytes() == b"old" and (tmp_path / "arch.json").read_text() == "old"
    assert snapshot(short_run) == before  # and no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["arch.json", "curves.png"]
    err = _error_line(capsys, ["train", "--out", str(short_run), "--resume", "--max-steps", "22"])
    assert "No space left" in err  # the checkpoint could not be written: one line, the old one kept
    assert load_checkpoint(short_run / FILENAME)["position"]["global_step"] == 21


def test_unwritable_output_path_is_one_line(capsys, monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    err = _error_line(capsys, ["sample", "--smallest", "-o", str(tmp_path / "file" / "a.json")])
    assert err.startswith(f"hwnas: error: cannot write {tmp_path / 'file' / 'a.json'}: ")
    assert "cannot lock" in _error_line(capsys, ["train", "--out", str(tmp_path / "file" / "run"), *TINY_FLAGS])

    def denied(*args, **kwargs):  # a directory the user may not write to (tests may run as root)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr("hwnas.files.tempfile.mkstemp", denied)
    err = _error_line(capsys, ["sample", "--smallest", "-o", str(tmp_path / "a.json")])
    assert err == f"hwnas: error: cannot write {tmp_path / 'a.json'}: Permission denied"


# ----------------------------------------------------------------- 6. pipeline steps and an incomplete profile


def test_failed_profile_jobs_exit_non_zero_then_a_rerun_finishes(capsys, monkeypatch, tmp_path: Path) -> None:
    from tests.fake_device import install

    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    argv = ["profile", "--target", "local", "--layers", "4", "--resolution", "32", "--json"]
    with monkeypatch.context() as m:
        install(m.setattr, fail=lambda label: label.startswith(("stem", "layer")))
        assert main(argv) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)  # the report still comes, then one line
    assert report["unmeasured"]["layers"] == 4 and report["unmeasured"]["parts"] > 0
    line = err.strip().splitlines()[-1]
    assert line.startswith("hwnas: error: profile of local incomplete: ") and "jobs unmeasured" in line
    install(monkeypatch.setattr)
    assert main(argv) == 0
    assert not any(json.loads(capsys.readouterr().out)["unmeasured"].values())


def test_pipeline_steps_rerun_when_incomplete_changed_or_deleted(monkeypatch, tmp_path: Path) -> None:
    from hwnas.commands.pipeline import Steps

    calls: list[str] = []

    def step(name: str, fail: bool = False):
        def run() -> dict:
            calls.append(name)
            if fail:
                raise HwnasError(f"{name} failed")
            (tmp_path / f"{name}.out").write_text(name)
            return {"file": str(tmp_path / f"{name}.out")}

        return run

    def pipeline(flags: dict, fail: bool = False) -> None:
        steps = Steps(tmp_path)
        steps.run("a", step("a"), flags, outputs=lambda r: [Path(r["file"])])
        steps.run("b", step("b", fail), after=("a",))
        steps.run("c", step("c"))

    with pytest.raises(HwnasError, match="b failed"):
        pipeline({"n": 1}, fail=True)
    assert calls == ["a", "b"] and not (tmp_path / "b.json").exists()  # a failed step is not done
    pipeline({"n": 1})
    assert calls[2:] == ["b", "c"]  # a reused, b redone
    pipeline({"n": 1})
    assert calls[4:] == []  # everything reused
    pipeline({"n": 2})
    assert calls[4:] == ["a", "b"]  # a's flags changed, b read from it; c did not
    (tmp_path / "a.out").unlink()
    pipeline({"n": 2})
    assert calls[6:] == ["a"]  # a's output deleted: a redone, and as it made the same, b still holds
    (tmp_path / "a.out").write_text("edited")
    (tmp_path / "c.json").write_text('{"format": 1, "step": "c", "res')  # torn
    pipeline({"n": 2})
    assert calls[7:] == ["a", "c"]
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["flags"] == {"n": 2} and list(record["outputs"]) == [str(tmp_path / "a.out")]


def test_empty_front_is_one_line() -> None:
    from hwnas.commands import pipeline

    with pytest.raises(HwnasError, match="empty front"):
        pipeline.check_front({"front": [], "trials": 3}, "ops", {"budget_mops": 1.0})


# ----------------------------------------------------------------- 9. one-line errors for bad files


def test_files_that_are_not_utf8_are_one_line(capsys, monkeypatch, tmp_path: Path) -> None:
    from hwnas.targets.target import user_targets_dir

    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    binary = b"\xff\xfe\x00garbage\x80"
    (tmp_path / "arch.json").write_bytes(binary)
    assert "not a text file" in _error_line(capsys, ["show", str(tmp_path / "arch.json")])
    user_targets_dir().mkdir(parents=True)
    (user_targets_dir() / "mine.toml").write_bytes(binary)
    assert "mine.toml: not a text file" in _error_line(capsys, ["profile", "--target", "mine"])
    (tmp_path / "c.toml").write_bytes(binary)
    assert "not a text file" in _error_line(capsys, ["train", "--config", str(tmp_path / "c.toml")])


def test_corrupt_or_locked_store_is_one_line(capsys, monkeypatch, tmp_path: Path) -> None:
    from hwnas.targets.store import Key, Store

    path = tmp_path / "m.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HwnasError, match="is damaged"):
        Store(path, "fp", "v")
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "measurements").mkdir(parents=True)
    (tmp_path / "home" / "measurements" / "local.sqlite").write_bytes(b"\x00" * 4096)
    assert "is damaged" in _error_line(capsys, ["profile", "--target", "local", "--layers", "1"])
    good = tmp_path / "good.sqlite"
    monkeypatch.setattr("hwnas.targets.store.LOCK_TIMEOUT_S", 0.1)
    with Store(good, "fp", "v") as store:
        other = sqlite3.connect(good)
        other.execute("BEGIN EXCLUSIVE")  # another process writing, past the timeout
        try:
            with pytest.raises(HwnasError, match="is locked by another process"):
                store.add(Key.of("layer", {"c": 1}, 32), [1.0])
        finally:
            other.rollback()
            other.close()


def test_broken_library_is_one_line(tmp_path: Path) -> None:
    from hwnas.compile.deploy import CompiledNet

    (tmp_path / "net.so").write_bytes(b"\x7fELF truncated")
    with pytest.raises(HwnasError, match="not a loadable compiled library"):
        CompiledNet.load(tmp_path / "net.so")


def test_failed_link_leaves_the_old_library(tmp_path: Path) -> None:
    import tvm
    from tvm import te

    from hwnas.compile.runner import export_cross, link

    a = te.placeholder((4,), name="a")
    func = te.create_prim_func([a, te.compute((4,), lambda i: a[i] + 1, name="b")])
    target = tvm.target.Target("llvm")
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    path = link(tvm.compile(module, target=target), tmp_path / "k.so")
    old = path.read_bytes()
    with pytest.raises(HwnasError, match=r"linking .* with false failed"):
        export_cross(func, target, path, "false")  # a cross compiler that fails
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["k.so"]


# ----------------------------------------------------------------- 10. a target's cc is a program hwnas runs


@pytest.mark.parametrize(
    ("cc", "ok"),
    [
        ("aarch64-linux-gnu-gcc", True),
        ("g++", True),
        ("/bin/sh", True),
        ("./build.sh", False),
        ("tools/cc", False),
        ("gcc -fplugin=x.so", False),
        ("gcc;rm -rf ~", False),
        ("/nonexistent/cc", False),
        ("-o", False),
    ],
)
def test_target_cc_is_a_command_name_or_an_absolute_executable(tmp_path: Path, cc: str, ok: bool) -> None:
    from hwnas.targets.target import TargetError, read_target

    path = tmp_path / "board.toml"
    text = '[tvm]\nkind = "llvm"\n[connection]\nkind = "rpc"\nhost = "h"\nport = 9090\n[export]\ncc = '
    path.write_text(text + json.dumps(cc) + "\n")
    if ok:
        assert read_target(path).cc == cc
    else:
        with pytest.raises(TargetError, match=r"export\.cc"):
            read_target(path)


def test_bad_coco_annotations_and_images_are_one_line(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    from hwnas.detect.data import load_data
    from hwnas.detect.synthetic import SyntheticSpec, annotation_file, ensure_synthetic, image_dir

    root = ensure_synthetic(SyntheticSpec(canvas=32, train=2, val=1, max_digits=1, min_size=12, max_size=16), tmp_path)
    train = root / annotation_file("train")
    good = json.loads(train.read_text())
    train.write_text(json.dumps([good]))
    with pytest.raises(HwnasError, match="top level is not an object"):
        load_data(f"coco:{root}")
    for key in ("bbox", "category_id"):
        broken = {**good, "annotations": [{k: v for k, v in a.items() if k != key} for a in good["annotations"]]}
        train.write_text(json.dumps(broken))
        with pytest.raises(HwnasError, match=f"not usable COCO annotations .*{key}"):
            load_data(f"coco:{root}")
    train.write_text(json.dumps(good))
    data = load_data(f"coco:{root}")
    data.train[0]
    name = data.train.coco.loadImgs(data.train.ids[1])[0]["file_name"]
    (root / image_dir("train") / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # fails mid-training
    with pytest.raises(HwnasError, match=f"{name}: cannot decode the image"):
        data.train[1]


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    from hwnas.files import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
