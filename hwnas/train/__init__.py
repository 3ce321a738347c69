"""Supernet training, BN-recalibrated evaluation and finetuning (NAS-BNN section 3.3, pipelines 1 and 2)."""

from hwnas.train.evaluate import calibrate_bn, evaluate_subnet, preload
from hwnas.train.run import Run, load_run

__all__ = ["Run", "calibrate_bn", "evaluate_subnet", "load_run", "preload"]
