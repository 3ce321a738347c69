"""Train a detector whose backbone is a subnet extracted from a trained supernet.

It runs the supernet's training loop (:mod:`hwnas.train.loop`): tqdm progress, one line of
``metrics.jsonl`` per epoch (losses and validation mAP), atomic checkpoints at every epoch and
every ``checkpoint_minutes``, exact ``--resume`` (model, optimizer, schedule, torch's RNG, data
position), DDP under ``torchrun``. The detector directory holds ``config.json``,
``detector.json`` (what rebuilds the network: supernet, arch, model options, classes,
normalisation; see :mod:`hwnas.detect.store`), ``checkpoint.pt`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from hwnas.arch import Arch
from hwnas.detect.config import DetectConfig
from hwnas.detect.data import CocoImages, collate, load_data
from hwnas.detect.evaluate import evaluate_detector
from hwnas.detect.model import build_detector
from hwnas.detect.store import DetectorInfo, save_info
from hwnas.model import Mode
from hwnas.train.checkpoint import claim
from hwnas.train.data import normalization
from hwnas.train.distributed import Dist, init_distributed
from hwnas.train.loop import LoopData, SameNetwork, train_loop
from hwnas.train.run import CONFIG, Run

_log = logging.getLogger(__name__)

BACKBONE = "backbone.body."  # parameter-name prefix of the binary subnet inside the detector


class DetectObjective(SameNetwork, nn.Module):
    """The loop's objective: Faster R-CNN's summed losses, the parts logged; mAP as validation."""

    def __init__(self, detector: nn.Module, config: DetectConfig) -> None:
        super().__init__()
        self.trainable = detector
        self.lr_scales = {BACKBONE: config.backbone_lr_mult}

    def forward(self, images: list[Tensor], targets: list[dict], plan: None) -> tuple[Tensor, dict[str, Tensor]]:
        losses = self.trainable(images, targets)
        return sum(losses.values()), {key: value.detach() for key, value in losses.items()}

    def evaluate(self, calib: list, val: CocoImages) -> dict[str, float]:
        return {f"val_{key}": value for key, value in evaluate_detector(self.trainable, val).items()}


def train_detector(run: Run, arch: Arch, config: DetectConfig, out_dir: Path, resume: bool = False) -> dict:
    """Train (or resume) a detector over ``arch`` of ``run``'s supernet into ``out_dir``; the last epoch's metrics."""
    d = init_distributed(config.threads)
    with claim(out_dir, resume, "detector", d.main) as resume:
        return _train(run, arch, config, out_dir, resume, d)


def _train(run: Run, arch: Arch, config: DetectConfig, out_dir: Path, resume: bool, d: Dist) -> dict:
    data = load_data(config.data, config.hflip)
    if config.val_images:
        data.val.ids = data.val.ids[: config.val_images]
    mean, std = normalization(run.config)
    subnet = run.supernet.extract(arch)  # the paper's initialisation: the supernet's weights
    info = DetectorInfo(str(run.run_dir), arch, subnet.options, data.categories, mean, std)
    subnet.set_mode(Mode.BWBA)
    torch.manual_seed(config.seed)
    detector = build_detector(subnet, info.num_classes, config, mean, std)
    loop_data = LoopData(data.train, [], data.val, {"arch": arch.to_json()}, collate)

    def prepare() -> None:
        config.save(out_dir / CONFIG)
        save_info(info, out_dir)
        _log.info(
            f"training a detector on {data.root}: {len(data.train)} train / {len(data.val)} val images, "
            f"{len(data.categories)} classes, backbone {arch}"
        )

    return train_loop(DetectObjective(detector, config), config, loop_data, out_dir, d, resume, prepare)
