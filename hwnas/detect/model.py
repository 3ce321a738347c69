"""Faster R-CNN with a binary subnet as backbone: only the glue, the rest is torchvision's.

The extracted subnet (:meth:`BinaryNet.extract`, weights inherited from the supernet as the
paper initialises its detectors) runs in BWBA mode, the deployable binary network with its 8-bit
LSQ stem, as an ``nn.Sequential`` of single-input modules (``stem``, ``stage1`` .. ``stage5``), so
torchvision's ``BackboneWithFPN`` can take the outputs of stages ``first_stage`` .. 5 as FPN
levels ``"0"``, ``"1"``, ... (plus the max-pooled level ``"pool"``). The FPN, RPN and box head
are real-valued, with torchvision's initialisation; the subnet's classifier is not used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from hwnas.arch import Arch, Layer
from hwnas.detect.config import DetectConfig
from hwnas.model import BinaryNet, Mode
from hwnas.model.layers import Stem

ASPECT_RATIOS = (0.5, 1.0, 2.0)
ROI_SIZE = 7


class BinaryStem(nn.Module):
    """The subnet's stem at its width, in BWBA mode (8-bit weights)."""

    def __init__(self, stem: Stem, width: int) -> None:
        super().__init__()
        self.stem, self.width = stem, width

    def forward(self, x: Tensor) -> Tensor:
        return self.stem(x, self.width, Mode.BWBA)


class BinaryStage(nn.Module):
    """One stage of the subnet: its searched layers in order, in BWBA mode."""

    def __init__(self, blocks: nn.ModuleList, layers: Sequence[Layer]) -> None:
        super().__init__()
        self.blocks, self.layers = blocks, tuple(layers)

    def forward(self, x: Tensor) -> Tensor:
        for block, layer in zip(self.blocks, self.layers, strict=True):
            x = block(x, layer.c, layer.k, layer.g, Mode.BWBA)
        return x


def binary_body(subnet: BinaryNet) -> nn.Sequential:
    """The subnet without its classifier, as a sequence torchvision's ``IntermediateLayerGetter`` can cut."""
    arch = subnet.active
    parts = [("stem", BinaryStem(subnet.stem, arch.stem))]
    parts += [(f"stage{s + 1}", BinaryStage(subnet.stages[s], arch.stages[s])) for s in range(len(arch.stages))]
    return nn.Sequential(OrderedDict(parts))


def fpn_stages(arch: Arch, config: DetectConfig) -> list[int]:
    """0-based indices of the stages whose outputs are FPN levels."""
    return list(range(config.first_stage - 1, len(arch.stages)))


def build_detector(
    subnet: BinaryNet,
    num_classes: int,
    config: DetectConfig,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> FasterRCNN:
    """Faster R-CNN over ``subnet`` (an extracted subnet whose ``active`` arch is its own).

    ``image_mean`` / ``image_std`` are those of the data the supernet was trained on, so the
    backbone sees inputs scaled as it learnt them.
    """
    arch = subnet.active
    stages = fpn_stages(arch, config)
    backbone = BackboneWithFPN(
        binary_body(subnet),
        return_layers={f"stage{s + 1}": str(i) for i, s in enumerate(stages)},
        in_channels_list=[arch.stages[s][-1].c for s in stages],
        out_channels=config.fpn_channels,
    )
    levels = len(stages) + 1  # and the max-pooled level
    anchors = AnchorGenerator(tuple((config.anchor_size * 2**i,) for i in range(levels)), (ASPECT_RATIOS,) * levels)
    roi_pool = MultiScaleRoIAlign([str(i) for i in range(len(stages))], ROI_SIZE, sampling_ratio=2)
    return FasterRCNN(
        backbone,
        min_size=config.min_size,
        max_size=config.max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=config.proposals * 2,
        rpn_pre_nms_top_n_test=config.proposals * 2,
        rpn_post_nms_top_n_train=config.proposals,
        rpn_post_nms_top_n_test=config.proposals,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(config.fpn_channels * ROI_SIZE**2, config.head_size),
        box_predictor=FastRCNNPredictor(config.head_size, num_classes),
        box_batch_size_per_image=config.roi_samples,
    )
