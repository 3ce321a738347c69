"""The one architecture description shared by the model, OPs counter, predictor, search and compiler.

An :class:`Arch` is an immutable, hashable value: a stem width and five stages of searched layers,
each layer written in the paper's notation ``c384_k5_g8`` (width 384, kernel 5, groups 8). It knows
nothing about which values are allowed; :mod:`hwnas.space` validates it against a search space.

A searched layer is a MobileNetV1 "separable" pair whose depthwise conv is a group conv: a binary
k x k conv c_in -> c_in with g groups and the layer's stride, then a binary 1x1 conv c_in -> c.
:meth:`Arch.layer_shapes` derives every layer's channels, stride and spatial sizes once, so all
consumers agree on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hwnas.errors import ArchError

STEM_STRIDE = 2
STEM_KERNEL = 3
STEM_IN_CHANNELS = 3
DEFAULT_STRIDES = (1, 2, 2, 2, 2)

_NOTATION = re.compile(r"^c(\d+)_k(\d+)_g(\d+)$")


@dataclass(frozen=True, order=True)
class Layer:
    """One searched layer: output width ``c``, kernel ``k`` and groups ``g`` of its k x k conv."""

    c: int
    k: int
    g: int

    def __str__(self) -> str:
        return f"c{self.c}_k{self.k}_g{self.g}"

    @classmethod
    def parse(cls, value: Any, where: str) -> Layer:
        """Read a layer from ``"c384_k5_g8"`` or ``{"c": 384, "k": 5, "g": 8}``."""
        if isinstance(value, str):
            match = _NOTATION.match(value.strip())
            if match is None:
                raise ArchError(f"{where}: cannot parse {value!r} (expected like 'c384_k5_g8')")
            return cls(*(int(part) for part in match.groups()))
        if isinstance(value, dict):
            if set(value) != {"c", "k", "g"}:
                raise ArchError(f"{where}: a layer object needs exactly the keys c, k, g, got {sorted(value)}")
            for key in ("c", "k", "g"):
                if not isinstance(value[key], int) or isinstance(value[key], bool):
                    raise ArchError(f"{where}: {key} must be an integer, got {value[key]!r}")
            return cls(value["c"], value["k"], value["g"])
        raise ArchError(f"{where}: a layer is a string like 'c384_k5_g8' or an object, got {value!r}")


CONFIG_FIELDS = ("c_in", "c_out", "k", "g", "stride", "size_in")


@dataclass(frozen=True, order=True)
class LayerConfig:
    """A searched layer's dimensions at one input size: what its kernels are built and measured for.

    Two layers with the same configuration run the same kernels; everything else (output size,
    padding) follows from it.
    """

    c_in: int
    c_out: int
    k: int
    g: int
    stride: int
    size_in: int

    @property
    def size_out(self) -> int:
        return conv_out_size(self.size_in, self.k, self.stride)

    @classmethod
    def of(cls, layer: LayerConfig) -> LayerConfig:
        """The configuration alone (without a LayerShape's position)."""
        return cls(*(getattr(layer, name) for name in CONFIG_FIELDS))

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in CONFIG_FIELDS}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LayerConfig:
        return cls(*(int(obj[name]) for name in CONFIG_FIELDS))

    def __str__(self) -> str:
        return f"{self.c_in}->{self.c_out} k{self.k} g{self.g} s{self.stride} @{self.size_in}"


@dataclass(frozen=True)
class LayerShape(LayerConfig):
    """A layer configuration at its place in an architecture: 0-based stage and index in the stage."""

    stage: int
    index: int


