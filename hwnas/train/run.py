"""A run directory: start or resume a supernet training, and load a finished one.

Layout: ``config.json`` (the resolved config), ``splits.json`` (split indices),
``checkpoint.pt`` (the latest checkpoint) and ``metrics.jsonl`` (one line per epoch).
The search and compile steps call :func:`load_run` (``--weights RUN_DIR``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from hwnas.errors import HwnasError
from hwnas.model import BinaryNet
from hwnas.space import SearchSpace
from hwnas.train.checkpoint import FILENAME, claim, load_checkpoint
from hwnas.train.config import Config, TrainConfig, coerce, load_toml
from hwnas.train.data import Splits, build_splits, load_indices, save_indices
from hwnas.train.distributed import Dist, default_processes, init_distributed, launched, spawn
from hwnas.train.evaluate import preload, stream
from hwnas.train.init import init_thresholds, scale_residual_branches
from hwnas.train.loop import LoopData, train_loop
from hwnas.train.sandwich import Sandwich
from hwnas.train.subnet_parallel import tasks_per_step, use_subnets
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
        self._need_data("recalibrate BatchNorm (or pass --no-calibration)")
        return preload(self.splits.train, self.config.batch_size, n or self.config.calib_batches, self.config.seed)

    def batches(self, split: str) -> DataLoader:
        """``split`` ("val" or "test") streamed in batches (bounded memory, re-iterable)."""
        self._need_data("evaluate")
        return stream(self.splits.get(split), self.config.batch_size, self.config.workers)

    def _need_data(self, why: str) -> None:
        if self.config.data == "none":
            raise HwnasError(f"{self.run_dir} has no data to {why}: pass --data imagefolder:PATH")


def read_config(run_dir: Path, base: Config = DEFAULTS) -> Config:
    """The config saved in ``run_dir`` (a :class:`TrainConfig`, or another kind of config like ``base``)."""
    path = run_dir / CONFIG
    try:
        values = json.loads(path.read_text())
        if isinstance(base, TrainConfig) and isinstance(values, dict):
            # saved before dense group weights, resp. scaled-down residual branches, existed
            values = {"group_weights": "first", "residual_init": 1.0, **values}
        return coerce(base, values, str(path))
    except FileNotFoundError:
        raise HwnasError(f"{run_dir} is not a training run (no {CONFIG})") from None
    except ValueError as exc:
        raise HwnasError(f"{path}: not valid JSON ({exc})") from None


def load_run(run_dir: str | Path, data: str | None = None) -> Run:
    """The trained supernet of ``run_dir`` (eval mode, CPU), its config, space and data splits.

    ``data`` replaces the run's dataset (an imported run has none: ``data`` is "none"); its
    splits are then carved afresh with the run's split seed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HwnasError(f"run directory not found: {run_dir}")
    config = read_config(run_dir)
    state = load_checkpoint(run_dir / FILENAME)
    num_classes = int(state["model"]["classifier.weight"].shape[0])
    if data is not None and data != config.data:
        config = replace(config, data=data)
        splits = build_splits(config)
    elif config.data == "none":
        empty = TensorDataset(torch.empty(0))
        splits = Splits(empty, empty, None, num_classes, {})
    else:
        splits = build_splits(config, load_indices(run_dir / SPLITS))
    if splits.num_classes != num_classes:
        raise HwnasError(f"{config.data} has {splits.num_classes} classes, the supernet in {run_dir} {num_classes}")
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

    The directory is locked while it trains (by this process: workers it spawns train under its
    lock); on resume its files are rewritten only once the checkpoint has loaded into the model of
    ``config`` (see :func:`hwnas.train.loop.train_loop`). Outside torchrun, ``config.processes``
    workers (0: one per core, no more than a step's subnets unless they split the data) are
    spawned here when that is more than one; the supernet returned is then the one saved in
    ``run_dir``. On CPUs they split each step's subnets by default (``parallel``,
    :mod:`hwnas.train.subnet_parallel`).
    """
    processes = config.processes or _processes_per_core(config)
    if processes > 1 and not launched():
        with claim(run_dir, resume) as resume:
            metrics = spawn(_train_metrics, (config, run_dir, resume), processes)
        return load_run(run_dir).supernet, metrics
    d = init_distributed(config.threads)
    with claim(run_dir, resume, main=d.main) as resume:
        return _train(config, run_dir, resume, d)


def _tasks(config: TrainConfig) -> int:
    return tasks_per_step(config.num_random, config.teacher == "bwba")


def _processes_per_core(config: TrainConfig) -> int:
    """One per core; when the processes split the subnets, no more than a step has."""
    cores = default_processes()
    return cores if config.parallel == "data" else min(cores, _tasks(config))


def _train_metrics(config: TrainConfig, run_dir: Path, resume: bool) -> dict:
    """A spawned worker's training (under its parent's lock on ``run_dir``); returns the metrics."""
    return _train(config, run_dir, resume, init_distributed(config.threads))[1]


def _train(config: TrainConfig, run_dir: Path, resume: bool, d: Dist) -> tuple[BinaryNet, dict]:
    indices = load_indices(run_dir / SPLITS) if resume else None
    splits = build_splits(config, indices)

    def prepare() -> None:
        config.save(run_dir / CONFIG)
        save_indices(splits, run_dir / SPLITS)
        _log.info(
            f"training a supernet on {config.data}: {len(splits.train)} train / {len(splits.val)} val images, "
            f"lr {config.lr:.3g}"
        )

    if not resume and d.main:  # nothing to protect yet: the config first, so a run killed at once still resumes
        prepare()
    torch.manual_seed(config.seed)
    supernet = build_model(config, splits.num_classes)
    space = config_space(config)
    objective = Sandwich(supernet, space, config)
    calib = preload(splits.train, config.batch_size, config.calib_batches, config.seed)
    if not resume:
        supernet.set_active(space.largest())
        supernet.set_mode(config.teacher)
        scale_residual_branches(supernet, config.residual_init)
        init_thresholds(supernet, calib[0][0])
    data = LoopData(splits.train, calib, stream(splits.val, config.batch_size, config.workers))
    split = use_subnets(config.parallel, d.world, _tasks(config), d.device.type == "cuda")
    return supernet, train_loop(objective, config, data, run_dir, d, resume, prepare if resume else None, split)


def resolve_for_resume(run_dir: Path, cli: dict, file: Path | None, base: Config = DEFAULTS) -> Config:
    """A resumed run keeps its saved config; the file and the command line may still change keys."""
    config = read_config(run_dir, base)
    if file is not None:
        config = coerce(config, load_toml(file), str(file))
    return coerce(config, cli, "command line")
