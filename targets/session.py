"""A session on a target's device: load compiled modules there and time them, locally or over TVM RPC.

Remote devices are reached only through TVM's own RPC: ``python -m tvm.exec.rpc_server`` on the
board (``rpc`` targets), ``python -m tvm.exec.rpc_tracker`` plus servers registered under a
device key (``tracker`` targets), or an emulated board the session starts on a loopback port and
stops at its end (``emulated`` targets, :mod:`hwnas.targets.board`). Before handing the address to
TVM, the session checks that a TCP connection opens within the target's ``timeout_s``: TVM's own
connect waits for the operating system's timeout (minutes) on a silent host, and its tracker client
retries for a minute and then waits for the key's device without end, so the tracker's socket gets
that timeout as well. A remote call that fails on a device that no longer answers raises
:class:`DeviceLost`, which stops a profile at once (what was stored stays stored).

Threads: on this machine the session sets ``TVM_NUM_THREADS`` before TVM's pool starts (TVM
otherwise uses half the cores on x86). A remote server reads its own environment, so start it
with ``TVM_NUM_THREADS=<threads>`` there.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwnas.errors import HwnasError
from hwnas.targets.driver import DeviceLost, RetryLater
from hwnas.targets.store import summarize
from hwnas.targets.target import Target, local_threads

if TYPE_CHECKING:
    import tvm


@dataclass(frozen=True)
class Timing:
    """How one measurement is timed: the single set of defaults for profiles, ``measure`` and compare.

    ``repeat`` timed repeats of at least ``min_repeat_ms`` each, in up to ``tries`` batches until one
    is quiet and its inter-quartile range within ``tolerance`` of its median (:meth:`Session.time_ms`).
    """

    repeat: int = 10
    min_repeat_ms: int = 10
    tries: int = 5
    tolerance: float = 0.05


DEFAULT_TIMING = Timing()


class DeviceUnreachable(HwnasError):
    """The target's device cannot be reached or refused the session."""


