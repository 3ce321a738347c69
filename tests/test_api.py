"""The public API: the README's Python example runs as written, and the version has one home."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import hwnas

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (1, 10)
    assert namespace["ops_m"] > 0


def test_public_names_resolve():
    for name in hwnas.__all__:
        assert getattr(hwnas, name) is not None
    assert hwnas.NASBNN.count() == 332353674695147520


def test_version_agrees_with_metadata():
    proc = subprocess.run([sys.executable, "-m", "hwnas", "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == f"hwnas {importlib.metadata.version('hwnas')}" == f"hwnas {hwnas.__version__}"


def test_no_top_level_targets_or_predictors_installed():
    """The folders targets/ and predictors/ install as hwnas.targets and hwnas.predictors only."""
    dist = importlib.metadata.distribution("hwnas")
    top = (dist.read_text("top_level.txt") or "").split()
    assert top in ([], ["hwnas"])
    assert hwnas.load_target.__module__ == "hwnas.targets.target"
    assert Path(sys.modules["hwnas.targets.target"].__file__).parent.name == "targets"


def test_library_never_imports_the_cli_package():
    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(path.relative_to(root))
        for folder in ("hwnas", "targets", "predictors")
        for path in (root / folder).rglob("*.py")
        if "commands" not in path.parts
        and path.name != "cli.py"
        and re.search(r"^\s*(from|import) hwnas\.commands", path.read_text(), flags=re.M)
    ]
    assert offenders == []


def test_missing_extra_is_one_line(monkeypatch, capsys, tmp_path):
    """An optional extra that is not installed names the pip command instead of a traceback."""
    from hwnas.cli import main

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails as if not installed
    assert main(["detect", "eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'hwnas[detect]'" in err
