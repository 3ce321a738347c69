"""The built-in ``clutter`` task: seeded, disjoint digit pools per split, cached, wired into training data."""

from __future__ import annotations

import torch

from hwnas.train import clutter
from hwnas.train.config import TrainConfig
from hwnas.train.data import build_splits, clutter_cached, normalization


def _small(monkeypatch):
    monkeypatch.setattr(clutter, "TRAIN", 48)
    monkeypatch.setattr(clutter, "VAL", 16)
    monkeypatch.setattr(clutter, "TEST", 16)


def test_generation_is_seeded_and_in_range(monkeypatch):
    _small(monkeypatch)
    images, labels = clutter.clutter_data(24, 0)
    again, labels_again = clutter.clutter_data(24, 0)
    other, _ = clutter.clutter_data(24, 1)
    assert {k: tuple(v.shape) for k, v in images.items()} == {
        "train": (48, 3, 24, 24),
        "val": (16, 3, 24, 24),
        "test": (16, 3, 24, 24),
    }
    assert all(torch.equal(images[k], again[k]) and torch.equal(labels[k], labels_again[k]) for k in images)
    assert not torch.equal(images["train"], other["train"])
    assert all(float(x.min()) >= 0 and float(x.max()) <= 1 for x in images.values())
    assert set(labels["train"].tolist()) <= set(range(100))
    assert len(set(labels["train"].tolist())) > 20  # pairs: left x 10 + right


def test_the_class_is_the_pair_of_digits_left_then_right(monkeypatch):
    """Each half of an image holds one digit: the same left digit with another right one changes
    only the right half, and the label reads left x 10 + right."""
    _small(monkeypatch)
    pool = torch.zeros(2, 1, 8, 8)
    pool[0, 0, :, 3:5] = 1.0  # a bar: ink in the middle columns
    labels = torch.tensor([3, 7])
    monkeypatch.setattr(clutter, "FRAGMENTS", (0, 0))
    monkeypatch.setattr(clutter, "NOISE", 0.0)
    images, targets = clutter.clutter_split(pool, labels, 64, 32, seed=0)
    assert set(targets.tolist()) <= {33, 37, 73, 77} and len(set(targets.tolist())) == 4
    ink = (images - clutter.BACKGROUND).abs().sum((1, 2))  # [N, W]: ink per column
    left_ink, right_ink = ink[:, :16].sum(1), ink[:, 16:].sum(1)
    for target, li, ri in zip(targets.tolist(), left_ink, right_ink, strict=True):
        assert bool(li > 1) is (target // 10 == 3), target  # the bar (label 3) has ink, the blank (7) none
        assert bool(ri > 1) is (target % 10 == 3), target


def test_splits_draw_from_disjoint_digit_pools(monkeypatch):
    """Each split's digit pool is its own part of scikit-learn's images (no instance shared)."""
    _small(monkeypatch)
    seen = {}
    real = clutter.clutter_split

    def spy(pool, labels, count, resolution, seed):
        seen[seed] = {tuple(p.flatten().tolist()) for p in pool}
        return real(pool, labels, count, resolution, seed)

    monkeypatch.setattr(clutter, "clutter_split", spy)
    clutter.clutter_data(16, 0)
    pools = list(seen.values())
    assert len(pools) == 3 and sum(len(p) for p in pools) > 1700
    assert not (pools[0] & pools[1]) and not (pools[0] & pools[2]) and not (pools[1] & pools[2])


def test_training_data_is_cached_and_normalised(monkeypatch, tmp_path):
    _small(monkeypatch)
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path))
    config = TrainConfig(data="clutter", resolution=16)
    splits = build_splits(config)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.num_classes) == (48, 16, 16, 100)
    cached = list((tmp_path / "datasets").glob("clutter-*.pt"))
    assert len(cached) == 1
    monkeypatch.setattr(clutter, "clutter_data", lambda *a: (_ for _ in ()).throw(AssertionError("regenerated")))
    images, _ = clutter_cached(16, 0)
    assert torch.equal(splits.test.tensors[0], (images["test"] - 0.5) / 0.25)
    assert normalization(config) == ((0.5,) * 3, (0.25,) * 3)
