"""Process groups: ``torchrun``'s (gloo on CPU, nccl on GPUs), or gloo workers that ``hwnas train``
spawns itself (:func:`spawn`) to use every core of a CPU machine.

On a 2-core CPU, two processes of one thread each step faster than one process with one or two
threads (docs/performance.md): a process's single thread keeps its core busy, where two OpenMP
threads of one process wait at every barrier for a descheduled partner. What the processes split,
the batch or each step's subnets, is :mod:`hwnas.train.loop`'s business.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.distributed as dist

from hwnas.errors import HwnasError


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, metrics and logs."""
        return self.rank == 0


def set_threads(threads: int) -> None:
    """Torch's intra-op threads for this process (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def init_distributed(threads: int = 0) -> Dist:
    """Join the process group torchrun describes in the environment, if any."""
    set_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world == 1:
        return Dist(0, 1, device)
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 inside it: only that process prints results."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def launched() -> bool:
    """True inside a process group's worker (torchrun's or :func:`spawn`'s)."""
    return "WORLD_SIZE" in os.environ


def default_processes() -> int:
    """One training process per core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Callable[..., Any], args: tuple, processes: int) -> Any:
    """Run ``fn(*args)`` in ``processes`` new gloo worker processes on this machine (as torchrun
    would: rank, world size and rendezvous in the environment) and return rank 0's result.

    A worker's ``HwnasError`` comes back as one; any other failure raises an ``HwnasError`` naming
    the rank and its exit code (its traceback is on stderr)."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    port = _free_port()
    level = logging.getLogger("hwnas").getEffectiveLevel()
    workers = [
        ctx.Process(target=_worker, args=(fn, args, rank, processes, port, level, results), daemon=False)
        for rank in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:  # one failed worker would leave the others waiting in a collective: end them all
        pending = {worker.sentinel: worker for worker in workers}
        while pending and not any(w.exitcode for w in workers):
            for sentinel in wait(list(pending)):
                pending.pop(sentinel).join()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join()
    outcome = None
    while not results.empty():
        kind, rank, value = results.get()
        if kind == "error":
            raise HwnasError(value)
        if rank == 0:
            outcome = value
    # the one that failed first exited by itself (> 0) or was killed (< 0); the others by us (-SIGTERM)
    failed = [(rank, w.exitcode) for rank, w in enumerate(workers) if w.exitcode]
    failed.sort(key=lambda f: f[1] == -signal.SIGTERM)
    if failed:
        raise HwnasError(f"training process {failed[0][0]} of {processes} failed (exit code {failed[0][1]})")
    return outcome


def _die_with_parent() -> None:
    """On Linux, have the kernel end this worker when the process that spawned it dies (a killed
    ``hwnas train`` must not leave its workers training on)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker(fn: Callable[..., Any], args: tuple, rank: int, world: int, port: int, level: int, results: Any) -> None:
    from hwnas.logs import setup_logging

    _die_with_parent()

    setup_logging(-1 if level > logging.INFO else 1 if level < logging.INFO else 0)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    try:
        value = fn(*args)
        results.put(("ok", rank, value if rank == 0 else None))
    except HwnasError as exc:
        results.put(("error", rank, str(exc)))
        raise SystemExit(2) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
