"""One detector training configuration: defaults, a TOML file, then command-line overrides.

The detector is torchvision's Faster R-CNN with an FPN over the last stages of a binary subnet
(:mod:`hwnas.detect.model`). The defaults are for the built-in synthetic set on a small shared CPU;
docs/detection.md gives the probes behind them and the settings for COCO.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError
from hwnas.files import atomic_write_text
from hwnas.train.config import at_least_one


@dataclass(frozen=True)
class DetectConfig:
    """Every setting of a detector training run."""

    data: str = "synthetic"  # "synthetic" or "coco:PATH" (a COCO 2017 tree)
    epochs: int = 6
    batch_size: int = 4  # images per step, all processes together
    lr: float = 2e-3  # FPN and heads; the backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 1.0
    weight_decay: float = 5e-6
    warmup_epochs: float = 0.25
    min_size: int = 96  # torchvision's resizing: shorter side to min_size, longer side at most max_size
    max_size: int = 96
    first_stage: int = 3  # FPN over stages first_stage..5 of the subnet (1-based)
    anchor_size: int = 16  # anchor side on the first FPN level, doubling per level
    fpn_channels: int = 64
    head_size: int = 256  # width of the box head's two fully connected layers
    proposals: int = 100  # RPN proposals kept after NMS, training and testing
    roi_samples: int = 128  # proposals per image the box head trains on
    hflip: bool = False  # random horizontal flips in training
    seed: int = 0  # head initialisation, data order, sampling
    workers: int = 0  # data-loading processes
    threads: int = 1  # torch intra-op threads per process (0: torch's default)
    checkpoint_minutes: float = 10.0
    eval_every: int = 3  # epochs between validations (mAP on val; each costs ~20 s of the 20-minute budget)
    val_images: int = 0  # validate during training on the first N val images (0: all)
    max_steps: int = 0  # stop (with a checkpoint) after this many steps in total; 0 = no limit

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    def check(self, where: str) -> None:
        """Raise one HwnasError naming the first bad value."""
        if self.data != "synthetic" and not self.data.startswith("coco:"):
            raise HwnasError(f"{where}: unknown detection data {self.data!r}; use 'synthetic' or 'coco:PATH'")
        positive = ("epochs", "batch_size", "min_size", "max_size", "anchor_size", "fpn_channels", "head_size")
        at_least_one(self, (*positive, "proposals", "roi_samples", "eval_every"), where)
        if not 1 <= self.first_stage <= 5:
            raise HwnasError(f"{where}: first_stage must be a stage 1..5, got {self.first_stage}")
        if self.min_size > self.max_size:
            raise HwnasError(f"{where}: min_size {self.min_size} exceeds max_size {self.max_size}")
        if self.lr <= 0 or self.backbone_lr_mult < 0:
            raise HwnasError(f"{where}: lr must be positive and backbone_lr_mult not negative")
