"""Where a compiled or exported subnet's weights come from: a training run, or a seeded random supernet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.model import BinaryNet, build_supernet
from hwnas.space import NASBNN, SearchSpace


@dataclass(frozen=True)
class Subnet:
    """A deployable (BWBA, eval) subnet and the input size and class count it was made for."""

    net: BinaryNet
    resolution: int
    num_classes: int


def load_subnet(
    arch_path: Path,
    weights: str,
    resolution: int | None,
    classes: int | None,
    seed: int = 0,
    space: SearchSpace = NASBNN,
    calibrate: bool = True,
    data: str | None = None,
) -> tuple[Arch, Subnet]:
    """Read and validate the arch, then build it from ``weights`` (RUN_DIR, or "random": a seeded
    random supernet of ``space``). A run's subnet has its BatchNorm recalibrated on the run's
    data (or ``data``), unless ``calibrate`` is False: then it keeps the statistics stored in the run."""
    if weights == "random":
        arch = space.load(arch_path)
        torch.manual_seed(seed)
        supernet = build_supernet(space, classes or 1000).eval()
        return arch, Subnet(supernet.extract(arch), resolution or 224, classes or 1000)
    if not Path(weights).is_dir():
        raise HwnasError(f"--weights must be a training run directory or 'random', got {weights!r}")
    from hwnas.train.evaluate import calibrated_subnet  # the training stack loads only when asked for
    from hwnas.train.run import load_run

    run = load_run(weights, data)
    space: SearchSpace = run.space
    arch = space.load(arch_path)
    num_classes = run.splits.num_classes
    if classes not in (None, num_classes):
        raise HwnasError(f"the run in {weights} has {num_classes} classes, not {classes}")
    if calibrate:
        subnet = calibrated_subnet(run.supernet, arch, run.calibration_batches())
    else:
        subnet = run.supernet.extract(arch).eval()
    return arch, Subnet(subnet, resolution or run.config.resolution, num_classes)
