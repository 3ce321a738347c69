"""One training configuration: defaults, a TOML file, then command-line overrides, in that order.

Learning rate rule: ``lr = base_lr * batch_size / base_batch`` (linear scaling, Goyal et al. 2017),
with the paper's ``base_lr = 5e-4`` at ``base_batch = 512`` for the supernet and ``1e-5`` for
finetuning. ``batch_size`` is the global batch (all processes together).

Defaults for the built-in digits data (1,257 training images on a shared 2-core CPU) differ from
the paper's ImageNet recipe where they must: a quarter-width space (``width_mult = 0.25``; the
full width is about 10x slower per step), batch 64 and ``base_lr = 8e-3`` at 512, i.e. lr 1e-3 at
batch 64 (with ~19 steps per epoch the paper's rule would give 6e-5 and the weights would barely
move within the time budget; 2e-3 was no better over the first 5 epochs), 40 epochs, 1 warm-up
epoch. These defaults do **not** yet reach 90 % on digits for every subnet within 20 CPU minutes
(see the training report); binary networks need many more steps than this budget allows. For
ImageFolder data use ``width_mult = 1.0``, ``resolution = 224`` and the paper's ``base_lr = 5e-4``.

``threads = 1``: on a small CPU shared with other jobs, two OpenMP threads per process made a
sandwich step 10-40x slower (spinning threads preempted), one thread was as fast as two on an idle
machine; torchrun also gives each process one thread. Set 0 for torch's default on a dedicated host.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from hwnas.errors import HwnasError

TEACHERS = ("fwba", "bwba", "fwfa")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a supernet training or finetuning run."""

    data: str = "digits"  # "digits" or "imagefolder:PATH"
    resolution: int = 32  # input size; ImageFolder data is usually trained at 224
    width_mult: float = 0.25  # scale of every width of the NAS-BNN space (1.0 = the paper's)
    nd: bool = True  # sample subnets under the Non-Decreasing constraint
    bi_transform: bool = True
    weight_norm: bool = True
    teacher: str = "fwba"  # mode of the largest subnet: fwba (Bi-Teacher), bwba or fwfa
    distill: bool = True  # students learn the teacher's soft labels (else CE on the labels)
    num_random: int = 2  # random subnets per step besides the largest and the smallest
    epochs: int = 40
    batch_size: int = 64
    base_lr: float = 8e-3  # at base_batch; see the module docstring
    base_batch: int = 512
    weight_decay: float = 5e-6
    warmup_epochs: float = 1.0
    seed: int = 0  # weights, subnet sampler and data order
    split_seed: int = 0  # the train / val / test split
    val_per_class: int = 50  # ImageFolder: held-out search images per class, carved from train/
    workers: int = 0  # data-loading processes (0: in the main process, bit-exact resume)
    threads: int = 1  # torch intra-op threads per process (0: torch's default); see the module docstring
    checkpoint_minutes: float = 10.0  # also checkpoint this often within an epoch
    eval_every: int = 1  # epochs between validation of the largest and smallest subnets
    calib_batches: int = 8  # training batches for BatchNorm recalibration
    max_steps: int = 0  # stop (with a checkpoint) after this many steps in total; 0 = no limit

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / self.base_batch

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> TrainConfig:
        return coerce(cls(), obj, where)


FINETUNE_DEFAULTS = {"base_lr": 1e-5, "epochs": 10, "warmup_epochs": 0.0, "num_random": 0}
"""Pipeline 2 (paper: lr 1e-5 at batch 512, up to 100 epochs); the rest is the run's config."""


def coerce(config: TrainConfig, values: dict[str, Any], where: str) -> TrainConfig:
    """``config`` with ``values`` applied, each checked against the field's type."""
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
    check(config, where)
    return config


def check(config: TrainConfig, where: str) -> None:
    if config.teacher not in TEACHERS:
        raise HwnasError(f"{where}: teacher must be one of {list(TEACHERS)}, got {config.teacher!r}")
    for key in ("epochs", "batch_size", "resolution", "base_batch", "calib_batches", "eval_every"):
        if getattr(config, key) < 1:
            raise HwnasError(f"{where}: {key} must be at least 1, got {getattr(config, key)}")
    if not 0 < config.width_mult <= 1:
        raise HwnasError(f"{where}: width_mult must be in (0, 1], got {config.width_mult}")


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise HwnasError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HwnasError(f"{path}: not valid TOML ({exc})") from None


def add_override_flags(parser: argparse.ArgumentParser, base: TrainConfig = TrainConfig()) -> None:
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


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}


def resolve(file: Path | None, cli: dict[str, Any], base: TrainConfig = TrainConfig()) -> TrainConfig:
    """Defaults, then the file, then the command line."""
    config = coerce(base, load_toml(file), str(file)) if file is not None else base
    return coerce(config, cli, "command line")