class Session:
    """An open device: ``load`` puts a compiled Executable there, ``time_ms`` measures a function."""

    def __init__(self, target: Target, remote: Any | None, workdir: Path) -> None:
        import tvm

        self.target = target
        self.remote = remote
        self.device = remote.cpu() if remote is not None else tvm.cpu()
        self._workdir = workdir
        self._count = 0
        self.slow_windows: SlowWindows | None = None  # installed by whoever has a probe kernel
        self.reference: Callable[[], float] | None = None  # the reference network's reader, made once

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    def load(self, exe: tvm.runtime.Executable) -> tvm.runtime.Module:
        """The module of ``exe`` on the device: as is locally, else exported, uploaded and loaded."""
        if self.remote is None:
            return exe.mod
        from hwnas.compile.runner import link

        self._count += 1
        return self.load_library(link(exe, self._workdir / f"mod{self._count}.so", self.target.cc))

    def load_library(self, path: Path) -> tvm.runtime.Module:
        """An exported library (linked for the target) loaded on the device, uploaded first if remote."""
        import tvm

        if self.remote is None:
            return tvm.runtime.load_module(str(path))
        self._count += 1
        name = f"lib{self._count}{path.suffix}"
        with self.device_calls():
            self.remote.upload(str(path), target=name)
            return self.remote.load_module(name)

    @contextmanager
    def device_calls(self) -> Iterator[None]:
        """Remote calls inside the block that fail on a device that stopped answering raise
        :class:`DeviceLost`; other failures (a kernel's own error) pass unchanged."""
        try:
            yield
        except Exception as exc:
            if self.remote is not None and not self.answers():
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DeviceLost(f"target {self.target.name}: the device stopped answering ({first})") from None
            raise

    def answers(self) -> bool:
        """Whether the remote device still answers a trivial call (a local one always does)."""
        if self.remote is None:
            return True
        try:
            self.tensor(np.zeros(1, "uint8"))  # one round trip (a device attribute may be cached)
        except Exception:
            return False
        return True

    def tensor(self, array: np.ndarray) -> tvm.runtime.Tensor:
        import tvm

        return tvm.runtime.tensor(array, self.device)

    def time_ms(
        self,
        mod: tvm.runtime.Module | tvm.relax.VirtualMachine,
        args: Sequence[Any],
        name: str = "main",
        timing: Timing | None = None,
    ) -> list[float]:
        """Milliseconds per call of ``mod[name](*args)``, one value per repeat; ``mod`` is a loaded
        module or a Relax VirtualMachine on the session's device (both have ``time_evaluator``),
        timed as ``timing`` says (:class:`Timing`).

        TVM's time_evaluator runs on the device (remote timing excludes the network) and grows
        the calls per repeat until a repeat lasts ``min_repeat_ms``; one untimed call warms up.
        On a shared machine another job's burst stalls a parallel kernel's threads: a multi-threaded
        kernel then waits for its slowest thread and a whole batch of repeats comes out steadily
        about twice too slow (a low spread does not reveal it). So locally each batch also records
        how much CPU *other* processes used meanwhile (:class:`ForeignLoad`), and up to ``tries``
        batches are timed, a short pause after a disturbed one, until one is both quiet and steady
        (inter-quartile range within ``tolerance`` of its median). With :attr:`slow_windows`
        installed, a quiet batch timed inside one of the device's slow windows is disturbed too
        (a batch disturbed by other processes is judged by that alone: their load slows the probe
        as well), and batches are retried past ``tries``, for up to ``SLOW_WAIT_S``, until one
        falls outside; if none does, :class:`SlowDevice` is raised and the profiling driver times
        the job again at the end of its run (a window can outlast the wait, and a batch inside one
        is about 2x slow). The kept batch is outside the windows, then the least disturbed, then
        the steadiest. Under a load that lasts (another training), no batch is quiet and the best
        is kept: profile a target while it is otherwise idle. A remote board's processes cannot be
        watched from here; its slow windows can.
        """
        with self.device_calls():
            return self._time_ms(mod, args, name, timing or Timing())

    def _time_ms(
        self, mod: tvm.runtime.Module | tvm.relax.VirtualMachine, args: Sequence[Any], name: str, timing: Timing
    ) -> list[float]:
        tolerance = timing.tolerance
        mod[name](*args)
        timer = mod.time_evaluator(
            name, self.device, number=1, repeat=timing.repeat, min_repeat_ms=timing.min_repeat_ms
        )
        watch = ForeignLoad() if self.remote is None else None
        windows = self.slow_windows
        best, best_rank = [], (True, True, math.inf)
        deadline = time.monotonic() + SLOW_WAIT_S
        tried = 0
        while True:
            start = time.monotonic()
            before = windows.read() if windows else 0.0
            if watch:
                watch.start()
            samples = [float(seconds) * 1e3 for seconds in timer(*args).results]
            busy = watch.stop() > QUIET_CORES if watch else False
            after = windows.read() if windows else 0.0
            # another job's load also slows the probe: the probe speaks only for quiet batches
            slow = not busy and windows is not None and windows.is_slow(max(before, after))
            median, spread = summarize(samples)
            rank = (slow, busy, spread / median)
            if rank < best_rank:
                best, best_rank = samples, rank
            tried += 1
            if best_rank[:2] == (False, False) and best_rank[2] <= tolerance:
                break
            if slow:
                waiting = time.monotonic() < deadline
                if waiting:
                    time.sleep(SLOW_PAUSE_S)
                windows.slow_batches += 1
                windows.slow_s += time.monotonic() - start
                if waiting:
                    continue
            if tried >= timing.tries:
                break
            if busy:
                time.sleep(BURST_PAUSE_S)
        if best_rank[0]:
            raise SlowDevice(f"the device stayed in a slow window for {SLOW_WAIT_S:g} s")
        return best


class SlowDevice(RetryLater):
    """Every batch of a timing fell inside the device's slow windows: none of them is kept."""


class SlowWindows:
    """Whether the device is in one of its slow windows, from a fixed probe kernel timed beside each batch.

    A batch inside a window is as steady as any, so its spread does not tell (docs/profiling.md:
    what the windows look like here). The probe (``probe() -> ms``, a short parallel kernel) is
    read before and after each batch; a reading above ``SLOW_FACTOR`` times the baseline marks the
    batch slow. The baseline is the fastest reading of the last ``BASELINE_S`` seconds, not of the
    whole session: a board that settles slower after warm-up (thermal throttling) is then compared
    with its settled speed, while a window (at most ``SLOW_WAIT_S`` long) still has fast readings
    before it inside the span.
    """

    def __init__(self, probe: Callable[[], float], clock: Callable[[], float] = time.monotonic) -> None:
        self.probe = probe
        self.clock = clock
        self._recent: deque[tuple[float, float]] = deque()  # (when, ms), the last BASELINE_S seconds
        self.slow_batches = 0  # batches found inside a window (and retried) in this session
        self.slow_s = 0.0  # seconds those batches and the pauses after them took

    @property
    def fastest(self) -> float:
        """The baseline: the fastest reading of the last ``BASELINE_S`` seconds."""
        return min((ms for _, ms in self._recent), default=math.inf)

    def read(self) -> float:
        ms = self.probe()
        now = self.clock()
        self._recent.append((now, ms))
        while self._recent[0][0] < now - BASELINE_S:
            self._recent.popleft()
        return ms

    def is_slow(self, ms: float) -> bool:
        return ms > SLOW_FACTOR * self.fastest


