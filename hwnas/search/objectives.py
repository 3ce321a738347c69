"""What a search trial measures of a subnet: accuracy on the search split, OPs and predicted latency.

Accuracy is the supernet's, with inherited weights and BatchNorm recalibrated, on the run's
held-out *validation* split (the paper's search split; the test split is kept for final reports).

Costs describe the subnet at deployment scale: a supernet trained at a reduced width (the built-in
digits default is a quarter of NAS-BNN's widths at 32x32) stands for the full-width network making
the same choices (:meth:`SearchSpace.translate`), priced at the predictors' resolution (224 by
default) with 1000 classes, the setting the paper reports OPs in and the target was profiled at.
For a run trained at full width the translation is the identity.

A latency budget holds a subnet's prediction times its predictor's margin (learnt from held-out
networks, :class:`~hwnas.predictors.latency.Margin`), so that about alpha of the feasible subnets
measure over the budget instead of about half.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hwnas.arch import Arch
from hwnas.predictors.latency import LatencyPredictor
from hwnas.predictors.ops import count_ops
from hwnas.space import SearchSpace, deployment_space
from hwnas.targets.configs import NETWORK_CLASSES
from hwnas.targets.target import load_target
from hwnas.train.distributed import set_threads
from hwnas.train.evaluate import evaluate_subnet
from hwnas.train.run import Run


class AccuracyOracle:
    """Top-1 accuracy of subnets of a trained run on its validation split, cached per architecture."""

    def __init__(self, run: Run, threads: int | None = None) -> None:
        set_threads(run.config.threads if threads is None else threads)  # as in training: see TrainConfig
        self.run = run
        self.calib = run.calibration_batches()
        self.val = run.batches("val")
        self.cache: dict[Arch, float] = {}

    def __call__(self, arch: Arch) -> float:
        if arch not in self.cache:
            self.cache[arch] = evaluate_subnet(self.run.supernet, arch, self.calib, self.val)
        return self.cache[arch]


@dataclass
class CostModel:
    """OPs and per-target predicted latency of a run's subnets at deployment scale."""

    space: SearchSpace
    predictors: dict[str, LatencyPredictor] = field(default_factory=dict)
    resolution: int = 224
    classes: int = NETWORK_CLASSES

    @classmethod
    def for_targets(cls, space: SearchSpace, targets: Sequence[str], resolution: int | None = None) -> CostModel:
        """Loads each target's predictor (a clear error if one is missing); resolution defaults to theirs."""
        predictors = {name: LatencyPredictor.load(load_target(name)) for name in targets}
        if resolution is None:
            resolution = next(iter(predictors.values())).resolution if predictors else 224
        return cls(space, predictors, resolution)

    @property
    def deploy_space(self) -> SearchSpace:
        return deployment_space(self.space)

    def deployed(self, arch: Arch) -> Arch:
        return self.space.translate(arch, self.deploy_space)

    def ops_m(self, arch: Arch) -> float:
        """The paper's OPs (millions) of the deployed subnet."""
        return count_ops(self.deployed(arch), self.resolution, self.classes).ops / 1e6

    def latency_ms(self, arch: Arch) -> dict[str, float]:
        """Predicted milliseconds of the deployed subnet on every target."""
        deployed = self.deployed(arch)
        return {name: p.predict(deployed, self.resolution) for name, p in self.predictors.items()}

    def margins(self) -> dict[str, float]:
        """Per target, the factor a prediction is multiplied by before it is held to a latency budget."""
        return {name: p.margin.factor for name, p in self.predictors.items()}

    def budgeted_ms(self, latency_ms: dict[str, float]) -> dict[str, float]:
        """Predicted latencies with their margins: what a latency budget is checked against."""
        margins = self.margins()
        return {name: margins[name] * ms for name, ms in latency_ms.items()}
