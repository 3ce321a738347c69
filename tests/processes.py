"""Running hwnas in a child process and killing it (-9) at a chosen moment, for the crash tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill_when(argv: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None) -> None:
    """Start ``argv`` and SIGKILL it as soon as ``ready()``; it must not finish first."""
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, f"{argv[3:5]} ended (exit {proc.returncode}) before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