SLOW_FACTOR = 1.2
"""A probe reading this much above the session's fastest is a slow window (quiet readings spread by
about 1.5 %; docs/profiling.md has why not 1.4)."""
SLOW_WAIT_S = 15.0
"""How long a measurement waits for a slow window to pass before giving up (:class:`SlowDevice`)."""
SLOW_PAUSE_S = 1.0
"""Pause between batches while the device is in a slow window."""
BASELINE_S = 60.0
"""Span of probe readings the slow-window baseline is the fastest of: four times the longest wait
for a window, short beside the minutes a board takes to heat up."""
QUIET_CORES = 0.3
"""Other processes may use this many cores during a batch before it counts as disturbed."""
BURST_PAUSE_S = 0.3
"""Pause after a disturbed batch, for a short burst (a shell command, a compile) to pass."""


class ForeignLoad:
    """CPU time that processes other than this one used between ``start`` and ``stop``, in cores."""

    def start(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._wall = time.perf_counter()
        self._all = self._busy(psutil.cpu_times())
        self._mine = sum(self._me.cpu_times()[:2])

    def stop(self) -> float:
        import psutil

        wall = time.perf_counter() - self._wall
        others = self._busy(psutil.cpu_times()) - self._all - (sum(self._me.cpu_times()[:2]) - self._mine)
        return max(others, 0.0) / max(wall, 1e-9)

    @staticmethod
    def _busy(times: Any) -> float:
        return (
            times.user
            + times.system
            + getattr(times, "nice", 0.0)
            + getattr(times, "irq", 0.0)
            + getattr(times, "softirq", 0.0)
        )


def _check_reachable(host: str, port: int, timeout_s: float, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise DeviceUnreachable(f"cannot reach the {what} at {host}:{port} within {timeout_s:g} s: {reason}") from None


def _connect(target: Target, host: str, port: int) -> Any:
    from tvm import rpc

    conn = target.connection
    what = "RPC tracker" if conn.kind == "tracker" else "RPC server"
    _check_reachable(host, port, conn.timeout_s, what)
    try:
        if conn.kind != "tracker":
            return rpc.connect(host, port, session_timeout=conn.session_timeout_s)
        tracker = rpc.connect_tracker(host, port)
        tracker._connect()  # TVM connects lazily and waits for a free device without end:
        tracker._sock.settimeout(conn.timeout_s)  # its socket waits timeout_s at most
        try:
            return tracker.request(conn.key, session_timeout=conn.session_timeout_s, max_retry=1)
        finally:
            tracker.close()
    except Exception as exc:  # TVM raises TVMError, RuntimeError or socket errors here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if conn.kind == "tracker" and "timed out" in first:
            raise DeviceUnreachable(
                f"target {target.name}: no device with key {conn.key!r} became free at the RPC tracker "
                f"{host}:{port} within {conn.timeout_s:g} s"
            ) from None
        raise DeviceUnreachable(f"target {target.name}: {what} at {host}:{port} refused: {first}") from None


@contextmanager
def open_session(target: Target) -> Iterator[Session]:
    """A session on the target's device, closed (temporary files removed, an emulated board
    stopped) on exit.

    Raises DeviceUnreachable, a one-line HwnasError, when an RPC server or tracker does not answer,
    and BoardError when an emulated board cannot start.
    """
    conn = target.connection
    with ExitStack() as stack:
        remote = None
        if conn.kind == "local":
            _set_local_threads(local_threads(target))
        elif conn.kind == "emulated":
            from hwnas.targets.board import EmulatedBoard

            board = stack.enter_context(EmulatedBoard(threads=target.threads or 1))
            remote = _connect(target, "127.0.0.1", board.port)
        else:
            remote = _connect(target, conn.host, conn.port)
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"hwnas-{target.name}-"))
        yield Session(target, remote, Path(workdir))


def _set_local_threads(threads: int) -> None:
    """TVM's pool reads TVM_NUM_THREADS once, when it starts; later changes have no effect."""
    import tvm

    os.environ["TVM_NUM_THREADS"] = str(threads)
    used = int(tvm.runtime.num_threads())
    if used != threads:
        warnings.warn(f"TVM's thread pool already runs {used} thread(s); the target asks for {threads}", stacklevel=3)
