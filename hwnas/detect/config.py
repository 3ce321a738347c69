"""One detector training configuration: defaults, a TOML file, then command-line overrides.

The detector is torchvision's Faster R-CNN with an FPN over the last stages of a binary subnet
(see :mod:`hwnas.detect.model`). The defaults are for the built-in synthetic set (2,000 training
canvases of 96 x 96 with 1-4 digits of 16-36 pixels, :mod:`hwnas.detect.synthetic`) on a shared
2-core CPU, aiming at mAP@0.5 >= 0.8 within 20 minutes of training with the largest subnet of the
default (quarter-width) supernet:

- ``min_size = max_size = 96``: the canvas as it is (no resizing). A step of 4 canvases took
  0.38 s at 96 pixels and 0.48 s at 128 with the same digit sizes, and 96 scored as well.
- ``first_stage = 3``: FPN levels at strides 8, 16, 32 plus a max-pooled level at 64; with
  ``anchor_size = 16`` the anchors are 16, 32, 64, 128 pixels (aspect ratios 0.5, 1, 2), which
  covers digit boxes of about 8-36 pixels. Box features are RoI-aligned from the stride-8 level
  (torchvision's scale rule puts every box under 112 pixels there); pooling from the stride-32
  level instead scored near zero, and adding the stride-4 level did not help in 300 steps.
- ``fpn_channels = 64``, ``head_size = 256`` (torchvision: 256 and 1024), ``proposals = 100`` kept
  after the RPN's NMS (torchvision: 2000 in training, 1000 in testing), ``roi_samples = 128``
  proposals per image trained in the box head (torchvision: 512): a canvas holds at most four
  objects, and the box head's first layer (``fpn_channels x 7 x 7 -> head_size``) per proposal is
  the head's biggest cost.
- Adam (the supernet's optimizer), linear warm-up over a quarter epoch, cosine decay; batch 4 and
  ``lr = 2e-3``. ``backbone_lr_mult = 1.0``: the inherited backbone (the paper initialises it from
  the supernet) learns at the heads' rate. In single-seed 300-step probes (from a supernet trained
  for only 3 minutes) a slower backbone localised worse (class-agnostic AP50 0.40 at 0.3 vs 0.68
  at 1.0) and 0.1 was worse still; batch 4 beat batch 8 at equal time, lr 2e-3 beat 1e-3.
- ``epochs = 6``: 3,000 steps, about 19 minutes at 0.38 s per step (one thread, with two other
  jobs on the 2-core CPU). Localisation is learnt early (class-agnostic AP50 0.6-0.8 after 300
  steps, binary or full-precision backbone alike); telling the ten digits apart takes the time.
- ``hflip = false``: a mirrored digit is not a digit; switch it on for natural images.

For COCO (``data = "coco:PATH"``) use the paper's sizes, ``min_size = 800``, ``max_size = 1333``,
``first_stage = 2``, ``anchor_size = 32`` (torchvision's 32-512), ``fpn_channels = 256``,
``head_size = 1024``, ``proposals = 1000``, ``roi_samples = 512``, ``hflip = true``, a lower
``backbone_lr_mult`` for a long schedule, and a supernet trained on ImageNet (``imagefolder``) at
full width. ``threads = 1``, as for supernet training (see :mod:`hwnas.train.config`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError
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
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

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
