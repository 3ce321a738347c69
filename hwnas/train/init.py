"""Data-dependent initialisation of the RSign thresholds before supernet training.

With zero thresholds the Bi-Real residual stream, which every RPReLU pushes upwards, reaches
RSign with a positive mean that grows with depth: on 32x32 digits 88-98 % of the deep layers'
binary activations were +1 at initialisation and most of them lay outside the |x| < 1 window
where the sign's approximate gradient is non-zero, so the binary branches carried almost no
information and a FWBA teacher could not even fit one batch (CE stuck near 2.8 after 40 Adam
steps; 0.7 with this initialisation). Setting each threshold to the per-channel median of its
input on one batch, layer by layer in network order, starts every sign balanced. It runs the
largest subnet, whose channels cover every threshold, and only on a fresh start (a resumed run
restores the trained thresholds).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hwnas.model import BinaryNet
from hwnas.model.binary import RSign


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
