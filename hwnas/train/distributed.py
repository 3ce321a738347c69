"""Process-group setup for ``torchrun`` (gloo on CPU, nccl on GPUs); one process is the default."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
