"""Subnet parallelism: one step's sandwich subnets spread over processes, each on the whole batch.

Data parallelism (DDP) gives each process a slice of the batch, so on a 2-core CPU every
BatchNorm normalizes over 32 images instead of 64 and the run changes (the random subnets lost
2.6 points, docs/training.md). Here every process reads the same whole batch and runs some of the
step's subnets: the teacher on rank 0, which broadcasts its soft labels, and the students longest
first onto the least loaded process by estimated cost (:func:`assign`). The gradients are then
summed over the processes (:func:`sum_gradients`); a parameter gets a gradient exactly when some
process's subnets touched it, as in one process. So the run is the one-process run up to the
order of float summation (tests/test_train_ddp.py), at the speed of the slowest process's share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.predictors.ops import count_ops

OVERHEAD = 0.15
"""A subnet's fixed cost per training step as a share of the largest's multiply-accumulates
(binarizing, BatchNorm, the loss: measured at the default config, 2026-11-30, one thread: the
smallest subnet (6 % of the largest's MACs) took 21 % of the largest's step time)."""


def tasks_per_step(num_random: int, bwba_teacher: bool) -> int:
    """Forward-backward passes in one sandwich step: the teacher and each student."""
    return 1 + (2 + num_random) - bwba_teacher


def use_subnets(mode: str, world: int, tasks: int, cuda: bool) -> bool:
    """Whether ``world`` processes split the step's subnets (else the batch). ``auto``: on CPUs,
    where there are no more processes than subnets; DDP on GPUs, where batches are large."""
    if mode == "subnets" and world > tasks:
        raise HwnasError(f"parallel = 'subnets' needs at most {tasks} processes (the subnets of a step), got {world}")
    return world > 1 and (mode == "subnets" or (mode == "auto" and not cuda and world <= tasks))


def step_costs(archs: Sequence[Arch], resolution: int, num_classes: int) -> list[float]:
    """Estimated relative time of one forward and backward of each arch (for :func:`assign`)."""
    macs = [count_ops(arch, resolution, num_classes).macs for arch in archs]
    return [m + OVERHEAD * max(macs) for m in macs]


def assign(costs: Sequence[float], world: int) -> list[int]:
    """The process of each task: the first (the teacher) on rank 0, then the others longest first,
    each onto the least loaded process (ties: the lowest rank). Every process computes the same."""
    loads = [0.0] * world
    owner = [0] * len(costs)
    loads[0] = costs[0]
    for i in sorted(range(1, len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owner[i] = rank
        loads[rank] += costs[i]
    return owner


def sum_gradients(module: nn.Module, scalars: Tensor) -> Tensor:
    """Sum every parameter's gradient over the processes, in place, and return ``scalars`` summed.

    A parameter no process touched keeps no gradient (``None``), so the optimizer skips it as it
    would in one process; one that some process touched gets the sum (zeros from the others)."""
    params = list(module.parameters())
    touched = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        + [touched, scalars.detach().reshape(-1).float()]
    )
    dist.all_reduce(flat)
    flags = flat[sum(p.numel() for p in params) :]
    offset = 0
    for p, flag in zip(params, flags, strict=False):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p) if flag > 0 else None
        offset += n
    return flags[len(params) :]
