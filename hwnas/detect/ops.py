"""A detector's OPs at an input size (FLOPs + Int8OPs / 8 + BOPs / 64, in multiply-accumulates).

- Backbone: the binary subnet counted as in classification (:func:`hwnas.predictors.ops.count_ops`:
  8-bit stem, binary separable layers; no classifier) on the image as Faster R-CNN feeds it:
  resized by its transform, padded to a multiple of 32.
- Head, real-valued, so FLOPs: the FPN's lateral 1x1 and output 3x3 convs at each level, the RPN
  head's convs on every level (the max-pooled one too), and the box head's and predictor's fully
  connected layers for each proposal, counted at the most proposals the RPN keeps
  (``proposals``). RoIAlign, NMS, pooling and element-wise work are not counted, as the paper
  does not count element-wise work.

The convs and layers are read from the model's own modules, so a changed head is counted as built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from hwnas.arch import Arch
from hwnas.detect.config import DetectConfig
from hwnas.predictors.ops import Ops, count_ops


@dataclass(frozen=True)
class DetectorOps:
    input_size: tuple[int, int]  # height, width the backbone runs on (resized and padded)
    backbone: Ops
    fpn: int  # FLOPs (MACs) of each head part
    rpn: int
    roi: int

    @property
    def head(self) -> Ops:
        return Ops(flops=self.fpn + self.rpn + self.roi, int8ops=0, bops=0)

    @property
    def total(self) -> Ops:
        return Ops(self.backbone.flops + self.head.flops, self.backbone.int8ops, self.backbone.bops)

    def to_json(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "backbone": self.backbone.millions(),
            "head": {**self.head.millions(), "fpn_m": self.fpn / 1e6, "rpn_m": self.rpn / 1e6, "roi_m": self.roi / 1e6},
            "total": self.total.millions(),
        }


def input_size(model: FasterRCNN, height: int, width: int) -> tuple[int, int]:
    """The size the backbone runs on for an image of ``height`` x ``width``: resized, then padded."""
    resized = model.transform.resize(torch.zeros(3, height, width), None)[0].shape[-2:]
    divisor = model.transform.size_divisible
    return tuple(math.ceil(n / divisor) * divisor for n in resized)  # type: ignore[return-value]


def conv_macs(module: nn.Module, height: int, width: int) -> int:
    """MACs of every conv in ``module``, each run at stride 1 with 'same' padding on ``height`` x ``width``."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return height * width * sum(c.out_channels * c.in_channels // c.groups * math.prod(c.kernel_size) for c in convs)


def linear_macs(module: nn.Module) -> int:
    return sum(layer.in_features * layer.out_features for layer in module.modules() if isinstance(layer, nn.Linear))


def detector_ops(model: FasterRCNN, arch: Arch, config: DetectConfig, height: int, width: int) -> DetectorOps:
    """OPs of ``model`` (backbone ``arch``, built with ``config``) on one ``height`` x ``width`` image."""
    h, w = input_size(model, height, width)
    rows, cols = arch.layer_shapes(h), arch.layer_shapes(w)
    levels = [
        (row.size_out, col.size_out)
        for row, col in zip(rows, cols, strict=True)
        if row.stage >= config.first_stage - 1 and row.index == len(arch.stages[row.stage]) - 1
    ]
    fpn = model.backbone.fpn
    fpn_macs = sum(
        conv_macs(inner, *size) + conv_macs(outer, *size)
        for inner, outer, size in zip(fpn.inner_blocks, fpn.layer_blocks, levels, strict=True)
    )
    pooled = levels[-1][0] // 2 + levels[-1][0] % 2, levels[-1][1] // 2 + levels[-1][1] % 2  # max-pool 1, stride 2
    rpn_macs = sum(conv_macs(model.rpn.head, *size) for size in [*levels, pooled])
    per_proposal = linear_macs(model.roi_heads.box_head) + linear_macs(model.roi_heads.box_predictor)
    roi_macs = config.proposals * per_proposal
    return DetectorOps((h, w), count_ops(arch, h, num_classes=0, width=w), fpn_macs, rpn_macs, roi_macs)
