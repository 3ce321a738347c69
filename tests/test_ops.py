"""The OPs counter: hand-computed cases, and agreement with the convolutions the model really runs."""

from __future__ import annotations

import random

import torch

from hwnas.arch import Arch, Layer, LayerShape
from hwnas.model import build_supernet
from hwnas.model.layers import BinaryConv2d
from hwnas.predictors.ops import count_ops, layer_bops
from hwnas.space import NASBNN


def test_layer_bops_by_hand():
    # 2x2 output, group conv 4->4 in 2 groups of 2 with 3x3 kernels, then 1x1 4->8
    shape = LayerShape(c_in=4, c_out=8, k=3, g=2, stride=2, size_in=4, stage=0, index=0)
    assert shape.size_out == 2
    assert layer_bops(shape) == 4 * 4 * 2 * 9 + 4 * 4 * 8 == 416


def test_count_ops_by_hand():
    arch = Arch(4, ((Layer(8, 3, 2),),), strides=(2,))
    ops = count_ops(arch, resolution=8, num_classes=10)
    assert ops.int8ops == 4 * 4 * 4 * 3 * 9  # stem 8 -> 4, 4 channels, 3 inputs, 3x3
    assert ops.bops == 416
    assert ops.flops == 8 * 10
    assert ops.ops == 80 + 1728 / 8 + 416 / 64
    assert ops.millions() == {"ops_m": 302.5e-6, "flops_m": 80e-6, "int8ops_m": 1728e-6, "bops_m": 416e-6}


def test_bops_equal_the_binary_macs_the_model_runs():
    arch = NASBNN.sample(random.Random(5))
    net = build_supernet(NASBNN, 10).eval()
    net.set_active(arch)
    macs = []

    def hook(module, inputs, output):
        c_in, k = inputs[0].shape[1], inputs[2]
        macs.append(output[0].numel() * (c_in // inputs[3]) * k * k)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, BinaryConv2d)]
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    for h in handles:
        h.remove()
    assert sum(macs) == count_ops(arch, resolution=64, num_classes=10).bops


def test_extremes_at_224():
    small, big = count_ops(NASBNN.smallest()), count_ops(NASBNN.largest())
    assert 15e6 < small.ops < big.ops
    assert small.int8ops == 112 * 112 * 24 * 27 and big.int8ops == 112 * 112 * 48 * 27
    assert small.flops == 768 * 1000 and big.flops == 1536 * 1000
