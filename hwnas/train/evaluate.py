"""Accuracy of subnets with inherited weights, BatchNorm recalibrated first (OFA / BigNAS).

The supernet's running statistics mix every subnet trained, so a subnet is evaluated on a
standalone copy (:meth:`BinaryNet.extract`) whose BN statistics are reset and re-estimated as a
cumulative average (``momentum=None``) over a few training batches in train mode without
gradients. The supernet's own parameters and statistics are never touched. The calibration
batches are few and reused by every evaluation, so they are loaded once (:func:`preload`); an
evaluation split streams through a DataLoader (:func:`stream`), so memory does not grow with it
(at the paper's scale, 50 000 images at 224x224, a preloaded split took ~30 GB per process).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from hwnas.arch import Arch
from hwnas.model import BinaryNet, Mode

Batches = Iterable[tuple[Tensor, Tensor]]


def preload(dataset: Dataset, batch_size: int, max_batches: int | None = None, seed: int = 0) -> list:
    """Batches of ``dataset`` in memory, in a fixed shuffled order (all of them by default)."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    batches = []
    for batch in loader:
        if max_batches is not None and len(batches) >= max_batches:
            break
        batches.append(tuple(batch))
    return batches


def stream(dataset: Dataset, batch_size: int, workers: int = 0) -> DataLoader:
    """``dataset`` in order, one batch in memory at a time (workers decode ahead; batches pinned
    when a GPU is there to copy them to); iterate it again for every evaluation."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def calibrate_bn(net: nn.Module, batches: Batches, device: torch.device | str = "cpu") -> None:
    """Reset every BatchNorm's statistics and re-estimate them on ``batches`` (no gradients)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = net.training
    net.train()
    with torch.no_grad():
        for x, _ in batches:
            net(x.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.train(was_training)


def accuracy(net: nn.Module, batches: Batches, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in eval mode."""
    was_training = net.training
    net.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in batches:
            correct += int((net(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    net.train(was_training)
    return correct / max(total, 1)


def evaluate_subnet(
    supernet: BinaryNet,
    arch: Arch,
    calib: Batches | None,
    batches: Batches,
    mode: Mode = Mode.BWBA,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 accuracy of ``arch`` with inherited weights after BN recalibration on ``calib``
    (None: with the supernet's stored BN statistics)."""
    return accuracy(calibrated_subnet(supernet, arch, calib, mode, device), batches, device)


def calibrated_subnet(
    supernet: BinaryNet, arch: Arch, calib: Batches | None, mode: Mode = Mode.BWBA, device: torch.device | str = "cpu"
) -> BinaryNet:
    """A standalone copy of ``arch`` in ``mode`` with recalibrated BN (``calib`` None: the stored
    statistics); the supernet is left as it was."""
    active = supernet.active
    subnet = supernet.extract(arch).to(device)
    supernet.set_active(active)
    subnet.set_mode(mode)
    if calib is not None:
        calibrate_bn(subnet, calib, device)
    return subnet.eval()


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, std, min, quartiles and max (the paper's Fig. 3 measure of random subnets)."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "q1": q1,
        "median": median,
        "q3": q3,
        "max": max(values),
    }
