"""One training configuration: defaults, a TOML file, then command-line overrides, in that order.

Learning rate rule: ``lr = base_lr * batch_size / base_batch`` (linear scaling, Goyal et al. 2017);
``batch_size`` is the global batch (all processes together). The defaults are for the built-in
digits data on a small shared CPU; docs/training.md gives the measurements behind each of them and
the settings for ImageNet-style ImageFolder data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from hwnas.errors import HwnasError
from hwnas.files import atomic_write_text

TEACHERS = ("fwba", "bwba", "fwfa")
CONVENTIONS = ("hwnas", "nasbnn")
GROUP_WEIGHTS = ("dense", "first")
PARALLEL = ("auto", "subnets", "data")  # hwnas.train.subnet_parallel
Config = TypeVar("Config")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a supernet training or finetuning run."""

    data: str = "digits"  # "digits", "clutter", "imagefolder:PATH", or "none" (an imported run without data)
    resolution: int = 32  # input size; ImageFolder data is usually trained at 224
    width_mult: float = 0.25  # scale of every width of the NAS-BNN space (1.0 = the paper's)
    nd: bool = True  # sample subnets under the Non-Decreasing constraint
    bi_transform: bool = True
    weight_norm: bool = True
    convention: str = "hwnas"  # whose weight rules: hwnas, or nasbnn (the authors'; imported runs)
    group_weights: str = "dense"  # hwnas group convs: dense (block diagonal) or first (runs before it)
    teacher: str = "fwba"  # mode of the largest subnet: fwba (the paper's Bi-Teacher), bwba or fwfa
    distill: bool = True  # students learn the teacher's soft labels (else CE on the labels)
    num_random: int = 1  # random subnets per step besides the largest and the smallest
    residual_init: float = 0.2  # first scale of each binary branch's last BatchNorm (1: plain); docs/training.md
    epochs: int = 60
    batch_size: int = 64
    base_lr: float = 8e-2  # at base_batch; docs/training.md
    base_batch: int = 512
    weight_decay: float = 5e-6
    warmup_epochs: float = 2.0
    seed: int = 0  # weights, subnet sampler and data order
    split_seed: int = 0  # the train / val / test split
    val_per_class: int = 50  # ImageFolder: held-out search images per class, carved from train/
    workers: int = 0  # data-loading processes (0: in the main process, bit-exact resume)
    threads: int = 1  # torch intra-op threads per process (0: torch's default); docs/training.md
    processes: int = 0  # processes `hwnas train` spawns (0: one per core, at most one per subnet of a step)
    parallel: str = "auto"  # what processes split: subnets, data (the batch, DDP), auto; docs/training.md
    checkpoint_minutes: float = 10.0  # also checkpoint this often within an epoch
    eval_every: int = 5  # epochs between validation of the largest and smallest subnets
    calib_batches: int = 8  # training batches for BatchNorm recalibration
    max_steps: int = 0  # stop (with a checkpoint) after this many steps in total; 0 = no limit

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / self.base_batch

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> TrainConfig:
        return coerce(cls(), obj, where)

    def check(self, where: str) -> None:
        """Raise one HwnasError naming the first bad value."""
        if self.teacher not in TEACHERS:
            raise HwnasError(f"{where}: teacher must be one of {list(TEACHERS)}, got {self.teacher!r}")
        if self.convention not in CONVENTIONS:
            raise HwnasError(f"{where}: convention must be one of {list(CONVENTIONS)}, got {self.convention!r}")
        at_least_one(self, ("epochs", "batch_size", "resolution", "base_batch", "calib_batches", "eval_every"), where)
        if not 0 <= self.residual_init <= 10:
            raise HwnasError(f"{where}: residual_init must be in [0, 10], got {self.residual_init!r}")
        if self.group_weights not in GROUP_WEIGHTS:
            raise HwnasError(f"{where}: group_weights must be one of {list(GROUP_WEIGHTS)}, got {self.group_weights!r}")
        if self.parallel not in PARALLEL:
            raise HwnasError(f"{where}: parallel must be one of {list(PARALLEL)}, got {self.parallel!r}")
        if self.processes < 0:
            raise HwnasError(f"{where}: processes must be 0 (one per core) or more, got {self.processes}")
        if not 0 < self.width_mult <= 1:
            raise HwnasError(f"{where}: width_mult must be in (0, 1], got {self.width_mult}")


DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "clutter": {"epochs": 5, "warmup_epochs": 0.2, "eval_every": 1},
}
"""Defaults that depend on ``data``, applied where neither the file nor the command line set the key.

The digits defaults mean about 1,140 steps of 64 images (1,216 training images, 60 epochs); clutter
has 16,000, so the same training budget is 5 epochs, with warmup and validation scaled to match
(docs/training.md).
"""

FINETUNE_DEFAULTS = {"base_lr": 1e-5, "epochs": 10, "warmup_epochs": 0.0, "num_random": 0}
"""Pipeline 2 (paper: lr 1e-5 at batch 512, up to 100 epochs); the rest is the run's config."""


def coerce(config: Config, values: dict[str, Any], where: str) -> Config:
    """``config`` with ``values`` applied, each checked against the field's type, then ``config.check``.

    Works for any frozen dataclass of plain values with a ``check(where)`` method (also the
    detector's :class:`hwnas.detect.config.DetectConfig`).
    """
    types = {f.name: type(getattr(config, f.name)) for f in fields(config)}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise HwnasError(f"{where}: unknown key(s) {unknown}; known: {sorted(types)}")
    out = {}
    for key, value in values.items():
        kind = types[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise HwnasError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        out[key] = value
    config = replace(config, **out)
    config.check(where)
    return config


def at_least_one(config: Any, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if getattr(config, key) < 1:
            raise HwnasError(f"{where}: {key} must be at least 1, got {getattr(config, key)}")


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise HwnasError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HwnasError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise HwnasError(f"{path}: not a text file (not UTF-8)") from None
    except OSError as exc:
        raise HwnasError(f"cannot read the config file {path}: {exc.strerror}") from None


def add_override_flags(parser: argparse.ArgumentParser, base: Any = TrainConfig()) -> None:
    """One ``--key`` flag per config field (``--no-key`` for switches); unset flags stay None."""
    for f in fields(base):
        flag = "--" + f.name.replace("_", "-")
        kind = type(getattr(base, f.name))
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default {f.default})"
            )
        else:
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper(), help=f"(default {f.default})")


def overrides(args: argparse.Namespace, kind: type = TrainConfig) -> dict[str, Any]:
    """The config keys (fields of ``kind``) given on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(kind) if getattr(args, f.name, None) is not None}


def resolve(file: Path | None, cli: dict[str, Any], base: Config = TrainConfig()) -> Config:
    """Defaults, then the file, then the command line; then the data's own defaults for unset keys."""
    from_file = load_toml(file) if file is not None else {}
    config = coerce(base, from_file, str(file)) if file is not None else base
    config = coerce(config, cli, "command line")
    if isinstance(config, TrainConfig):
        unset = {k: v for k, v in DATA_DEFAULTS.get(config.data, {}).items() if k not in from_file and k not in cli}
        config = coerce(config, unset, f"the defaults for data {config.data!r}")
    return config
