"""Adam with cosine decay and linear warm-up, stepped once per training step.

Weight decay applies only to conv and linear weights. BatchNorm parameters, biases, RSign
thresholds, RPReLU shifts and slopes, the LSQ step and the Bi-Transformation matrices get none:
the first ones are scales and offsets that decay would bias towards zero; a Bi-Transformation
matrix starts at the identity and feeds a sign, which ignores its scale, so decay would only
shrink it towards a degenerate all-zero transform and raise its effective learning rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def decays(name: str, param: nn.Parameter) -> bool:
    return param.dim() > 1 and name.rsplit(".", 1)[-1] == "weight"


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, lr_scales: dict[str, float] | None = None
) -> torch.optim.Adam:
    """Adam over ``model``'s trainable parameters; ``lr_scales`` maps a parameter-name prefix to a
    factor of ``lr`` for those parameters (a detector's inherited backbone learns more slowly)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scales = lr_scales or {}

    def scale(name: str) -> float:
        return next((f for prefix, f in scales.items() if name.startswith(prefix)), 1.0)

    groups = []
    for factor in sorted({scale(n) for n, _ in named}):
        for decay in (True, False):
            params = [p for n, p in named if scale(n) == factor and decays(n, p) == decay]
            if params or not scales:  # without scales: the two groups, as ever (checkpoints stay compatible)
                groups.append({"params": params, "lr": lr * factor, "weight_decay": weight_decay if decay else 0.0})
    return torch.optim.Adam(groups, lr=lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
