"""An emulated 64-bit Arm board: TVM's RPC server in an arm64 Python run by qemu-user, on loopback.

Made from parts of the public registries, built once and cached under
``hwnas.paths.cache_dir()/board/<tvm version>`` (see docs/boards.md):

- ``root``: an arm64 Debian bookworm root with Python 3.11, unpacked by ``mmdebstrap
  --variant=extract`` (no chroot and no binfmt_misc needed);
- ``site``: the aarch64 wheels of the host's TVM and tvm-ffi versions (and what they import),
  downloaded by pip and unzipped into one folder put on ``PYTHONPATH``;
- ``python3``: a host script that runs the root's python under ``qemu-aarch64-static -0 <script>``,
  so that ``sys.executable`` is the script and the server's worker processes start through qemu too.

The server loads TVM's runtime library only (``TVM_USE_RUNTIME_LIB=1``): qemu needs seconds more to
load the 240 MB compiler library, which a device never uses. Emulated time says nothing about a
board: targets reached this way are ``emulated`` and their store rows are marked so.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hwnas.errors import HwnasError
from hwnas.files import atomic_write_text
from hwnas.paths import cache_dir

_log = logging.getLogger(__name__)

TOOLS = {
    "qemu-aarch64-static": "qemu-user-static",
    "mmdebstrap": "mmdebstrap",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
}
"""Host programs the emulated board needs, and the Debian/Ubuntu package of each."""
SUITE = "bookworm"  # Debian 12: Python 3.11, matching the cp311 wheels
ROOT_PACKAGES = "python3.11-minimal,libpython3.11-stdlib,libstdc++6,libgcc-s1,zlib1g"
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
EXTRA_WHEELS = ("numpy<2.3", "psutil", "cloudpickle", "typing_extensions", "ml_dtypes")
START_TIMEOUT_S = 180.0
"""How long the server may take to start under qemu (importing TVM there takes 5-30 s)."""
_BOUND = re.compile(r"bind to [\d.]+:(\d+)")


class BoardError(HwnasError):
    """The emulated board cannot be built or started."""


def missing_packages() -> list[str]:
    """The apt packages whose programs the emulated board needs and this machine lacks."""
    return [package for tool, package in TOOLS.items() if shutil.which(tool) is None]


def check_tools() -> None:
    """One clear line naming the apt packages to install when a program is missing."""
    missing = missing_packages()
    if missing:
        raise BoardError(
            f"the emulated Arm board needs {', '.join(missing)}: run `apt-get install {' '.join(missing)}`"
        )


@dataclass(frozen=True)
class BoardParts:
    """The cached parts of the emulated board."""

    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def site(self) -> Path:
        return self.directory / "site"

    @property
    def python(self) -> Path:
        return self.directory / "python3"

    def ready(self) -> bool:
        return self.root.is_dir() and self.site.is_dir() and self.python.is_file()


def board_dir() -> Path:
    """The board's cache folder, one per TVM version (the board runs the host's TVM)."""
    return cache_dir() / "board" / f"{SUITE}-arm64-tvm{metadata.version('apache-tvm')}"


def prepare(directory: Path | None = None) -> BoardParts:
    """The board's parts, built first if missing (once: concurrent callers wait on a lock)."""
    check_tools()
    parts = BoardParts(directory or board_dir())
    if parts.ready():
        return parts
    parts.directory.mkdir(parents=True, exist_ok=True)
    with open(parts.directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not parts.root.is_dir():
            _build(parts.root, _make_root, "the arm64 root (mmdebstrap)")
        if not parts.site.is_dir():
            _build(parts.site, _fetch_wheels, "the aarch64 TVM wheels (pip download)")
        script = (
            f'#!/bin/sh\nexec qemu-aarch64-static -0 "$0" -L "{parts.root}" "{parts.root}/usr/bin/python3.11" "$@"\n'
        )
        atomic_write_text(parts.python, script)
        parts.python.chmod(0o755)
    return parts


def _build(path: Path, make: Callable[[Path], None], what: str) -> None:
    """Build into a temporary folder beside ``path`` and rename it into place (all or nothing)."""
    _log.info(f"building {what} in {path} (once)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        make(tmp)
        tmp.rename(path)
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit code {exc.returncode}"]
        raise BoardError(f"building {what} failed: {last[0]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_root(tmp: Path) -> None:
    tmp.rmdir()  # mmdebstrap wants a new or empty folder; a fresh one is simplest
    cmd = ["mmdebstrap", "--arch=arm64", "--variant=extract", f"--include={ROOT_PACKAGES}", SUITE, str(tmp)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _fetch_wheels(tmp: Path) -> None:
    wheels = tmp / "wheels"
    pins = [f"apache-tvm=={metadata.version('apache-tvm')}", f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.11", *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(wheels)]
    subprocess.run([*cmd, *pins, *EXTRA_WHEELS], check=True, capture_output=True, text=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp)
    shutil.rmtree(wheels)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmulatedBoard:
    """TVM's RPC server on the emulated board, on a free loopback port, or registered with a tracker
    under ``key``. ``start`` returns the port once the server listens; ``stop`` ends its processes."""

    def __init__(
        self,
        threads: int = 1,
        tracker: tuple[str, int] | None = None,
        key: str = "",
        parts: BoardParts | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.threads = threads
        self.tracker = tracker
        self.key = key
        self.parts = parts
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._log: Path | None = None

    def start(self) -> int:
        parts = self.parts or prepare()
        port = free_port()
        args = ["-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 50)]
        if self.tracker:
            args += ["--tracker", f"{self.tracker[0]}:{self.tracker[1]}", "--key", self.key]
        env = {
            **os.environ,
            "PYTHONPATH": str(parts.site),
            "TVM_USE_RUNTIME_LIB": "1",
            "TVM_NUM_THREADS": str(self.threads),
        }
        fd, log = tempfile.mkstemp(prefix="hwnas-board-", suffix=".log")
        self._log = Path(log)
        # its own process group: stop() ends the server and the workers it forked, nothing else
        self._proc = subprocess.Popen(
            [str(parts.python), *args], stdout=fd, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        os.close(fd)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            found = _BOUND.search(self.log_text())
            if found:
                self.port = int(found.group(1))
                _log.info(f"emulated Arm board listening on 127.0.0.1:{self.port}")
                return self.port
            if self._proc.poll() is not None:
                last = self.log_text().strip().splitlines()[-1:] or [f"exit code {self._proc.returncode}"]
                self.stop()
                raise BoardError(f"the emulated Arm board stopped while starting: {last[0]}")
            time.sleep(0.2)
        self.stop()
        raise BoardError(f"the emulated Arm board did not start within {self.start_timeout_s:g} s")

    def log_text(self) -> str:
        return self._log.read_text(errors="replace") if self._log and self._log.exists() else ""

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            _end_group(self._proc)
            self._proc = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    def __enter__(self) -> EmulatedBoard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after 5 s."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
