"""Initialisation before supernet training: residual branches at zero, then RSign thresholds.

Residual branches start at zero (BigNAS's rule): the scale of both BatchNorms of every block is
0, so the supernet starts as its shortcuts and every subnet computes nearly the same function;
each branch grows from there. Without it the students' gradients, four subnets a step on shared
weights, unsettled the Bi-Teacher (its cross-entropy averaged 3.1 over the first 250 steps of
the clutter schedule, above chance) and the middle of the space trained worst of all: uniform
random subnets 5 points below the smallest. With it the teacher's averaged 0.95, and after 500
steps the random subnets sat between the extremes (docs/training.md).

RSign thresholds are set from data. With zero thresholds the Bi-Real residual stream, which
every RPReLU pushes upwards, reaches RSign with a positive mean that grows with depth: on 32x32
digits 88-98 % of the deep layers' binary activations were +1 at initialisation and most of them
lay outside the |x| < 1 window where the sign's approximate gradient is non-zero, so the binary
branches carried almost no information and a FWBA teacher could not even fit one batch (CE stuck
near 2.8 after 40 Adam steps; 0.7 with this initialisation). Setting each threshold to the
per-channel median of its input on one batch, layer by layer in network order, starts every sign
balanced. It runs the largest subnet, whose channels cover every threshold, and only on a fresh
start (a resumed run restores the trained thresholds).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hwnas.model import BinaryNet
from hwnas.model.binary import RSign
from hwnas.model.layers import SeparableBlock


def zero_init_residual(net: BinaryNet) -> None:
    """Zero the BatchNorm scales of every block's two binary branches: each block starts as its shortcuts."""
    with torch.no_grad():
        for block in net.modules():
            if isinstance(block, SeparableBlock):
                block.bn1.weight.zero_()
                block.bn2.weight.zero_()


def init_thresholds(net: BinaryNet, x: Tensor) -> None:
    """Set every RSign threshold of ``net``'s active channels to the median of its input on ``x``."""

    def to_median(module: RSign, args: tuple[Tensor, ...]) -> None:
        inp = args[0].detach()
        c = inp.shape[1]
        module.threshold.data[:c] = inp.transpose(0, 1).reshape(c, -1).median(dim=1).values

    handles = [m.register_forward_pre_hook(to_median) for m in net.modules() if isinstance(m, RSign)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
