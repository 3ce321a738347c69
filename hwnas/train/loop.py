"""The training loop shared by supernet training and finetuning.

An :class:`Objective` is the module DDP wraps: ``forward(x, y, plan)`` returns the step's total
loss and its parts, so however many subnets a step runs, DDP sees one forward and one backward
(``find_unused_parameters=True``, since a step's subnets never touch every shared weight). ``x``
and ``y`` are whatever the data's collate function makes of a batch (tensors by default; a
detector gets lists of images and of target dicts), moved to the device as they are. The
``plan`` (which subnets) is drawn by ``objective.plan()`` from a seeded RNG that every process
holds in the same state, so all ranks run the same subnets without communicating.

Resume is exact: a checkpoint holds the model, optimizer, scheduler, the plan RNG, torch's RNG,
and the position (epoch, step within it). The data order of an epoch is a pure function of
(seed, epoch) (``DistributedSampler``, also with one process), so a resumed epoch skips the
batches already done and continues with the same images. The data loader draws its base seed
from its own generator: drawn from torch's RNG, it would shift that RNG at every resume, and a
detector's proposal sampling uses it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from hwnas.errors import HwnasError
from hwnas.files import atomic_write_text
from hwnas.train.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from hwnas.train.distributed import Dist, barrier
from hwnas.train.optim import build_optimizer, build_scheduler
from hwnas.train.subnet_parallel import sum_gradients

_log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


class Objective(Protocol):
    """What the loop trains: see the module docstring."""

    trainable: nn.Module  # its parameters are optimized and its state is checkpointed
    # optional ``lr_scales``: parameter-name prefix (in ``trainable``) -> factor of the lr

    def plan(self) -> Any: ...
    def sampler_state(self) -> Any: ...
    def load_sampler_state(self, state: Any) -> None: ...
    def evaluate(self, calib: list, val: list) -> dict[str, float]: ...
    def __call__(self, x: Tensor, y: Tensor, plan: Any) -> tuple[Tensor, dict[str, Tensor]]: ...


@dataclass
class LoopConfig(Protocol):
    """The settings the loop reads (:class:`TrainConfig` has them, and so has the detector's config)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    seed: int
    workers: int
    checkpoint_minutes: float
    eval_every: int
    max_steps: int

    def to_json(self) -> dict[str, Any]: ...


class SameNetwork:
    """For objectives that train one network the same way every step: no plan, no sampler state."""

    def plan(self) -> None:
        return None

    def sampler_state(self) -> None:
        return None

    def load_sampler_state(self, state: Any) -> None:
        pass


@dataclass
class Position:
    epoch: int = 0
    step: int = 0  # within the epoch
    global_step: int = 0
    elapsed: float = 0.0  # seconds of training, over all resumed sessions


@dataclass
class LoopData:
    train: Dataset
    calib: list  # preloaded training batches for BN recalibration
    val: Any  # what objective.evaluate validates on: preloaded batches, or a dataset
    extra: dict[str, Any] = field(default_factory=dict)  # saved in every checkpoint (e.g. the arch)
    collate: Callable | None = None  # the DataLoader's collate_fn (None: torch's default)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors moved to ``device``, also inside lists, tuples and dicts."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def epoch_indices(dataset: Dataset, config: LoopConfig, d: Dist, epoch: int) -> list[int]:
    """This rank's image order for ``epoch``: a function of (seed, epoch) only."""
    sampler = DistributedSampler(dataset, d.world, d.rank, shuffle=True, seed=config.seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def train_loop(
    objective: nn.Module,
    config: LoopConfig,
    data: LoopData,
    run_dir: Path,
    d: Dist,
    resume: bool,
    prepare: Callable[[], None] | None = None,
    split_subnets: bool = False,
) -> dict:
    """Train ``objective`` as configured, checkpointing into ``run_dir``; returns the last metrics.

    With several processes the batch is split over them (DDP), or, with ``split_subnets``, every
    process reads the whole batch and runs its share of the step's subnets
    (:mod:`hwnas.train.subnet_parallel`; the objective's ``forward`` takes ``share``).

    ``prepare`` writes the run's own files (its config, ...) on the main process, called once
    everything is checked: on resume, only after the checkpoint has loaded into this config's
    model, so a resume that does not fit leaves every file of the run as it was.
    """
    split = split_subnets and d.world > 1
    reader = Dist(0, 1, d.device) if split else d  # whose share of each batch this process reads
    if config.batch_size % reader.world:
        raise HwnasError(f"batch_size {config.batch_size} is not divisible by the {d.world} processes")
    batch = config.batch_size // reader.world
    steps_per_epoch = len(epoch_indices(data.train, config, reader, 0)) // batch
    if steps_per_epoch == 0:
        raise HwnasError(f"the training split has fewer than {config.batch_size} images; lower batch_size")
    trainable = objective.trainable.to(d.device)  # before the optimizer, so its state lives on the device
    optimizer = build_optimizer(trainable, config.lr, config.weight_decay, getattr(objective, "lr_scales", None))
    warmup = round(config.warmup_epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, config.epochs * steps_per_epoch, warmup)
    pos = Position()
    path = run_dir / FILENAME
    if resume:
        state = load_checkpoint(path)
        try:
            trainable.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            objective.load_sampler_state(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            pos = Position(**state["position"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError):
            raise HwnasError(_misfit(path, state.get("config"), config.to_json())) from None
    if d.main:
        if prepare is not None:
            prepare()
        _trim_metrics(run_dir / METRICS, pos.epoch)  # a fresh start over a deleted checkpoint: all lines
        if resume:
            _log.info(f"resuming {run_dir} at epoch {pos.epoch + 1}, step {pos.step} ({pos.global_step} steps done)")
    model = objective
    if d.world > 1 and not split:
        ids = [d.device.index] if d.device.type == "cuda" else None
        model = DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=True)

    def checkpoint() -> None:
        if d.main:
            save_checkpoint(
                path,
                {
                    "config": config.to_json(),
                    "model": trainable.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "sampler": objective.sampler_state(),
                    "torch_rng": torch.get_rng_state(),
                    "position": vars(pos).copy(),
                    **data.extra,
                },
            )

    last = {}
    last_save = time.monotonic()
    while pos.epoch < config.epochs:
        indices = epoch_indices(data.train, config, reader, pos.epoch)[pos.step * batch : steps_per_epoch * batch]
        loader = DataLoader(
            data.train,
            batch_size=batch,
            sampler=indices,
            num_workers=config.workers,
            drop_last=True,
            collate_fn=data.collate,
            generator=torch.Generator().manual_seed(config.seed + pos.epoch),  # not torch's RNG: see below
        )
        totals: dict[str, float] = {}
        images, steps, start = 0, 0, time.perf_counter()
        bar = tqdm(
            total=steps_per_epoch, initial=pos.step, desc=f"epoch {pos.epoch + 1}/{config.epochs}", disable=not d.main
        )
        for x, y in loader:
            trainable.train()
            optimizer.zero_grad(set_to_none=True)
            loss, parts = forward_backward(model, objective, to_device(x, d.device), to_device(y, d.device), d, split)
            optimizer.step()
            scheduler.step()
            pos.step += 1
            pos.global_step += 1
            steps += 1
            images += len(y) * reader.world
            for key, value in {"loss": loss.detach(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            rate = images / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=f"{rate:.0f}")
            bar.update()
            if config.max_steps and pos.global_step >= config.max_steps:
                break
            if time.monotonic() - last_save > config.checkpoint_minutes * 60:
                pos.elapsed += time.perf_counter() - start
                start, images = time.perf_counter(), 0
                checkpoint()
                last_save = time.monotonic()
        bar.close()
        pos.elapsed += time.perf_counter() - start
        if config.max_steps and pos.global_step >= config.max_steps:
            checkpoint()
            if d.main:
                _log.info(f"stopped after {pos.global_step} steps (max_steps); --resume continues")
            break
        pos.epoch, pos.step = pos.epoch + 1, 0
        last = {
            "epoch": pos.epoch,
            "step": pos.global_step,
            "lr": scheduler.get_last_lr()[0],
            "images_per_s": images / max(time.perf_counter() - start, 1e-9) if images else None,
            "elapsed_s": pos.elapsed,
            **{key: value / max(steps, 1) for key, value in totals.items()},  # this session's steps
        }
        if d.main and (pos.epoch % config.eval_every == 0 or pos.epoch == config.epochs):
            last.update(objective.evaluate(data.calib, data.val))
        if d.main:
            with (run_dir / METRICS).open("a") as f:
                f.write(json.dumps(last) + "\n")
            _log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
        checkpoint()
        last_save = time.monotonic()
    barrier(d)
    return last


def forward_backward(
    model: nn.Module, objective: Any, x: Any, y: Any, d: Dist, split: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """One step's loss and its parts, back-propagated: by ``model`` (the objective, or DDP around
    it), or, with ``split``, by this process's share of the subnets, the gradients then summed."""
    if not split:
        loss, parts = model(x, y, objective.plan())
        loss.backward()
        return loss, parts
    loss, parts = objective(x, y, objective.plan(), share=(d.rank, d.world))
    loss.backward()
    return _summed(objective.trainable, loss, parts)


def _summed(trainable: nn.Module, loss: Tensor, parts: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Gradients, loss and loss parts summed over the processes that split the step's subnets."""
    keys = sorted(parts)
    total = sum_gradients(trainable, torch.stack([loss.detach(), *(parts[k] for k in keys)]))
    return total[0], dict(zip(keys, total[1:], strict=True))


def _misfit(path: Path, saved: dict | None, now: dict) -> str:
    """Why a checkpoint does not load into this config's model: the keys that changed, if known."""
    changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in now if saved and k in saved and saved[k] != now[k]]
    what = f" (changed: {', '.join(changed)})" if changed else ""
    return (
        f"{path} does not fit the model of this configuration{what}; nothing was written: "
        "resume with the run's own settings, or train into another --out"
    )


def read_metrics(path: Path) -> list[dict]:
    """The epochs of a ``metrics.jsonl``; a torn last line (a kill mid-append) is left out.

    A line that is not JSON before the last one means the file was damaged otherwise: one HwnasError.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("not an epoch's metrics")
        except ValueError:
            if number == len(lines):
                _log.warning(f"{path}: ignoring a torn last line (the run was stopped while writing it)")
                break
            raise HwnasError(f"{path}: line {number} is not an epoch's metrics (damaged file)") from None
        rows.append(row)
    return rows


def _trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs the resumed run will redo, and a torn last line; atomically."""
    if path.exists():
        keep = [row for row in read_metrics(path) if row["epoch"] <= epochs_done]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in keep))
