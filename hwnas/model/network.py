"""The binary network: a supernet over a search space, or one extracted subnet.

Both are :class:`BinaryNet`; they differ only in their :class:`Skeleton` (the largest size of
each layer slot). A supernet's skeleton holds the space's maxima, an extracted subnet's holds its
own sizes, so "extract" is: build the small skeleton, copy the narrowed shared tensors into it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas.arch import Arch
from hwnas.errors import ArchError
from hwnas.model.layers import Convention, GroupWeights, Mode, SeparableBlock, Stem, narrow
from hwnas.space import SearchSpace


@dataclass(frozen=True)
class Slot:
    """The largest configuration one searched layer position must hold."""

    c_in: int
    c_out: int
    kernels: tuple[int, ...]
    min_groups: int
    stride: int


@dataclass(frozen=True)
class Skeleton:
    """Stem width and layer slots, per stage, that a network allocates weights for."""

    stem: int
    stages: tuple[tuple[Slot, ...], ...]

    @classmethod
    def of_space(cls, space: SearchSpace) -> Skeleton:
        stages, prev_max = [], max(space.stem_widths)
        for st in space.stages:
            slots = tuple(
                Slot(
                    prev_max if i == 0 else max(st.widths),
                    max(st.widths),
                    st.kernels,
                    min(st.groups),
                    st.stride if i == 0 else 1,
                )
                for i in range(max(st.depths))
            )
            stages.append(slots)
            prev_max = max(st.widths)
        return cls(max(space.stem_widths), tuple(stages))

    @classmethod
    def of_arch(cls, arch: Arch) -> Skeleton:
        stages: list[list[Slot]] = [[] for _ in arch.stages]
        for shape in arch.layer_shapes(resolution=224):
            stages[shape.stage].append(Slot(shape.c_in, shape.c_out, (shape.k,), shape.g, shape.stride))
        return cls(arch.stem, tuple(tuple(st) for st in stages))

    def check_fits(self, arch: Arch) -> None:
        """Raise ArchError if ``arch`` needs more than this skeleton holds."""
        if arch.stem > self.stem or len(arch.stages) != len(self.stages):
            raise ArchError(f"arch {arch} does not fit this network (stem or number of stages)")
        for shape in arch.layer_shapes(resolution=224):
            where = f"stage {shape.stage + 1}, layer {shape.index + 1}"
            if shape.index >= len(self.stages[shape.stage]):
                raise ArchError(f"{where}: does not fit this network (it holds {len(self.stages[shape.stage])} there)")
            slot = self.stages[shape.stage][shape.index]
            if (
                shape.c_in > slot.c_in
                or shape.c_out > slot.c_out
                or shape.k not in slot.kernels
                or shape.c_in // shape.g > slot.c_in // slot.min_groups
                or shape.stride != slot.stride
            ):
                raise ArchError(f"{where}: c{shape.c_out}_k{shape.k}_g{shape.g} does not fit this network")

    @property
    def last_width(self) -> int:
        return self.stages[-1][-1].c_out


@dataclass(frozen=True)
class ModelOptions:
    """Switches for the paper's ablations, and whose weight rules apply (:class:`Convention`)."""

    bi_transform: bool = True
    weight_norm: bool = True
    convention: str = Convention.HWNAS.value
    group_weights: str = GroupWeights.FIRST.value  # new training runs: dense (TrainConfig)


class BinaryNet(nn.Module):
    """A binary MobileNetV1-style network running its active architecture in its current mode."""

    def __init__(
        self,
        skeleton: Skeleton,
        num_classes: int,
        options: ModelOptions = ModelOptions(),
        space: SearchSpace | None = None,
        active: Arch | None = None,
    ) -> None:
        super().__init__()
        self.skeleton, self.num_classes, self.options, self.space = skeleton, num_classes, options, space
        convention = Convention(options.convention)
        self.stem = Stem(skeleton.stem, convention)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                SeparableBlock(
                    s.c_in,
                    s.c_out,
                    s.kernels,
                    s.min_groups,
                    s.stride,
                    options.bi_transform,
                    options.weight_norm,
                    convention,
                    GroupWeights(options.group_weights),
                )
                for s in stage
            )
            for stage in skeleton.stages
        )
        self.classifier = nn.Linear(skeleton.last_width, num_classes)
        self.mode = Mode.BWBA
        self.active: Arch = active if active is not None else space.largest()  # type: ignore[union-attr]
        self.set_active(self.active)

    def set_active(self, arch: Arch) -> None:
        """Run ``arch`` from now on (validated against the space, and checked to fit)."""
        if self.space is not None:
            self.space.validate(arch)
        self.skeleton.check_fits(arch)
        self.active = arch

    def set_mode(self, mode: Mode | str) -> None:
        self.mode = Mode(mode)

    def forward(self, x: Tensor) -> Tensor:
        arch = self.active
        x = self.stem(x, arch.stem, self.mode)
        for s, i, layer in arch.layers():
            x = self.stages[s][i](x, layer.c, layer.k, layer.g, self.mode)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(x, self.classifier.weight[:, : x.shape[1]], self.classifier.bias)

    def extract(self, arch: Arch) -> BinaryNet:
        """A standalone network of exactly ``arch``, its weights copied from this one."""
        self.set_active(arch)
        options = self.options
        plain = Convention(options.convention) is Convention.NASBNN or options.group_weights == GroupWeights.DENSE
        if plain:  # the subnet stores its active convs as they are: plain grouped weights
            options = replace(options, group_weights=GroupWeights.FIRST.value)
        sub = BinaryNet(Skeleton.of_arch(arch), self.num_classes, options, active=arch)
        mine = self.state_dict()
        state = {name: narrow(mine[name], t.shape).clone() for name, t in sub.state_dict().items()}
        if plain:
            state.update(self._active_convs(arch))
        sub.load_state_dict(state)
        sub.mode = self.mode
        return sub.train(self.training)

    @torch.no_grad()
    def _active_convs(self, arch: Arch) -> dict[str, Tensor]:
        """Each conv's active weight (nasbnn: group slices and kernel transformation applied; dense
        group weights: the groups' columns) and its Bi-Transformation matrix, identity where the
        supernet applies none at that kernel."""
        out = {}
        for shape in arch.layer_shapes(resolution=224):
            block = self.stages[shape.stage][shape.index]
            for name, conv, c_out, k, g in (
                ("conv1", block.conv1, shape.c_in, shape.k, shape.g),
                ("conv2", block.conv2, shape.c_out, 1, 1),
            ):
                prefix = f"stages.{shape.stage}.{shape.index}.{name}."
                out[prefix + "weight"] = conv.active_weight(c_out, shape.c_in, k, g).clone()
                if f"k{k}" in conv.theta:
                    theta = conv.bi_matrix(k)
                    out[prefix + f"theta.k{k}"] = torch.eye(k * k) if theta is None else theta.clone()
        return out


def build_supernet(space: SearchSpace, num_classes: int, options: ModelOptions = ModelOptions()) -> BinaryNet:
    """The weight-sharing supernet of ``space`` (active architecture: the largest)."""
    return BinaryNet(Skeleton.of_space(space), num_classes, options, space=space)
