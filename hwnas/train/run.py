"""A run directory: start or resume a supernet training, and load a finished one.

Layout: ``config.json`` (the resolved config), ``splits.json`` (split indices),
``checkpoint.pt`` (the latest checkpoint) and ``metrics.jsonl`` (one line per epoch).
The search and compile steps call :func:`load_run` (``--weights RUN_DIR``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from hwnas.errors import HwnasError
from hwnas.model import BinaryNet
from hwnas.space import SearchSpace
from hwnas.train.checkpoint import FILENAME, check_resume, load_checkpoint
from hwnas.train.config import Config, TrainConfig, coerce, load_toml
from hwnas.train.data import Splits, build_splits, load_indices, save_indices
from hwnas.train.distributed import Dist, default_processes, init_distributed, launched, spawn
from hwnas.train.evaluate import preload
from hwnas.train.init import init_thresholds
from hwnas.train.loop import LoopData, train_loop
from hwnas.train.sandwich import Sandwich
from hwnas.train.supernet import build_model, config_space

_log = logging.getLogger(__name__)

CONFIG = "config.json"
SPLITS = "splits.json"
DEFAULTS = TrainConfig()


@dataclass
class Run:
    """A trained supernet with everything needed to evaluate its subnets."""

    run_dir: Path
    config: TrainConfig
    space: SearchSpace
    supernet: BinaryNet
    splits: Splits
    epochs_done: int

    def calibration_batches(self, n: int | None = None) -> list:
        """The fixed training batches used for BN recalibration (``config.calib_batches`` by default)."""
        return preload(self.splits.train, self.config.batch_size, n or self.config.calib_batches, self.config.seed)

    def batches(self, split: str) -> list:
        """All of ``split`` ("val" or "test"), batched in memory."""
        return preload(self.splits.get(split), self.config.batch_size)


def read_config(run_dir: Path, base: Config = DEFAULTS) -> Config:
    """The config saved in ``run_dir`` (a :class:`TrainConfig`, or another kind of config like ``base``)."""
    path = run_dir / CONFIG
    try:
        return coerce(base, json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        raise HwnasError(f"{run_dir} is not a training run (no {CONFIG})") from None
    except ValueError as exc:
        raise HwnasError(f"{path}: not valid JSON ({exc})") from None


def load_run(run_dir: str | Path) -> Run:
    """The trained supernet of ``run_dir`` (eval mode, CPU), its config, space and data splits."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HwnasError(f"run directory not found: {run_dir}")
    config = read_config(run_dir)
    state = load_checkpoint(run_dir / FILENAME)
    splits = build_splits(config, load_indices(run_dir / SPLITS))
    supernet = build_model(config, splits.num_classes)
    try:
        supernet.load_state_dict(state["model"])
    except RuntimeError:  # shapes or names differ: another hwnas version or a hand-edited config
        raise HwnasError(
            f"{run_dir / FILENAME} does not fit the supernet its config.json describes "
            "(written by another hwnas version, or the config was edited)"
        ) from None
    return Run(run_dir, config, config_space(config), supernet.eval(), splits, state["position"]["epoch"])


def train_supernet(config: TrainConfig, run_dir: Path, resume: bool = False) -> tuple[BinaryNet, dict]:
    """Train (or resume) a supernet into ``run_dir``; returns it and the last epoch's metrics.

    Outside torchrun, ``config.processes`` (0: one per core) data-parallel workers are spawned
    here when that is more than one; the supernet returned is then the one saved in ``run_dir``."""
    processes = config.processes or default_processes()
    if processes > 1 and not launched():
        check_resume(run_dir, resume)  # refused here, before any worker starts
        metrics = spawn(_train_metrics, (config, run_dir, resume), processes)
        return load_run(run_dir).supernet, metrics
    return _train(config, run_dir, resume)


def _train_metrics(config: TrainConfig, run_dir: Path, resume: bool) -> dict:
    return _train(config, run_dir, resume)[1]


def _train(config: TrainConfig, run_dir: Path, resume: bool) -> tuple[BinaryNet, dict]:
    d = init_distributed(config.threads)
    check_resume(run_dir, resume)
    indices = load_indices(run_dir / SPLITS) if resume else None
    splits = build_splits(config, indices)
    _prepare_dir(run_dir, config, splits, d)
    torch.manual_seed(config.seed)
    supernet = build_model(config, splits.num_classes)
    space = config_space(config)
    objective = Sandwich(supernet, space, config)
    calib = preload(splits.train, config.batch_size, config.calib_batches, config.seed)
    if not resume:
        supernet.set_active(space.largest())
        supernet.set_mode(config.teacher)
        init_thresholds(supernet, calib[0][0])
    data = LoopData(splits.train, calib, preload(splits.val, config.batch_size))
    if d.main:
        _log.info(
            f"training a supernet on {config.data}: {len(splits.train)} train / {len(splits.val)} val images, "
            f"lr {config.lr:.3g}"
        )
    return supernet, train_loop(objective, config, data, run_dir, d, resume)


def _prepare_dir(run_dir: Path, config: TrainConfig, splits: Splits, d: Dist) -> None:
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG)
        save_indices(splits, run_dir / SPLITS)


def resolve_for_resume(run_dir: Path, cli: dict, file: Path | None, base: Config = DEFAULTS) -> Config:
    """A resumed run keeps its saved config; the file and the command line may still change keys."""
    config = read_config(run_dir, base)
    if file is not None:
        config = coerce(config, load_toml(file), str(file))
    return coerce(config, cli, "command line")
