"""``clutter``: a built-in task with headroom, generated offline and seeded (nothing downloaded).

scikit-learn's digits are too easy for the supernet: nearly every subnet is as accurate as the
largest, so a search has nothing to trade. Here each image shows **two** of those handwritten
digits side by side, each squeezed to half the width, and the class is the pair (left x 10 +
right: 100 classes), under nuisance variation that costs a small binary network more than a large
one: a random affine warp of each digit (rotation, shear, anisotropic scale, position), fragments
of other digits as clutter (half planes of their strokes) and pixel noise, light strokes on a dark
ground, at the configured resolution. The three splits draw their digits from disjoint parts of
scikit-learn's 1,797 images (60 / 20 / 20 %, stratified), so test images show digit instances
never seen in training.

Why pairs: once the supernet trained stably (residual branches started at 0,
:mod:`hwnas.train.init`) one cluttered digit was read by the smallest subnet nearly as well as
by the largest (test top-1 94.8 against 97.4 %); a pair is right only when both digits are, so
the two subnets' errors compound, and 100 classes ask more of a narrow network (81.3 against
93.7 %, docs/training.md). How hard one digit may be was measured too: with coloured grounds
and strokes the supernet stayed at chance for its first 500 steps; the constants below are a
level it learns in the default budget.

Everything is generated on the CPU with torch's ``affine_grid``/``grid_sample`` from one
``torch.Generator`` per split, so the same seed gives the same tensors on every machine run with
the same torch build. Sizes: ``TRAIN``, ``VAL`` and ``TEST`` images (about 10 s to generate;
:func:`hwnas.train.data.clutter_cached` keeps them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

TRAIN, VAL, TEST = 16_000, 2_000, 2_000
VERSION = 3
"""Bump whenever the generated images change: cached copies of older versions are not read."""
CLASSES = 100  # a pair of digits: left x 10 + right
FRAGMENTS = (2, 3)  # clutter fragments per image, inclusive range
DIGIT_SCALE = (0.85, 1.0)  # the digit's height as a fraction of the image
FRAGMENT_SCALE = (0.35, 0.7)
NOISE = 0.1
CLUTTER_OPACITY = 0.5
ANGLE = 0.2  # largest rotation, radians either way
SHEAR = 0.1
ASPECT = (0.9, 1.1)
DIGIT_SHIFT = 0.05  # largest offset of the digit's centre, as a fraction of the half-image
BACKGROUND, INK = 0.1, 0.9  # grey levels of the ground and of the clutter strokes


def clutter_split(pool: torch.Tensor, labels: torch.Tensor, count: int, resolution: int, seed: int) -> tuple:
    """``count`` images [N, 3, R, R] in [0, 1] and their labels (pairs of digits drawn from ``pool`` [M, 1, 8, 8])."""
    gen = torch.Generator().manual_seed(seed)
    left, right = (torch.randint(len(pool), (count,), generator=gen) for _ in range(2))
    halves = [
        F.interpolate(
            _warp(pool[pick], resolution, DIGIT_SCALE, DIGIT_SHIFT, gen), (resolution, resolution // 2), mode="bilinear"
        )
        for pick in (left, right)
    ]
    digit = torch.cat(halves, 3)  # a canvas of odd width leaves its last column empty
    if digit.shape[3] < resolution:
        digit = F.pad(digit, (0, resolution - digit.shape[3]))
    image = _background(count, resolution)
    for k in range(FRAGMENTS[1]):
        present = (torch.rand(count, generator=gen) < _fragment_odds(k)).float().view(-1, 1, 1, 1)
        other = pool[torch.randint(len(pool), (count,), generator=gen)]
        fragment = _warp(other, resolution, FRAGMENT_SCALE, 0.6, gen) * _crop_mask(count, resolution, gen)
        stroke = CLUTTER_OPACITY * fragment * present
        image = image * (1 - stroke) + INK * stroke
    # the digit contrasts with the background: the complement of its mean colour, jittered
    ink = 1 - image.mean((2, 3), keepdim=True)
    ink = (ink + 0.15 * torch.randn(count, 3, 1, 1, generator=gen)).clamp(0, 1)
    image = image * (1 - digit) + ink * digit
    image = image + NOISE * torch.randn(image.shape, generator=gen)
    return image.clamp(0, 1), labels[left] * 10 + labels[right]


def _fragment_odds(k: int) -> float:
    """Chance that fragment k is drawn: the first FRAGMENTS[0] always, the rest half the time."""
    return 1.0 if k < FRAGMENTS[0] else 0.5


def _warp(pool: torch.Tensor, resolution: int, scale: tuple[float, float], shift: float, gen: torch.Generator):
    """Each 8x8 digit under a random affine map into an R x R canvas (ink in [0, 1], 0 outside)."""
    n = len(pool)
    size = _uniform(n, *scale, gen)
    aspect = _uniform(n, *ASPECT, gen)
    angle = _uniform(n, -ANGLE, ANGLE, gen)
    shear = _uniform(n, -SHEAR, SHEAR, gen)
    sx, sy = 1 / (size * aspect.sqrt()), aspect.sqrt() / size
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([sx * cos, sx * (-sin + shear * cos), _uniform(n, -shift, shift, gen) * sx], 1),
            torch.stack([sy * sin, sy * (cos + shear * sin), _uniform(n, -shift, shift, gen) * sy], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, 1, resolution, resolution], align_corners=False)
    return F.grid_sample(pool, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _crop_mask(n: int, resolution: int, gen: torch.Generator) -> torch.Tensor:
    """A random half-plane per image: clutter shows strokes of a digit, not a whole second digit."""
    coords = torch.linspace(-1, 1, resolution)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    angle = _uniform(n, 0, 2 * math.pi, gen).view(-1, 1, 1)
    offset = _uniform(n, -0.3, 0.3, gen).view(-1, 1, 1)
    return ((x * angle.cos() + y * angle.sin()) > offset).float().unsqueeze(1)


def _background(n: int, resolution: int) -> torch.Tensor:
    """A dark, flat ground: the digit and the clutter strokes are light (``BACKGROUND``, ``INK``)."""
    return torch.full((n, 3, resolution, resolution), BACKGROUND)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def clutter_data(resolution: int, split_seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Images and labels of the three splits (disjoint digit pools, each split its own seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    every = np.arange(len(digits.target))
    train, rest = train_test_split(every, test_size=0.4, stratify=digits.target, random_state=split_seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=digits.target[rest], random_state=split_seed)
    pixels = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    images, targets = {}, {}
    for offset, (name, pool, count) in enumerate((("train", train, TRAIN), ("val", val, VAL), ("test", test, TEST))):
        index = torch.from_numpy(pool)
        images[name], targets[name] = clutter_split(
            pixels[index], labels[index], count, resolution, seed=1000 * split_seed + offset
        )
    return images, targets
