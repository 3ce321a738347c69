"""Fold a binary subnet's inference-time arithmetic into the few arrays a compiled kernel needs.

For every binary conv the deployable (BWBA, eval-mode) network computes
``RPReLU(BN(conv(sign(x - t), s * sign(W))) + shortcut)``. With D the integer +-1 dot product,
``BN(s * D) = scale * D + bias`` where ``scale = s * gamma / sqrt(var + eps)`` and
``bias = beta - mean * gamma / sqrt(var + eps)``, so a conv becomes: threshold t, the signs of W,
one affine, the shortcut and RPReLU. The stem's BatchNorm folds the same way around its 8-bit
(LSQ) weights, kept as the exact float values int8 * step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hwnas.arch import Arch, LayerShape
from hwnas.errors import HwnasError
from hwnas.model import BinaryNet, Mode
from hwnas.model.binary import RPReLU
from hwnas.model.layers import ElasticBatchNorm2d


@dataclass(frozen=True)
class Activation:
    """RPReLU parameters: y = PReLU(x - shift_in, slope) + shift_out, per channel."""

    shift_in: np.ndarray
    slope: np.ndarray
    shift_out: np.ndarray


@dataclass(frozen=True)
class FoldedConv:
    """One binary conv: RSign threshold of its input, +-1 weights, affine on D, RPReLU after the shortcut."""

    threshold: np.ndarray  # [c_in]
    weight: np.ndarray  # [c_out, c_in / groups, k, k], values +-1
    scale: np.ndarray  # [c_out]
    bias: np.ndarray  # [c_out]
    act: Activation


@dataclass(frozen=True)
class FoldedLayer:
    shape: LayerShape
    group_conv: FoldedConv  # k x k, c_in -> c_in, groups, stride
    pointwise: FoldedConv  # 1x1, c_in -> c_out


@dataclass(frozen=True)
class FoldedNet:
    """Everything the compiled network needs, as float32 NumPy arrays."""

    arch: Arch
    resolution: int
    stem_weight: np.ndarray  # [c, 3, 3, 3], exact 8-bit values times the LSQ step
    stem_scale: np.ndarray
    stem_bias: np.ndarray
    stem_act: Activation
    layers: tuple[FoldedLayer, ...]
    head_weight: np.ndarray  # [classes, c]
    head_bias: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.head_weight.shape[0]


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def _bn_affine(bn: ElasticBatchNorm2d, c: int, pre_scale: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    inv = bn.weight[:c] / torch.sqrt(bn.running_var[:c] + bn.eps)
    return _np(pre_scale * inv), _np(bn.bias[:c] - bn.running_mean[:c] * inv)


def _act(act: RPReLU, c: int) -> Activation:
    return Activation(_np(act.shift_in[:c]), _np(act.slope[:c]), _np(act.shift_out[:c]))


@torch.no_grad()
def fold(net: BinaryNet, resolution: int) -> FoldedNet:
    """Fold ``net``'s active architecture (BWBA mode, eval mode) for inputs of ``resolution``."""
    if net.mode is not Mode.BWBA or net.training:
        raise HwnasError("only the deployable network can be compiled: put it in eval mode and BWBA mode")
    arch = net.active
    layers = []
    for shape in arch.layer_shapes(resolution):
        block = net.stages[shape.stage][shape.index]
        convs = []
        for conv, rsign, bn, act, c_out, k, g in (
            (block.conv1, block.rsign1, block.bn1, block.act1, shape.c_in, shape.k, shape.g),
            (block.conv2, block.rsign2, block.bn2, block.act2, shape.c_out, 1, 1),
        ):
            signs, w_scale = conv.binary_weight(c_out, shape.c_in, k, g)
            scale, bias = _bn_affine(bn, c_out, w_scale)
            signs = _np(signs)
            convs.append(FoldedConv(_np(rsign.threshold[: shape.c_in]), signs, scale, bias, _act(act, c_out)))
        layers.append(FoldedLayer(shape, *convs))
    c = arch.stem
    stem_scale, stem_bias = _bn_affine(net.stem.bn, c, torch.ones(c))
    return FoldedNet(
        arch=arch,
        resolution=resolution,
        stem_weight=_np(net.stem.quantized_weight(c)),
        stem_scale=stem_scale,
        stem_bias=stem_bias,
        stem_act=_act(net.stem.act, c),
        layers=tuple(layers),
        head_weight=_np(net.classifier.weight[:, : arch.last_width]),
        head_bias=_np(net.classifier.bias),
    )
