"""A detector directory: what rebuilds the network (``detector.json``) and loading a trained one.

``detector.json`` holds the supernet run it came from, the backbone's arch, the model options
(Bi-Transformation, weight normalisation), the categories (COCO id -> name) and the input
normalisation; with ``config.json`` it rebuilds the network without the supernet, and the
checkpoint fills in the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torchvision.models.detection import FasterRCNN

from hwnas.arch import Arch
from hwnas.detect.config import DetectConfig
from hwnas.detect.model import build_detector
from hwnas.errors import HwnasError
from hwnas.files import atomic_write_json
from hwnas.model import BinaryNet, ModelOptions, Skeleton
from hwnas.train.checkpoint import FILENAME, load_checkpoint
from hwnas.train.run import read_config

INFO = "detector.json"


@dataclass(frozen=True)
class DetectorInfo:
    supernet: str  # the supernet's run directory
    arch: Arch
    options: ModelOptions
    categories: dict[int, str]  # COCO category id (= label) -> name
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return max(self.categories) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "supernet": self.supernet,
            "arch": self.arch.to_json(),
            "options": asdict(self.options),
            "categories": {str(k): v for k, v in self.categories.items()},
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DetectorInfo:
        return cls(
            obj["supernet"],
            Arch.from_json(obj["arch"]),
            ModelOptions(**obj["options"]),
            {int(k): v for k, v in obj["categories"].items()},
            tuple(obj["image_mean"]),
            tuple(obj["image_std"]),
        )


def save_info(info: DetectorInfo, det_dir: Path) -> None:
    atomic_write_json(det_dir / INFO, info.to_json(), indent=1)


def read_info(det_dir: Path) -> DetectorInfo:
    if not det_dir.is_dir():
        raise HwnasError(f"detector directory not found: {det_dir}")
    path = det_dir / INFO
    try:
        return DetectorInfo.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise HwnasError(f"{det_dir} is not a detector directory (no {INFO})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise HwnasError(f"{path}: not a valid detector description ({exc})") from None


@dataclass
class Detector:
    """A trained detector, in eval mode on the CPU."""

    det_dir: Path
    config: DetectConfig
    info: DetectorInfo
    model: FasterRCNN
    epochs_done: int


def load_detector(det_dir: str | Path) -> Detector:
    """The detector of ``det_dir`` with the weights of its last checkpoint."""
    det_dir = Path(det_dir)
    info = read_info(det_dir)
    config = read_config(det_dir, DetectConfig())
    state = load_checkpoint(det_dir / FILENAME)
    skeleton = BinaryNet(Skeleton.of_arch(info.arch), 1, info.options, active=info.arch)  # its classifier is unused
    model = build_detector(skeleton, info.num_classes, config, info.image_mean, info.image_std)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise HwnasError(f"{det_dir / FILENAME}: does not fit the detector of {INFO} ({str(exc)[:160]})") from None
    return Detector(det_dir, config, info, model.eval(), state["position"]["epoch"])
