"""Datasets and their train / val / test splits, chosen by a spec string.

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (no download), scaled to [0, 1],
  upsampled bilinearly to the configured resolution, three equal channels, normalised; a
  stratified 70 / 15 / 15 split with a fixed seed. No augmentation: a digit is not flip-invariant
  and the tensors stay in memory, which also makes resume bit-exact.
- ``clutter``: pairs of the same digits (100 classes) under affine warps, clutter and noise
  (:mod:`hwnas.train.clutter`): a task on which accuracy grows with a subnet's capacity;
  generated once per resolution and split seed and cached in the data directory.
- ``imagefolder:PATH``: ``PATH/train`` (or ``PATH`` itself) as the training tree, with
  ``val_per_class`` images per class held out for the search (the paper's 50); the test split is
  ``PATH/val`` when it exists. Train: RandomResizedCrop + horizontal flip; eval: Resize(256/224 of
  the resolution) + CenterCrop.

The split indices are saved in the run directory (``splits.json``) so every later command sees
exactly the same images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from hwnas.errors import HwnasError
from hwnas.files import atomic_write_text
from hwnas.train.config import TrainConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NASBNN_MEAN_STD = (0.5, 0.5, 0.5)  # the authors' ImageNet normalisation (convention "nasbnn")


@dataclass
class Splits:
    """Training images, the held-out search split (val) and the final-report split (test)."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    indices: dict[str, list[int]]

    def get(self, name: str) -> Dataset:
        split = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if split is None:
            raise HwnasError(f"this dataset has no {name!r} split")
        return split


def build_splits(config: TrainConfig, indices: dict[str, list[int]] | None = None) -> Splits:
    """The configured dataset's splits; ``indices`` (from a run directory) fixes them exactly."""
    if config.data == "digits":
        return _digits(config, indices)
    if config.data == "clutter":
        return _clutter(config)
    if config.data.startswith("imagefolder:"):
        return _imagefolder(Path(config.data.split(":", 1)[1]), config, indices)
    if config.data == "none":
        raise HwnasError("this run has no data: pass --data imagefolder:PATH")
    raise HwnasError(f"unknown dataset {config.data!r}; use 'digits', 'clutter' or 'imagefolder:PATH'")


def save_indices(splits: Splits, path: Path) -> None:
    atomic_write_text(path, json.dumps(splits.indices) + "\n")


def load_indices(path: Path) -> dict[str, list[int]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise HwnasError(f"cannot read the split indices {path}: {exc}") from None


def _digits(config: TrainConfig, indices: dict[str, list[int]] | None) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = _digit_pixels(digits.images, config.resolution)
    images = ((images - images.mean()) / images.std()).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    if indices is None:
        every = np.arange(len(labels))
        train, rest = train_test_split(every, test_size=0.3, stratify=digits.target, random_state=config.split_seed)
        val, test = train_test_split(rest, test_size=0.5, stratify=digits.target[rest], random_state=config.split_seed)
        indices = {
            name: sorted(int(i) for i in part) for name, part in (("train", train), ("val", val), ("test", test))
        }
    full = TensorDataset(images, labels)
    return Splits(*(Subset(full, indices[n]) for n in ("train", "val", "test")), 10, indices)


def _clutter(config: TrainConfig) -> Splits:
    """The generated splits (every image of each: the splits are disjoint by construction), normalised."""
    from hwnas.train.clutter import CLASSES as CLUTTER_CLASSES

    images, labels = clutter_cached(config.resolution, config.split_seed)
    mean, std = CLUTTER_MEAN, CLUTTER_STD
    norm = [(images[n] - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1) for n in images]
    parts = {n: TensorDataset(x, labels[n]) for n, x in zip(images, norm, strict=True)}
    indices = {n: list(range(len(labels[n]))) for n in labels}
    return Splits(parts["train"], parts["val"], parts["test"], CLUTTER_CLASSES, indices)


CLUTTER_MEAN, CLUTTER_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
"""Fixed input normalisation of ``clutter`` images (pixels in [0, 1], about uniform colours)."""


def clutter_cached(resolution: int, split_seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`hwnas.train.clutter.clutter_data`, generated once and kept in the data directory."""
    from hwnas.files import atomic_path
    from hwnas.paths import data_dir
    from hwnas.train.clutter import VERSION, clutter_data

    path = data_dir() / "datasets" / f"clutter-{VERSION}-r{resolution}-s{split_seed}.pt"
    if path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            return saved["images"], saved["labels"]
        except Exception:  # a damaged cache is generated again
            pass
    images, labels = clutter_data(resolution, split_seed)
    with atomic_path(path) as tmp:
        torch.save({"images": images, "labels": labels}, tmp)
    return images, labels


def _digit_pixels(images: np.ndarray, resolution: int) -> torch.Tensor:
    """scikit-learn's 8x8 digits (0..16) as [N, 1, R, R] floats in [0, 1], upsampled bilinearly."""
    pixels = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    return F.interpolate(pixels, size=resolution, mode="bilinear", align_corners=False)


def normalization(config: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (of pixels in [0, 1]) that the configured data's inputs are normalised with.

    A network transferred to other images (a detector's backbone) normalises its inputs the same way.
    """
    if config.convention == "nasbnn":
        return NASBNN_MEAN_STD, NASBNN_MEAN_STD
    if config.data == "clutter":
        return CLUTTER_MEAN, CLUTTER_STD
    if config.data != "digits":
        return IMAGENET_MEAN, IMAGENET_STD
    from sklearn.datasets import load_digits

    pixels = _digit_pixels(load_digits().images, config.resolution)
    return (float(pixels.mean()),) * 3, (float(pixels.std()),) * 3


def _imagefolder(root: Path, config: TrainConfig, indices: dict[str, list[int]] | None) -> Splits:
    from torchvision import datasets, transforms

    if not root.is_dir():
        raise HwnasError(f"dataset directory not found: {root}")
    train_dir = root / "train" if (root / "train").is_dir() else root
    normalize = transforms.Normalize(*normalization(config))
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(config.resolution),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize(round(config.resolution * 256 / 224)),
            transforms.CenterCrop(config.resolution),
            transforms.ToTensor(),
            normalize,
        ]
    )
    try:
        train_full = datasets.ImageFolder(str(train_dir), transform=train_tf)
        eval_full = datasets.ImageFolder(str(train_dir), transform=eval_tf)
        test = datasets.ImageFolder(str(root / "val"), transform=eval_tf) if (root / "val").is_dir() else None
    except (FileNotFoundError, OSError) as exc:
        raise HwnasError(f"cannot read the image folder {root}: {exc}") from None
    if indices is None:
        train, val = _carve(train_full.targets, config.val_per_class, config.split_seed)
        indices = {"train": train, "val": val}
    return Splits(
        Subset(train_full, indices["train"]), Subset(eval_full, indices["val"]), test, len(train_full.classes), indices
    )


def _carve(targets: list[int], per_class: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the training images left and of ``per_class`` held out per class (seeded)."""
    rng = np.random.default_rng(seed)
    targets_np = np.asarray(targets)
    held = set()
    for c in np.unique(targets_np):
        members = np.flatnonzero(targets_np == c)
        held.update(int(i) for i in rng.permutation(members)[: min(per_class, len(members) // 2)])
    return [i for i in range(len(targets)) if i not in held], sorted(held)
