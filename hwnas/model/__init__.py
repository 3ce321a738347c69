"""The binary weight-sharing supernet and the subnets extracted from it."""

from hwnas.model.network import BinaryNet, Mode, ModelOptions, Skeleton, Slot, build_supernet

__all__ = ["BinaryNet", "Mode", "ModelOptions", "Skeleton", "Slot", "build_supernet"]
