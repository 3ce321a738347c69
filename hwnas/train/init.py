"""Initialisation before supernet training: residual branches scaled down, then RSign thresholds.

Every block starts close to its shortcuts: the scale of both BatchNorms that close its binary
branches starts at ``residual_init`` (0.2 by default, 1 the plain initialisation). BigNAS starts
them at 0: training many subnets at once on shared weights is unstable otherwise. Here, with the
plain scale 1, the students' gradients unsettled the Bi-Teacher (its cross-entropy averaged 3.1
over the first 250 steps of the clutter schedule, above chance) and uniform random subnets ended
5 points below the smallest; at 0 one cluttered digit trained to largest / smallest / random
97.4 / 94.8 / 95.0 % instead of 90.6 / 85.1 / 78.3 %. But on pairs of digits (100 classes) the
teacher at scale 0 stayed at chance for 750 steps, as it did at 1, while at 0.2 it reached 40 %
after 250 (docs/training.md): at exactly 0 the convs' gradients are near zero, and Adam turns
them into full-size steps in noisy directions.

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


def scale_residual_branches(net: BinaryNet, scale: float) -> None:
    """Set the BatchNorm scales of every block's two binary branches to ``scale`` (0: each block is its shortcuts)."""
    with torch.no_grad():
        for block in net.modules():
            if isinstance(block, SeparableBlock):
                block.bn1.weight.fill_(scale)
                block.bn2.weight.fill_(scale)


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
