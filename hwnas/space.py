"""The NAS-BNN search space: allowed values, validation, exact counting and uniform sampling.

Counting and sampling share one dynamic programme over "the previous layer's width", which is all
the state the Non-Decreasing (ND) constraint and the "groups divide the input channels" rule need.
Counts are exact Python integers; sampling draws a uniform integer below the count and walks the
programme, so every valid architecture is equally likely.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from hwnas.arch import Arch, Layer
from hwnas.errors import ArchError, HwnasError


@dataclass(frozen=True)
class StageSpace:
    """Choices of one stage; every layer of the stage picks its own width, kernel and groups."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    kernels: tuple[int, ...]
    groups: tuple[int, ...]
    stride: int


@dataclass(frozen=True)
class SearchSpace:
    """A MobileNetV1-template space of binary subnets (design.md section 2)."""

    stem_widths: tuple[int, ...]
    stages: tuple[StageSpace, ...]
    nd: bool = True

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(st.stride for st in self.stages)

    def without_nd(self) -> SearchSpace:
        return replace(self, nd=False)

    # ----------------------------------------------------------------- validation
    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` if it lies in the space, else raise one ArchError naming the fault."""
        if arch.stem not in self.stem_widths:
            raise ArchError(f"stem: width {arch.stem} not in {_fmt(self.stem_widths)}")
        if len(arch.stages) != len(self.stages):
            raise ArchError(f"arch: {len(arch.stages)} stages given, the space has {len(self.stages)}")
        if arch.strides != self.strides:
            raise ArchError(f"arch: strides {list(arch.strides)} differ from the space's {list(self.strides)}")
        prev = arch.stem
        for s, (stage, space) in enumerate(zip(arch.stages, self.stages, strict=True)):
            if len(stage) not in space.depths:
                raise ArchError(f"stage {s + 1}: depth {len(stage)} not in {_fmt(space.depths)}")
            for i, layer in enumerate(stage):
                where = f"stage {s + 1}, layer {i + 1} ({layer})"
                for name, value, allowed in (
                    ("width", layer.c, space.widths),
                    ("kernel", layer.k, space.kernels),
                    ("groups", layer.g, space.groups),
                ):
                    if value not in allowed:
                        raise ArchError(f"{where}: {name} {value} not in {_fmt(allowed)}")
                if prev % layer.g:
                    raise ArchError(f"{where}: groups {layer.g} do not divide the {prev} input channels")
                if self.nd and layer.c < prev:
                    raise ArchError(
                        f"{where}: width {layer.c} is below the previous width {prev} (Non-Decreasing constraint)"
                    )
                prev = layer.c
        return arch

    def parse(self, obj: Any) -> Arch:
        """Parse a JSON structure and validate it against this space."""
        return self.validate(Arch.from_json(obj))

    def load(self, path: str | Path) -> Arch:
        """Read and validate an architecture file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise HwnasError(f"architecture file not found: {path}") from None
        except OSError as exc:
            raise HwnasError(f"cannot read architecture file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ArchError(f"{path}: not a text file (not UTF-8)") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        try:
            return self.parse(obj)
        except ArchError as exc:
            raise ArchError(f"{path}: {exc}") from None

    # ----------------------------------------------------------------- counting
    def _options(self, s: int, c_in: int | None) -> int:
        """Number of (kernel, groups) choices of a layer of stage s reading c_in channels."""
        space = self.stages[s]
        groups = space.groups if c_in is None else [g for g in space.groups if c_in % g == 0]
        return len(space.kernels) * len(groups)

    def _next_widths(self, s: int, prev: int | None) -> list[int]:
        widths = self.stages[s].widths
        return list(widths) if prev is None or not self.nd else [c for c in widths if c >= prev]

    @cache  # noqa: B019 - the space is immutable and few spaces exist
    def _tail(self, s: int, n: int, prev: int | None, alone: bool) -> int:
        """Ways to place n more layers in stage s after width ``prev``, then finish the network.

        With ``alone`` the stages after s are not counted (the stage on its own).
        """
        if n == 0:
            return 1 if alone else self._rest(s + 1, prev)
        opts = self._options(s, prev)
        return sum(opts * self._tail(s, n - 1, c, alone) for c in self._next_widths(s, prev))

    @cache  # noqa: B019
    def _rest(self, s: int, prev: int) -> int:
        """Ways to complete stages s.. given the width before stage s."""
        if s == len(self.stages):
            return 1
        return sum(self._tail(s, d, prev, False) for d in self.stages[s].depths)

    def count(self) -> int:
        """Exact number of architectures in the space."""
        return sum(self._rest(0, c) for c in self.stem_widths)

    def count_stage(self, s: int) -> int:
        """Exact number of choices of stage s on its own (ND inside the stage; any input width)."""
        return sum(self._tail(s, d, None, True) for d in self.stages[s].depths)

    # ----------------------------------------------------------------- sampling
    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random architecture of the space."""
        stem = _pick(rng, self.stem_widths, lambda c: self._rest(0, c))
        prev, stages = stem, []
        for s, space in enumerate(self.stages):
            depth = _pick(rng, space.depths, lambda d, s=s, prev=prev: self._tail(s, d, prev, False))
            layers = []
            for n in range(depth, 0, -1):
                c = _pick(rng, self._next_widths(s, prev), lambda c, s=s, n=n: self._tail(s, n - 1, c, False))
                g = rng.choice([g for g in space.groups if prev % g == 0])
                layers.append(Layer(c, rng.choice(space.kernels), g))
                prev = c
            stages.append(tuple(layers))
        return Arch(stem, tuple(stages), self.strides)

    def sample_at(self, rng: random.Random, level: float, spread: float = 0.25) -> Arch:
        """A random architecture around ``level`` (0: the smallest, 1: the largest).

        Each choice (depth, width, kernel; groups the other way round) takes the index nearest
        ``level + N(0, spread)`` along its options from cheapest to dearest, widths kept
        non-decreasing under ND. Uniform sampling piles subnets up in the middle of the cost range;
        levels drawn uniformly reach both ends, where searches end up (a profile that never
        measured the cheap corner extrapolated into it, see docs/latency.md).
        """

        def near(options: tuple[int, ...] | list[int], reverse: bool = False) -> int:
            ordered = sorted(options, reverse=reverse)
            x = min(max(level + rng.gauss(0.0, spread), 0.0), 1.0)
            return ordered[round(x * (len(ordered) - 1))]

        stem = near(self.stem_widths)
        prev, stages = stem, []
        for s, space in enumerate(self.stages):
            layers = []
            for _ in range(near(space.depths)):
                widths = self._next_widths(s, prev)
                c = near(widths)
                g = near([g for g in space.groups if prev % g == 0], reverse=True)
                layers.append(Layer(c, near(space.kernels), g))
                prev = c
            stages.append(tuple(layers))
        return self.validate(Arch(stem, tuple(stages), self.strides))

    def translate(self, arch: Arch, other: SearchSpace) -> Arch:
        """``arch`` of this space as the architecture of ``other`` making the same choices.

        Widths map by their index among the stage's choices (a space scaled by a width multiplier
        maps back to the full widths); depths, kernels and groups stay. Used to price a subnet of
        a reduced-width supernet at deployment scale.
        """
        if len(other.stages) != len(self.stages) or other.strides != self.strides:
            raise ArchError("translate: the two spaces differ in stages or strides")
        self.validate(arch)

        def width(c: int, src: tuple[int, ...], dst: tuple[int, ...]) -> int:
            return dst[src.index(c)]

        stages = tuple(
            tuple(Layer(width(x.c, a.widths, b.widths), x.k, x.g) for x in stage)
            for stage, a, b in zip(arch.stages, self.stages, other.stages, strict=True)
        )
        return other.validate(Arch(width(arch.stem, self.stem_widths, other.stem_widths), stages, arch.strides))

    def largest(self) -> Arch:
        """Every depth, width and kernel at its maximum, the fewest groups (the most computation)."""
        return self._extreme(max, min)

    def smallest(self) -> Arch:
        """Every depth, width and kernel at its minimum, the most groups (the least computation)."""
        return self._extreme(min, max)

    def _extreme(self, size: Any, groups: Any) -> Arch:
        stages = tuple(
            tuple(Layer(size(st.widths), size(st.kernels), groups(st.groups)) for _ in range(size(st.depths)))
            for st in self.stages
        )
        return self.validate(Arch(size(self.stem_widths), stages, self.strides))


def _pick(rng: random.Random, choices: Any, weight: Any) -> Any:
    """Choose among ``choices`` with exact integer weights."""
    weights = [weight(c) for c in choices]
    ticket = rng.randrange(sum(weights))
    for choice, w in zip(choices, weights, strict=True):
        if ticket < w:
            return choice
        ticket -= w
    raise AssertionError("unreachable: the ticket is below the total weight")


def _fmt(values: tuple[int, ...]) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


NASBNN = SearchSpace(
    stem_widths=(24, 32, 48),
    stages=(
        StageSpace(depths=(2, 3), widths=(48, 64, 96), kernels=(3,), groups=(1,), stride=1),
        StageSpace(depths=(2, 3), widths=(96, 128, 192), kernels=(3, 5), groups=(1, 2), stride=2),
        StageSpace(depths=(2, 3), widths=(192, 256, 384), kernels=(3, 5), groups=(2, 4), stride=2),
        StageSpace(depths=(8, 9), widths=(384, 512, 768), kernels=(3, 5), groups=(4, 8), stride=2),
        StageSpace(depths=(2, 3), widths=(768, 1024, 1536), kernels=(3, 5), groups=(8, 16), stride=2),
    ),
)
"""Table 1 of the NAS-BNN paper."""


def scaled_space(space: SearchSpace, mult: float) -> SearchSpace:
    """``space`` with every width times ``mult`` (rounded), for small data and small machines.

    Depths, kernels and groups stay; a multiplier that breaks "groups divide the channels" is refused.
    """
    if mult == 1.0:
        return space

    def scale(widths: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(max(1, round(c * mult)) for c in widths)

    out = replace(
        space,
        stem_widths=scale(space.stem_widths),
        stages=tuple(replace(st, widths=scale(st.widths)) for st in space.stages),
    )
    try:
        out.validate(out.largest())
        out.validate(out.smallest())
    except ArchError as exc:
        raise HwnasError(f"width_mult {mult} gives an unusable space ({exc})") from None
    return out


def deployment_space(space: SearchSpace) -> SearchSpace:
    """The full-width space whose subnets ``space``'s subnets stand for when they are priced,
    profiled, compiled or compared: NAS-BNN's, with ``space``'s ND setting.

    A supernet trained at a reduced width (:func:`scaled_space`) stands for the full-width network
    making the same choices (:meth:`SearchSpace.translate`); for NAS-BNN itself this is the identity.
    """
    full = NASBNN if space.nd else NASBNN.without_nd()
    shape = [(st.depths, len(st.widths), st.kernels, st.groups, st.stride) for st in space.stages]
    if shape != [(st.depths, len(st.widths), st.kernels, st.groups, st.stride) for st in full.stages] or len(
        space.stem_widths
    ) != len(full.stem_widths):
        raise HwnasError("the space is not NAS-BNN's at some width: it has no deployment space")
    return full


def deployed(space: SearchSpace, arch: Arch) -> Arch:
    """``arch`` of ``space`` as the subnet of its deployment space making the same choices."""
    return space.translate(arch, deployment_space(space))
