"""The search space as one fixed set of integer parameters that always decodes to a valid subnet.

Every sampler (Optuna's and the paper's evolution) sees the same parameters: the stem's width
index, each stage's depth index, and for every layer up to the stage's *maximum* depth its width,
kernel and groups indices. Layers beyond a stage's chosen depth are ignored. Choices with a single
value (stage 1's kernel and groups in NAS-BNN) are not parameters.

Decoding keeps the Non-Decreasing constraint by construction: a width index that would fall below
the previous layer's width is raised to the smallest allowed width, and a group count that does
not divide the layer's input channels becomes the nearest one (by index) that does. Every valid
architecture is reachable: :meth:`Encoding.encode` gives its own indices, which decode unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from hwnas.arch import Arch, Layer
from hwnas.errors import ArchError
from hwnas.space import SearchSpace


def stem_param() -> str:
    return "stem"


def depth_param(s: int) -> str:
    return f"s{s + 1}.depth"


def layer_param(s: int, i: int, what: str) -> str:
    """``what`` is ``c`` (width), ``k`` (kernel) or ``g`` (groups)."""
    return f"s{s + 1}.l{i + 1}.{what}"


@dataclass(frozen=True)
class Encoding:
    """Integer parameters of ``space``; ``choices`` maps each parameter to its number of values."""

    space: SearchSpace

    @cached_property
    def choices(self) -> dict[str, int]:
        """Every parameter with more than one value and its number of values, in network order."""
        out = {stem_param(): len(self.space.stem_widths)}
        for s, st in enumerate(self.space.stages):
            out[depth_param(s)] = len(st.depths)
            for i in range(max(st.depths)):
                for what, values in (("c", st.widths), ("k", st.kernels), ("g", st.groups)):
                    out[layer_param(s, i, what)] = len(values)
        return {name: n for name, n in out.items() if n > 1}

    def decode(self, params: Mapping[str, int]) -> Arch:
        """The valid architecture the parameters stand for (missing single-value parameters are 0)."""

        def index(name: str, n: int) -> int:
            value = int(params.get(name, 0))
            if not 0 <= value < n:
                raise ArchError(f"parameter {name}: index {value} outside 0..{n - 1}")
            return value

        space = self.space
        stem = space.stem_widths[index(stem_param(), len(space.stem_widths))]
        prev, stages = stem, []
        for s, st in enumerate(space.stages):
            depth = st.depths[index(depth_param(s), len(st.depths))]
            layers = []
            for i in range(depth):
                c = _at_least(st.widths, index(layer_param(s, i, "c"), len(st.widths)), prev if space.nd else None)
                k = st.kernels[index(layer_param(s, i, "k"), len(st.kernels))]
                g = _dividing(st.groups, index(layer_param(s, i, "g"), len(st.groups)), prev)
                if c is None or g is None:
                    raise ArchError(f"stage {s + 1}, layer {i + 1}: no width or groups fit after width {prev}")
                layers.append(Layer(c, k, g))
                prev = c
            stages.append(tuple(layers))
        return space.validate(Arch(stem, tuple(stages), space.strides))

    def encode(self, arch: Arch) -> dict[str, int]:
        """The parameters of a valid ``arch`` (unused layer slots at index 0); they decode to ``arch``."""
        space = self.space
        space.validate(arch)
        params = {stem_param(): space.stem_widths.index(arch.stem)}
        for s, (stage, st) in enumerate(zip(arch.stages, space.stages, strict=True)):
            params[depth_param(s)] = st.depths.index(len(stage))
            for i in range(max(st.depths)):
                layer = stage[i] if i < len(stage) else None
                for what, values in (("c", st.widths), ("k", st.kernels), ("g", st.groups)):
                    params[layer_param(s, i, what)] = values.index(getattr(layer, what)) if layer else 0
        return {name: params[name] for name in self.choices}

    def suggest(self, trial: Any) -> Arch:
        """Ask an Optuna trial for every parameter (integers, ordered as the choices are) and decode."""
        return self.decode({name: trial.suggest_int(name, 0, n - 1) for name, n in self.choices.items()})


def _at_least(values: tuple[int, ...], i: int, floor: int | None) -> int | None:
    """``values[i]``, raised to the smallest value >= ``floor`` when below it (None if none is)."""
    if floor is None or values[i] >= floor:
        return values[i]
    return min((v for v in values if v >= floor), default=None)


def _dividing(groups: tuple[int, ...], i: int, channels: int) -> int | None:
    """``groups[i]`` if it divides ``channels``, else the nearest index's group that does."""
    order = sorted(range(len(groups)), key=lambda j: (abs(j - i), j))
    return next((groups[j] for j in order if channels % groups[j] == 0), None)
