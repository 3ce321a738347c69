"""Detections on one image, and the image with its boxes drawn (torchvision's ``draw_bounding_boxes``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

from hwnas.detect.store import Detector
from hwnas.errors import HwnasError


def read_image(path: Path) -> torch.Tensor:
    """An image file as uint8 RGB [3, H, W]."""
    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert("RGB"))
    except FileNotFoundError:
        raise HwnasError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise HwnasError(f"cannot read the image {path}: {exc}") from None


def predict(detector: Detector, image: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Detections scoring at least ``threshold`` on a uint8 image: box (x1, y1, x2, y2), category, score."""
    with torch.inference_mode():
        out = detector.model.eval()([image.float() / 255])[0]
    keep = out["scores"] >= threshold
    names = detector.info.categories
    return [
        {"box": [round(v, 2) for v in box], "category_id": label, "name": names.get(label, str(label)), "score": score}
        for box, label, score in zip(
            out["boxes"][keep].tolist(), out["labels"][keep].tolist(), out["scores"][keep].tolist(), strict=True
        )
    ]


def draw(image: torch.Tensor, detections: list[dict[str, Any]], out: Path) -> Path:
    """``image`` with a labelled box per detection, written to ``out`` (format from its suffix)."""
    boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32).reshape(-1, 4)
    labels = [f"{d['name']} {d['score']:.2f}" for d in detections]
    drawn = draw_bounding_boxes(image, boxes, labels, colors="red", width=1) if detections else image
    try:
        to_pil_image(drawn).save(out)
    except (OSError, ValueError) as exc:
        raise HwnasError(f"cannot write {out}: {exc}") from None
    return out
