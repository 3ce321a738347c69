"""The folded network in PyTorch, operation for operation as the compiled kernels compute it.

This is what "the compiled network equals PyTorch" means in hwnas: every float32 value the
compiled network produces (each layer's output and the logits) is **bit-identical** to the value
computed here, on every CPU. It holds because both sides do the same IEEE-754 float32 operations
on the same operands in the same order: the same folded parameters (:mod:`hwnas.compile.fold`),
sums in the order of the kernels' loop nests, and every product rounded on its own (the kernels
fence it against FMA contraction, :func:`hwnas.compile.epilogue.product`; PyTorch's eager
element-wise ops never fuse). The +-1 dot products are integers below 2^24, exact in any order.
IEEE add, subtract, multiply and divide are correctly rounded on every ISA, so the result does not
depend on AVX-512, AVX2, SSE or NEON, nor on which side runs where.

We chose this over accepting "tied" sign bits (values within rounding of their threshold that may
flip) because a deployable network is then one exact function: nothing to bound, count or
explain, and a single flipped bit anywhere (a real bug) shows as a difference. The price is a
multiply and an add instead of one FMA per product in the epilogues, stem and head (element-wise
work, small next to the popcounts; not measured yet on an idle machine).

Folding itself (BatchNorm and the weight scale into one affine) rounds differently from the
training model's ``BatchNorm(s * D)``; that is a change of formula, checked layer by layer in the
tests, not a property of the compiler.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hwnas.arch import STEM_IN_CHANNELS, STEM_KERNEL, STEM_STRIDE
from hwnas.compile.binconv import border_rows
from hwnas.compile.fold import Activation, FoldedConv, FoldedNet
from hwnas.compile.network import layer_convs, layer_labels

Outputs = list[tuple[str, Tensor]]


def _t(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _ch(array: np.ndarray) -> Tensor:
    """A per-channel parameter, broadcast over [N, C, H, W]."""
    return _t(array).view(1, -1, 1, 1)


def rprelu(v: Tensor, act: Activation) -> Tensor:
    z = v - _ch(act.shift_in)
    return torch.where(z >= 0, z, z * _ch(act.slope)) + _ch(act.shift_out)


def stem(net: FoldedNet, image: Tensor) -> Tensor:
    """3x3 stride-2 conv, zero padding, summed over (input channel, ky, kx) in that order."""
    size, pad = net.arch.stem_size(net.resolution), STEM_KERNEL // 2
    padded = F.pad(image, [pad] * 4)
    weight = _t(net.stem_weight)  # [c, ci, ky, kx]
    acc = torch.zeros(image.shape[0], weight.shape[0], size, size)
    span = STEM_STRIDE * (size - 1) + 1
    for ci in range(STEM_IN_CHANNELS):
        for ky in range(STEM_KERNEL):
            for kx in range(STEM_KERNEL):
                pixels = padded[:, ci : ci + 1, ky : ky + span : STEM_STRIDE, kx : kx + span : STEM_STRIDE]
                acc = acc + pixels * weight[:, ci, ky, kx].view(1, -1, 1, 1)
    return rprelu(acc * _ch(net.stem_scale) + _ch(net.stem_bias), net.stem_act)


def pool_shortcut(x: Tensor) -> Tensor:
    """2x2 average pool, ceil mode, padding not counted: the window summed row by row."""
    h, w = x.shape[2:]
    grid = [0, w % 2, 0, h % 2]
    values, ones = F.pad(x, grid), F.pad(torch.ones(1, 1, h, w), grid)
    total = count = None
    for i in (0, 1):
        for j in (0, 1):
            value, one = values[:, :, i::2, j::2], ones[:, :, i::2, j::2]
            total = value if total is None else total + value
            count = one if count is None else count + one
    return total / count


def binary_conv(conv: FoldedConv, x: Tensor, groups: int, stride: int) -> Tensor:
    """RPReLU(scale * D + bias + shortcut) with D the exact +-1 dot product (+1 padding).

    The ``nasbnn`` convention's zero padding subtracts the border table from D (exact integers),
    and its BatchNorm is ``fma(D * s, scale, bias)`` as PyTorch computes it: the fused multiply-add
    is taken in float64 (the product exact, one rounding of the sum) and rounded to float32, which
    differs from a single float32 rounding only when the float64 sum lands on a float32 midpoint
    (odds about 2^-29 a value).
    """
    k = conv.weight.shape[-1]
    signs = torch.where(x - _ch(conv.threshold) >= 0, 1.0, -1.0)
    dot = F.conv2d(F.pad(signs, [k // 2] * 4, value=1.0), _t(conv.weight), stride=stride, groups=groups)
    if conv.border is not None:
        dot = dot - _border(conv.border, x.shape[2], dot.shape[2], k, stride)
    c_out = dot.shape[1]
    if stride == 2:
        residual = pool_shortcut(x)
    else:
        residual = x.repeat(1, -(-c_out // x.shape[1]), 1, 1)[:, :c_out]
    if conv.weight_scale is not None:
        scaled = (dot * _ch(conv.weight_scale)).double()
        affine = (scaled * _ch(conv.scale).double() + _ch(conv.bias).double()).float()
    else:
        affine = dot * _ch(conv.scale) + _ch(conv.bias)
    return rprelu(affine + residual, conv.act)


def _border(table: np.ndarray, size_in: int, size_out: int, k: int, stride: int) -> Tensor:
    """The border table [rows, cols, c_out] spread over every output position -> [1, c_out, H, W],
    rows and columns picked as :func:`hwnas.compile.binconv.border_index` picks them."""
    lead, tail, m = border_rows(size_in, size_out, k, stride)
    index = (
        list(range(size_out))
        if m == size_out
        else [v if v < lead else v - (size_out - m) if v >= size_out - tail else lead for v in range(size_out)]
    )
    full = table[np.ix_(index, index)]  # [H, W, c_out]: square inputs, the same rows along both axes
    return _t(full.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)


def head(net: FoldedNet, x: Tensor) -> Tensor:
    """Average over the pixels row by row, then the classifier summed channel by channel."""
    n, c, h, w = x.shape
    total = torch.zeros(n, c)
    for y in range(h):
        for xx in range(w):
            total = total + x[:, :, y, xx]
    pooled = total / torch.full_like(total, h * w)
    weight = _t(net.head_weight.T)  # [c, classes]
    dot = torch.zeros(n, weight.shape[1])
    for i in range(c):
        dot = dot + pooled[:, i : i + 1] * weight[i]
    return dot + _t(net.head_bias)


@torch.no_grad()
def reference_outputs(net: FoldedNet, image: np.ndarray) -> Outputs:
    """Every float activation of the folded network for ``image`` [N, 3, R, R], named, in the order
    a traced compiled network returns them (stem, each binary conv, logits); activations are NCHW."""
    x = stem(net, _t(image.astype(np.float32, copy=False)))
    out = [("stem", x)]
    for layer in net.layers:
        (first, _), _ = layer_convs(layer.shape)
        first_label, second_label = layer_labels(layer.shape)
        y = binary_conv(layer.group_conv, x, first.groups, first.stride)
        x = binary_conv(layer.pointwise, y, 1, 1)
        out += [(first_label, y), (second_label, x)]
    return [*out, ("logits", head(net, x))]


def reference_logits(net: FoldedNet, image: np.ndarray) -> np.ndarray:
    """The folded network's logits [N, classes] for ``image`` [N, 3, R, R]."""
    return reference_outputs(net, image)[-1][1].numpy()
