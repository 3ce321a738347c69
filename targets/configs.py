"""What gets profiled: the distinct binary layer kernel configurations a search space can produce,
and the configurations of the real-valued parts around them (stem and head).

A searched layer (see :mod:`hwnas.arch`) is a binary k x k group conv c_in -> c_in with g groups
and the layer's stride, then a binary 1x1 conv c_in -> c_out. Its kernel configuration is
``(c_in, c_out, k, g, stride, size_in)``; everything else (output size, padding) follows. Two
layers with the same configuration run the same kernels, so the profiler measures each
configuration once and the predictor looks layers up by it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hwnas.arch import Arch, LayerConfig, conv_out_size
from hwnas.space import SearchSpace

NETWORK_CLASSES = 1000
"""Classes of the profiled networks' classifiers (ImageNet's), so of the measured heads."""


def arch_configs(arch: Arch, resolution: int) -> list[LayerConfig]:
    """The kernel configuration of every searched layer of ``arch``, in network order."""
    return [LayerConfig.of(shape) for shape in arch.layer_shapes(resolution)]


def layer_configs(space: SearchSpace, resolution: int) -> list[LayerConfig]:
    """Every distinct layer configuration of the space's architectures at ``resolution``, sorted.

    A forward pass over layer positions tracks the widths the previous layer can have: a layer
    reads any reachable width that one of its stage's group counts divides, and (with ND) writes
    a width no smaller. Spatial sizes do not depend on the kernel (odd kernels, padding k // 2).
    It assumes every prefix extends to a whole architecture, true of NAS-BNN (group 1, or groups
    dividing every width); the tests check it against brute force on a small space.
    """
    found: set[LayerConfig] = set()
    reachable = set(space.stem_widths)
    size = conv_out_size(resolution, 3, 2)
    for st in space.stages:
        ends: set[int] = set()
        for index in range(max(st.depths)):
            stride = st.stride if index == 0 else 1
            nxt: set[int] = set()
            for c_in in sorted(reachable):
                groups = [g for g in st.groups if c_in % g == 0]
                outs = [c for c in st.widths if c >= c_in or not space.nd] if groups else []
                found.update(LayerConfig(c_in, c, k, g, stride, size) for c in outs for k in st.kernels for g in groups)
                nxt.update(outs)
            size = conv_out_size(size, 3, stride)
            reachable = nxt
            if index + 1 in st.depths:
                ends |= nxt
        reachable = ends
    return sorted(found)


def sample_configs(configs: list[LayerConfig], n: int | None, seed: int) -> list[LayerConfig]:
    """All configurations (``n`` None) or a seeded sample of ``n`` of them, sorted either way.

    The sample is a prefix of one seeded shuffle, so a larger ``n`` keeps the smaller sample's
    configurations (already measured ones stay useful).
    """
    if n is None or n >= len(configs):
        return list(configs)
    order = list(configs)
    random.Random(seed).shuffle(order)
    return sorted(order[:n])


def sample_networks(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """``n`` distinct random subnets, the same ones for the same seed (so a rerun resumes them).

    Every other one is uniform over the space, the rest around a size level (:meth:`SearchSpace.sample_at`)
    drawn as the square of a uniform number, so a third of them lie in the cheapest tenth: uniform
    subnets alone cover only the middle of the cost range (53-164 of the 21-332 MOPs of NAS-BNN's
    space), and the network calibration read 8-10 % high in the cheap corner where searches end
    (docs/latency.md). A larger ``n`` keeps the smaller sample's subnets.
    """
    if n > space.count():
        raise ValueError(f"the space has only {space.count()} architectures, {n} asked for")
    uniform, levels = random.Random(seed), random.Random(f"levels-{seed}")
    archs: dict[Arch, None] = {}
    while len(archs) < n:
        if len(archs) % 2 == 0:
            archs[space.sample(uniform)] = None
        else:
            archs[space.sample_at(levels, levels.random() ** 2)] = None
    return list(archs)


@dataclass(frozen=True, order=True)
class PartConfig:
    """A real-valued part: the ``stem`` ({"c": width}, at the key's resolution) or the ``head``
    ({"c": last width, "size": its input size, "classes": classes})."""

    kind: str
    config: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, int]:
        return dict(self.config)

    def __str__(self) -> str:
        return f"{self.kind} " + " ".join(f"{k}={v}" for k, v in self.config)


def stem_config(stem: int) -> PartConfig:
    return PartConfig("stem", (("c", stem),))


def head_config(last_width: int, size: int, classes: int = NETWORK_CLASSES) -> PartConfig:
    return PartConfig("head", (("c", last_width), ("size", size), ("classes", classes)))


def arch_parts(arch: Arch, resolution: int, classes: int = NETWORK_CLASSES) -> tuple[PartConfig, PartConfig]:
    """The stem and head configurations of ``arch`` at ``resolution``."""
    return stem_config(arch.stem), head_config(arch.last_width, arch.out_size(resolution), classes)


def part_configs(space: SearchSpace, resolution: int, classes: int = NETWORK_CLASSES) -> list[PartConfig]:
    """Every stem and head configuration of the space at ``resolution`` (a handful: one per stem
    width and one per last-stage width; every arch ends at the same spatial size)."""
    size = space.largest().out_size(resolution)
    stems = [stem_config(c) for c in space.stem_widths]
    return stems + [head_config(c, size, classes) for c in space.stages[-1].widths]
