"""The default detection data: scikit-learn's digits pasted on black canvases, written as a COCO 2017 tree.

No download: each canvas holds a few real 8x8 handwritten digits, each upsampled bilinearly (as
the classification data is) to a random size and pasted at a random position, their tight boxes
(around the digit's non-zero pixels) at least ``gap`` pixels apart, so no two digits touch and
every box holds exactly one digit's ink. Category ids are 1..10 for the digits 0..9. Train
canvases use one half of the digit images and val canvases the other half (a seeded permutation).

The tree (``train2017/``, ``val2017/`` PNGs and ``annotations/instances_{train,val}2017.json``) is
the layout ``--data coco:PATH`` reads, so the synthetic set runs the same code as COCO. It is
generated once under the data directory, in a temporary directory renamed into place when
complete (several processes may race; the content is deterministic), and regenerated when files
are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hwnas.files import atomic_write_json
from hwnas.paths import data_dir

SPLITS = ("train", "val")
COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class SyntheticSpec:
    """What the generated set looks like; every value is part of its directory name."""

    canvas: int = 96  # square canvas side, pixels
    train: int = 2000  # canvases per split
    val: int = 200
    min_digits: int = 1  # digits per canvas
    max_digits: int = 4
    min_size: int = 16  # side of an upsampled digit, pixels (the classification data is 32)
    max_size: int = 36
    gap: int = 2  # minimum pixels between two digits' boxes
    seed: int = 0

    @property
    def name(self) -> str:
        return (
            f"digits-c{self.canvas}-n{self.train}-{self.val}-d{self.min_digits}-{self.max_digits}"
            f"-s{self.min_size}-{self.max_size}-g{self.gap}-seed{self.seed}"
        )

    def count(self, split: str) -> int:
        return {"train": self.train, "val": self.val}[split]


DEFAULT = SyntheticSpec()


def image_dir(split: str) -> str:
    return f"{split}2017"


def annotation_file(split: str) -> str:
    return f"annotations/instances_{split}2017.json"


def ensure_synthetic(spec: SyntheticSpec = DEFAULT, root: Path | None = None) -> Path:
    """The COCO tree of ``spec`` (under ``root``, default ``<data dir>/detect``), generated if absent or incomplete."""
    parent = (root if root is not None else data_dir() / "detect").resolve()
    target = parent / spec.name
    if is_complete(target, spec):
        return target
    parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)  # incomplete: a complete tree is only ever renamed into place
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=parent))
    try:
        write_tree(spec, tmp)
        os.rename(tmp, target)
    except OSError:
        if not is_complete(target, spec):  # not another process's finished copy
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def is_complete(root: Path, spec: SyntheticSpec) -> bool:
    """The marker is there, describes ``spec``, and every split has its annotations and all its images."""
    try:
        if json.loads((root / COMPLETE).read_text()) != asdict(spec):
            return False
        for split in SPLITS:
            names = {image["file_name"] for image in json.loads((root / annotation_file(split)).read_text())["images"]}
            if len(names) != spec.count(split) or not names <= set(os.listdir(root / image_dir(split))):
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def write_tree(spec: SyntheticSpec, root: Path) -> None:
    """Generate both splits of ``spec`` into ``root`` (the marker last)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(spec.seed).permutation(len(digits.target))
    halves = {"train": order[: len(order) // 2], "val": order[len(order) // 2 :]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for number, split in enumerate(SPLITS):
        rng = np.random.default_rng([spec.seed, number])
        pool = halves[split]
        (root / image_dir(split)).mkdir()
        images, annotations = [], []
        for image_id in range(1, spec.count(split) + 1):
            canvas, boxes, labels = draw_canvas(spec, rng, digits.images[pool], digits.target[pool])
            file_name = f"{image_id:06d}.png"
            Image.fromarray(canvas).save(root / image_dir(split) / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": spec.canvas, "height": spec.canvas})
            for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
                w, h = x1 - x0, y1 - y0
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(label) + 1,
                        "bbox": [x0, y0, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": "hwnas synthetic digits detection set", **asdict(spec)},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)],
        }
        atomic_write_json(root / annotation_file(split), coco, indent=None)
    atomic_write_json(root / COMPLETE, asdict(spec), indent=None)


def upsample(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (0..16) as a ``size`` x ``size`` uint8 patch, bilinear as in the classification data."""
    import torch
    import torch.nn.functional as F

    pixels = torch.tensor(digit, dtype=torch.float32)[None, None] / 16.0
    patch = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)[0, 0]
    return (patch.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def draw_canvas(
    spec: SyntheticSpec, rng: np.random.Generator, images: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int]]:
    """One canvas, its digits' tight boxes (x0, y0, x1, y1; x1, y1 exclusive) and their digits.

    A digit whose box would come within ``gap`` pixels of an earlier one is drawn again
    elsewhere (at most 100 tries, so a crowded canvas may hold fewer digits than drawn).
    """
    canvas = np.zeros((spec.canvas, spec.canvas), dtype=np.uint8)
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    wanted = int(rng.integers(spec.min_digits, spec.max_digits + 1))
    for _ in range(100):
        if len(boxes) == wanted:
            break
        index = int(rng.integers(len(targets)))
        size = int(rng.integers(spec.min_size, spec.max_size + 1))
        patch = upsample(images[index], size)
        rows, cols = np.nonzero(patch)
        top, left = (int(v) for v in rng.integers(0, spec.canvas - size + 1, size=2))
        box = (left + int(cols.min()), top + int(rows.min()), left + int(cols.max()) + 1, top + int(rows.max()) + 1)
        if any(_near(box, other, spec.gap) for other in boxes):
            continue
        region = canvas[top : top + size, left : left + size]
        np.maximum(region, patch, out=region)
        boxes.append(box)
        labels.append(int(targets[index]))
    return canvas, boxes, labels


def _near(a: tuple[int, ...], b: tuple[int, ...], gap: int) -> bool:
    """Whether two boxes come closer than ``gap`` pixels (or overlap)."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap
