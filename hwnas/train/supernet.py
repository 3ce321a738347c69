"""The space and the supernet a configuration describes."""

from __future__ import annotations

from hwnas.model import BinaryNet, ModelOptions, build_supernet
from hwnas.space import NASBNN, SearchSpace, scaled_space
from hwnas.train.config import TrainConfig


def config_space(config: TrainConfig) -> SearchSpace:
    """The NAS-BNN space at the configured width, with or without ND."""
    space = scaled_space(NASBNN, config.width_mult)
    return space if config.nd else space.without_nd()


def build_model(config: TrainConfig, num_classes: int) -> BinaryNet:
    options = ModelOptions(config.bi_transform, config.weight_norm, config.convention, config.group_weights)
    return build_supernet(config_space(config), num_classes, options)
