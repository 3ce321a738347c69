"""Pipeline 2: extract a subnet from a trained supernet and finetune it on its own.

The subnet trains in BWBA mode. With distillation on (the run's default) it learns the soft
labels of the supernet's largest subnet in the run's teacher mode (FWBA), a frozen copy whose
BN statistics are recalibrated first; otherwise cross-entropy. The paper's lr is 1e-5 at batch
512, scaled linearly like the supernet's (:mod:`hwnas.train.config`). It reuses the supernet's
loop, checkpoints and resume; the output directory also keeps ``arch.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas.arch import Arch
from hwnas.files import atomic_write_json
from hwnas.model import BinaryNet, Mode
from hwnas.train.checkpoint import claim
from hwnas.train.config import FINETUNE_DEFAULTS, TrainConfig, coerce
from hwnas.train.distributed import Dist, init_distributed
from hwnas.train.evaluate import accuracy, calibrated_subnet
from hwnas.train.loop import LoopData, SameNetwork, train_loop
from hwnas.train.run import CONFIG, Run
from hwnas.train.sandwich import distill_loss


class Finetune(SameNetwork, nn.Module):
    def __init__(self, subnet: BinaryNet, teacher: BinaryNet | None) -> None:
        super().__init__()
        self.trainable = subnet
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor, plan: None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.trainable(x)
        if self.teacher is None:
            return F.cross_entropy(out, y), {}
        with torch.no_grad():
            soft = self.teacher.eval()(x)
        return distill_loss(out, soft), {}

    def evaluate(self, calib: list, val: list) -> dict[str, float]:
        return {"val_acc": accuracy(self.trainable, val, next(self.trainable.parameters()).device)}


def finetune_config(run: Run, cli: dict[str, Any]) -> TrainConfig:
    """The run's config with the finetuning defaults, then the command line."""
    return coerce(coerce(run.config, FINETUNE_DEFAULTS, "finetune defaults"), cli, "command line")


def finetune(run: Run, arch: Arch, config: TrainConfig, out_dir: Path, resume: bool = False) -> dict:
    """Finetune ``arch`` from ``run``'s supernet into ``out_dir``; returns the last epoch's metrics."""
    d = init_distributed(config.threads)
    with claim(out_dir, resume, "finetuning run", d.main) as resume:
        return _finetune(run, arch, config, out_dir, resume, d)


def _finetune(run: Run, arch: Arch, config: TrainConfig, out_dir: Path, resume: bool, d: Dist) -> dict:
    calib = run.calibration_batches()
    teacher = None
    if config.distill:
        teacher = calibrated_subnet(run.supernet, run.space.largest(), calib, Mode(config.teacher), d.device)
    subnet = calibrated_subnet(run.supernet, arch, calib, Mode.BWBA, d.device)

    def prepare() -> None:
        config.save(out_dir / CONFIG)
        atomic_write_json(out_dir / "arch.json", arch.to_json(), indent=None)

    torch.manual_seed(config.seed)
    data = LoopData(run.splits.train, calib, run.batches("val"), {"arch": arch.to_json(), "supernet": str(run.run_dir)})
    return train_loop(Finetune(subnet, teacher), config, data, out_dir, d, resume, prepare)
