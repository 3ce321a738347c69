"""The space and the supernet a configuration describes."""

from __future__ import annotations

from dataclasses import replace

from hwnas.errors import ArchError, HwnasError
from hwnas.model import BinaryNet, ModelOptions, build_supernet
from hwnas.space import NASBNN, SearchSpace
from hwnas.train.config import TrainConfig


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


def config_space(config: TrainConfig) -> SearchSpace:
    """The NAS-BNN space at the configured width, with or without ND."""
    space = scaled_space(NASBNN, config.width_mult)
    return space if config.nd else space.without_nd()


def build_model(config: TrainConfig, num_classes: int) -> BinaryNet:
    options = ModelOptions(bi_transform=config.bi_transform, weight_norm=config.weight_norm)
    return build_supernet(config_space(config), num_classes, options)
