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
import torch.nn.functional as F

from hwnas.arch import Arch, LayerShape
from hwnas.compile.binconv import border_rows
from hwnas.errors import HwnasError
from hwnas.model import BinaryNet, Mode
from hwnas.model.binary import RPReLU, RSign
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
    border: np.ndarray | None = None  # zero padding (nasbnn): int32 [rows, cols, c_out], binconv.border_rows
    weight_scale: np.ndarray | None = None  # nasbnn: s kept apart, fma(D * s, scale, bias) as PyTorch rounds


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


def _bn_torch(bn: ElasticBatchNorm2d, c: int) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm as PyTorch's CPU kernel computes it in eval mode: ``fma(x, alpha, beta)`` with
    alpha = rsqrt(var + eps) * gamma and beta = beta - mean * alpha (one rounding)."""
    alpha = torch.rsqrt(bn.running_var[:c] + bn.eps) * bn.weight[:c]
    return _np(alpha), _np(torch.addcmul(bn.bias[:c], bn.running_mean[:c], alpha, value=-1))


def _act(act: RPReLU, c: int) -> Activation:
    return Activation(_np(act.shift_in[:c]), _np(act.slope[:c]), _np(act.shift_out[:c]))


def border_correction(
    signs: torch.Tensor, groups: int, stride: int, size: int, dead: torch.Tensor | None = None
) -> np.ndarray:
    """What a +1-padded binary conv counts in its border, per output position class and channel.

    Zero padding (the ``nasbnn`` convention) gives ``dot - border``; the rows and columns kept
    are those of :func:`hwnas.compile.binconv.border_rows`. ``dead`` input channels (0 after
    ``torch.sign`` everywhere, which the packed bits cannot hold) count as padding too.
    """
    k = signs.shape[-1]
    p = k // 2
    inner = torch.zeros(1, signs.shape[1] * groups, size, size, dtype=torch.float64)
    if dead is not None:
        inner[0, dead] = 1.0
    pad = F.pad(inner, [p] * 4, value=1.0)
    full = F.conv2d(pad, signs.double(), stride=stride, groups=groups)[0].round().to(torch.int32)
    n = full.shape[-1]
    lead, tail, m = border_rows(size, n, k, stride)
    keep = list(range(n)) if m == n else [*range(lead), lead, *range(n - tail, n)]
    return np.ascontiguousarray(full[:, keep][:, :, keep].permute(1, 2, 0).numpy())


@torch.no_grad()
def _dead_channels(net: BinaryNet, resolution: int, samples: int = 2) -> dict[int, torch.Tensor]:
    """Per RSign (by id), its input channels that ``torch.sign`` makes 0 everywhere on random
    images: channels a layer holds constant at its threshold (e.g. an 8-bit stem channel whose
    weights all round to 0). Only such structurally dead channels can be compiled exactly."""
    found: dict[int, torch.Tensor] = {}

    def hook(module: torch.nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        zero = (out == 0).all(dim=(0, 2, 3))
        found[id(module)] = zero if id(module) not in found else found[id(module)] & zero

    rsigns = [m for m in net.modules() if isinstance(m, RSign)]
    handles = [m.register_forward_hook(hook) for m in rsigns]
    try:
        net(torch.randn(samples, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)))
    finally:
        for h in handles:
            h.remove()
    return {key: mask for key, mask in found.items() if bool(mask.any())}


@torch.no_grad()
def fold(net: BinaryNet, resolution: int) -> FoldedNet:
    """Fold ``net``'s active architecture (BWBA mode, eval mode) for inputs of ``resolution``."""
    if net.mode is not Mode.BWBA or net.training:
        raise HwnasError("only the deployable network can be compiled: put it in eval mode and BWBA mode")
    arch = net.active
    dead = _dead_channels(net, resolution) if net.stem.nasbnn else {}
    layers = []
    for shape in arch.layer_shapes(resolution):
        block = net.stages[shape.stage][shape.index]
        convs = []
        for conv, rsign, bn, act, c_out, k, g in (
            (block.conv1, block.rsign1, block.bn1, block.act1, shape.c_in, shape.k, shape.g),
            (block.conv2, block.rsign2, block.bn2, block.act2, shape.c_out, 1, 1),
        ):
            signs, w_scale = conv.binary_weight(c_out, shape.c_in, k, g)
            scale, bias = _bn_torch(bn, c_out) if conv.nasbnn else _bn_affine(bn, c_out, w_scale)
            stride, size = (shape.stride, shape.size_in) if k > 1 else (1, shape.size_out)
            gone = dead.get(id(rsign))
            zero_pad = conv.nasbnn and (k > 1 or gone is not None)
            border = border_correction(signs, g, stride, size, gone) if zero_pad else None
            exact = _np(w_scale) if conv.nasbnn else None
            act_ = _act(act, c_out)
            convs.append(FoldedConv(_np(rsign.threshold[: shape.c_in]), _np(signs), scale, bias, act_, border, exact))
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