def conv_out_size(size: int, k: int, stride: int) -> int:
    """Spatial size after a conv padded by k // 2 (so odd sizes round up at stride 2)."""
    return (size + 2 * (k // 2) - k) // stride + 1


@dataclass(frozen=True)
class Arch:
    """A subnet: stem width and, per stage, its layers. ``strides`` is each stage's first stride."""

    stem: int
    stages: tuple[tuple[Layer, ...], ...]
    strides: tuple[int, ...] = DEFAULT_STRIDES

    def layers(self) -> Iterator[tuple[int, int, Layer]]:
        """(stage, index, layer) in network order."""
        for s, stage in enumerate(self.stages):
            for i, layer in enumerate(stage):
                yield s, i, layer

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(stage) for stage in self.stages)

    @property
    def last_width(self) -> int:
        return self.stages[-1][-1].c if self.stages[-1] else self.stem

    def stem_size(self, resolution: int) -> int:
        return conv_out_size(resolution, STEM_KERNEL, STEM_STRIDE)

    def walk(self, resolution: int) -> Iterator[tuple[int, int, Layer, int, int, int]]:
        """(stage, index, layer, c_in, stride, size_in) of every searched layer in network order: the
        one place where channels and spatial sizes are threaded through the network (plain tuples,
        for code that prices thousands of archs)."""
        c_in, size = self.stem, self.stem_size(resolution)
        for s, i, layer in self.layers():
            stride = self.strides[s] if i == 0 else 1
            yield s, i, layer, c_in, stride, size
            c_in, size = layer.c, conv_out_size(size, layer.k, stride)

    def layer_shapes(self, resolution: int) -> list[LayerShape]:
        """Channels, stride and spatial sizes of every searched layer, in network order."""
        return [
            LayerShape(c_in, layer.c, layer.k, layer.g, stride, size, stage=s, index=i)
            for s, i, layer, c_in, stride, size in self.walk(resolution)
        ]

    def out_size(self, resolution: int) -> int:
        """Spatial size of the last layer's output (the classifier's input)."""
        size = self.stem_size(resolution)
        for _, _, layer, _, stride, size_in in self.walk(resolution):
            size = conv_out_size(size_in, layer.k, stride)
        return size

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict in the paper's notation; strides only when they differ from the default."""
        obj: dict[str, Any] = {"stem": self.stem, "stages": [[str(x) for x in st] for st in self.stages]}
        if self.strides != DEFAULT_STRIDES:
            obj["strides"] = list(self.strides)
        return obj

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    def __str__(self) -> str:
        stages = " | ".join(" ".join(str(x) for x in st) for st in self.stages)
        return f"stem c{self.stem} | {stages}"

    @classmethod
    def from_json(cls, obj: Any) -> Arch:
        """Parse the JSON structure (not yet checked against a search space); a list is read as
        the NAS-BNN authors' candidate format (:func:`cand_json`)."""
        if isinstance(obj, list):
            obj = cand_json(obj)
        if not isinstance(obj, dict):
            raise ArchError("arch: the top level must be an object with keys 'stem' and 'stages'")
        unknown = set(obj) - {"stem", "stages", "strides"}
        if unknown:
            raise ArchError(f"arch: unknown key(s) {sorted(unknown)}; expected 'stem', 'stages'")
        if "stem" not in obj or "stages" not in obj:
            raise ArchError("arch: missing key " + ("'stem'" if "stem" not in obj else "'stages'"))
        stem = obj["stem"]
        if not isinstance(stem, int) or isinstance(stem, bool):
            raise ArchError(f"arch: stem must be an integer width, got {stem!r}")
        stages = obj["stages"]
        if not isinstance(stages, list) or not all(isinstance(st, list) for st in stages):
            raise ArchError("arch: 'stages' must be a list of lists of layers")
        parsed = tuple(
            tuple(Layer.parse(v, f"stage {s + 1}, layer {i + 1}") for i, v in enumerate(st))
            for s, st in enumerate(stages)
        )
        strides = obj.get("strides", DEFAULT_STRIDES)
        if not isinstance(strides, list | tuple) or not all(v in (1, 2) for v in strides):
            raise ArchError(f"arch: 'strides' must be a list of 1s and 2s, got {strides!r}")
        return cls(stem, parsed, tuple(strides))


def cand_json(cand: list) -> dict[str, Any]:
    """The NAS-BNN authors' candidate as arch JSON: rows ``[stage, block, channels, kernel,
    groups1, groups2]`` (or the same flattened, as their ``info.pth.tar`` keeps them), stage 0 the
    stem; rows with stage or block -1 are layers the subnet skips; groups2 (the 1x1 conv's) is 1."""
    values = _flatten(cand)
    if not values or len(values) % 6 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ArchError(f"a NAS-BNN candidate has rows of 6 integers, got {len(values)} values")
    stem, stages = None, [[] for _ in DEFAULT_STRIDES]
    for row in (values[i : i + 6] for i in range(0, len(values), 6)):
        stage, block, c, k, g1, g2 = row
        if stage == -1 or block == -1:
            continue
        if stage == 0:
            stem = c
        elif 1 <= stage <= len(stages) and g2 == 1:
            stages[stage - 1].append(f"c{c}_k{k}_g{g1}")
        else:
            raise ArchError(f"candidate row {row} is not a NAS-BNN layer")
    if stem is None:
        raise ArchError("the candidate has no stem row (stage 0)")
    return {"stem": stem, "stages": stages}


def _flatten(obj: Any) -> list:
    if isinstance(obj, list | tuple):
        return [v for item in obj for v in _flatten(item)]
    return [obj]
