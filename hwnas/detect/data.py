"""Detection data: a COCO 2017 tree read with torchvision's ``CocoDetection``, as Faster R-CNN wants it.

``--data coco:PATH`` names a tree with ``train2017/``, ``val2017/`` and
``annotations/instances_{train,val}2017.json``; ``synthetic`` (the default) generates such a tree
from scikit-learn's digits (:mod:`hwnas.detect.synthetic`). An item is a float image in [0, 1]
(RGB, [3, H, W]) and a target dict: ``boxes`` (x1, y1, x2, y2, float32), ``labels`` (the COCO
category ids themselves, as torchvision's COCO detectors use them: the model has max id + 1
classes, 0 is the background) and ``image_id``. Crowd annotations and boxes under one pixel wide
or high are left out of training targets (torchvision's reference recipe); evaluation reads the
annotation file itself.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets import CocoDetection
from torchvision.transforms.functional import hflip, pil_to_tensor

from hwnas.detect.synthetic import SPLITS, annotation_file, ensure_synthetic, image_dir
from hwnas.errors import HwnasError


class CocoImages(CocoDetection):
    """``CocoDetection`` whose items are (image tensor, target dict), with random flips when asked."""

    def __init__(self, root: Path, split: str, flip: bool = False) -> None:
        with redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            super().__init__(str(root / image_dir(split)), str(root / annotation_file(split)))
        self.flip = flip
        check_annotations(self.coco.dataset)

    def _load_target(self, image_id: int) -> dict[str, Any]:
        return {"image_id": image_id, "annotations": super()._load_target(image_id)}

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        try:
            image, target = super().__getitem__(index)
            return to_sample(image, target, self.flip)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: unreadable, truncated or not an image
            name = self.coco.loadImgs(self.ids[index])[0].get("file_name", f"id {self.ids[index]}")
            raise HwnasError(f"{Path(self.root) / name}: cannot decode the image ({exc})") from None

    @property
    def categories(self) -> dict[int, str]:
        return {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}


def check_annotations(dataset: Any) -> None:
    """Raise ValueError unless ``dataset`` looks like COCO instances (what training reads of it)."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"no {key!r} list")
    for ann in dataset["annotations"]:
        if not isinstance(ann, dict):
            raise ValueError(f"an annotation is not an object: {str(ann)[:60]}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            raise ValueError(f"annotation {ann.get('id')}: bbox must be [x, y, width, height], got {bbox!r}")
        if not isinstance(ann.get("category_id"), int):
            raise ValueError(
                f"annotation {ann.get('id')}: category_id must be an integer, got {ann.get('category_id')!r}"
            )


def to_sample(image: Image.Image, target: dict[str, Any], flip: bool) -> tuple[Tensor, dict[str, Any]]:
    """The image as floats in [0, 1] and its non-crowd boxes of at least one pixel, flipped with chance 1/2."""
    pixels = pil_to_tensor(image.convert("RGB")).float() / 255
    anns = [a for a in target["annotations"] if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    if flip and float(torch.rand(())) < 0.5:
        pixels = hflip(pixels)
        boxes[:, [0, 2]] = pixels.shape[-1] - boxes[:, [2, 0]]
    labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    return pixels, {"boxes": boxes, "labels": labels, "image_id": target["image_id"]}


def collate(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Images of different sizes stay a list (Faster R-CNN batches them itself)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


@dataclass
class DetectionData:
    """The training split (flipped as configured) and the validation split of one COCO tree."""

    root: Path
    train: CocoImages
    val: CocoImages

    @property
    def categories(self) -> dict[int, str]:
        return self.train.categories

    @property
    def num_classes(self) -> int:
        """Max category id + 1: labels are the category ids, 0 is the background."""
        return max(self.categories) + 1


def coco_tree(spec: str) -> Path:
    """The COCO tree a data spec names (generating the synthetic one when needed), checked."""
    if spec == "synthetic":
        return ensure_synthetic()
    if not spec.startswith("coco:"):
        raise HwnasError(f"unknown detection data {spec!r}; use 'synthetic' or 'coco:PATH'")
    root = Path(spec.split(":", 1)[1]).expanduser()
    if not root.is_dir():
        raise HwnasError(f"COCO directory not found: {root}")
    for split in SPLITS:
        for part in (image_dir(split), annotation_file(split)):
            if not (root / part).exists():
                raise HwnasError(
                    f"{root}: no {part} (expected a COCO 2017 tree: train2017/, val2017/, "
                    "annotations/instances_train2017.json, annotations/instances_val2017.json)"
                )
    return root


def load_data(spec: str, flip: bool = False) -> DetectionData:
    """Both splits of the tree ``spec`` names."""
    root = coco_tree(spec)
    return DetectionData(root, open_split(root, "train", flip), open_split(root, "val"))


def open_split(root: Path, split: str, flip: bool = False) -> CocoImages:
    try:
        return CocoImages(root, split, flip)
    except AssertionError:  # pycocotools asserts that the top level is an object
        raise HwnasError(
            f"{root / annotation_file(split)}: not COCO annotations (the top level is not an object)"
        ) from None
    except KeyError as exc:  # pycocotools indexes images, annotations and categories by these keys
        where = root / annotation_file(split)
        raise HwnasError(f"{where}: not usable COCO annotations (an entry lacks the key {exc})") from None
    except (OSError, ValueError, TypeError) as exc:
        where = root / annotation_file(split)
        raise HwnasError(f"{where}: not usable COCO annotations ({exc})") from None
