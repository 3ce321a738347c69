"""The sandwich step learns: its loss falls on a fixed batch, on a tiny space and on the real one."""

from __future__ import annotations

import pytest
import torch

from hwnas.model import Mode
from hwnas.space import NASBNN, scaled_space
from hwnas.train.config import TrainConfig
from hwnas.train.init import init_thresholds, scale_residual_branches
from hwnas.train.optim import build_optimizer, decays
from hwnas.train.sandwich import Sandwich
from hwnas.train.supernet import build_model, config_space
from tests.conftest import tiny


def _losses(config: TrainConfig, steps: int, batch: int) -> list[float]:
    torch.manual_seed(0)
    net = build_model(config, 10)
    objective = Sandwich(net, config_space(config), config)
    optimizer = build_optimizer(net, config.lr, config.weight_decay)
    x = torch.randn(batch, 3, config.resolution, config.resolution)
    y = torch.arange(batch) % 10
    net.set_mode(config.teacher)
    init_thresholds(net, x)
    losses = []
    for _ in range(steps):
        loss, _ = objective(x, y, objective.plan())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_loss_falls_on_a_fixed_batch() -> None:
    losses = _losses(tiny(num_random=0, base_lr=0.008), steps=20, batch=20)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses


def test_loss_falls_on_the_real_space() -> None:
    config = TrainConfig(width_mult=1.0, resolution=16, num_random=0, batch_size=8, base_lr=0.016)
    losses = _losses(config, steps=5, batch=8)
    assert min(losses[1:]) < losses[0], losses


def test_sandwich_runs_largest_teacher_then_students() -> None:
    config = tiny(num_random=2, teacher="bwba")
    objective = Sandwich(build_model(config, 10), config_space(config), config)
    plan = objective.plan()
    space = config_space(config)
    assert plan[:2] == [space.largest(), space.smallest()] and len(plan) == 4
    assert objective.teacher_mode is Mode.BWBA
    assert objective.plan()[2:] != plan[2:]  # the random subnets change per step


def test_no_weight_decay_on_norms_thresholds_and_transforms() -> None:
    net = build_model(tiny(), 10)
    decayed = {name for name, p in net.named_parameters() if decays(name, p)}
    assert "stem.weight" in decayed and "classifier.weight" in decayed
    assert "stages.0.0.conv1.weight" in decayed
    for name in ("stem.step", "stem.bn.weight", "classifier.bias", "stages.1.0.rsign1.threshold"):
        assert name not in decayed
    assert not any("theta" in n or "act" in n or "bn" in n for n in decayed)


def test_width_multiplier_keeps_the_space_valid() -> None:
    space = scaled_space(NASBNN, 0.25)
    assert space.largest().stages[-1][-1].c == 384 and space.count() == NASBNN.count()
    with pytest.raises(Exception, match="unusable space"):
        scaled_space(NASBNN, 0.01)


def test_sandwich_trains_the_deployable_largest_besides_its_teacher() -> None:
    config = tiny(num_random=1, teacher="fwba")
    objective = Sandwich(build_model(config, 10), config_space(config), config)
    x, y = torch.randn(4, 3, config.resolution, config.resolution), torch.arange(4)
    modes = []
    hook = objective.trainable.register_forward_pre_hook(lambda net, _: modes.append((net.active, net.mode)))
    _, parts = objective(x, y, objective.plan())
    hook.remove()
    space = config_space(config)
    assert modes[:3] == [(space.largest(), Mode.FWBA), (space.largest(), Mode.BWBA), (space.smallest(), Mode.BWBA)]
    assert len(modes) == 4 and {"loss_teacher", "loss_largest", "loss_smallest"} <= set(parts)


def test_residual_branches_scaled_to_zero_start_every_block_as_its_shortcuts() -> None:
    """With both BatchNorm scales of every block at 0 the supernet's output does not depend on any
    binary conv weight (each block is its shortcuts), so every subnet sharing the stem and the
    widths starts as the same function; the default initialisation depends on them."""
    torch.manual_seed(0)
    net = build_model(tiny(), 10).eval()
    x = torch.randn(4, 3, 16, 16)

    def output_moves_with_conv_weights() -> bool:
        before = net(x)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if ".conv" in name and name.endswith("weight"):
                    p.add_(torch.randn_like(p))
        return not torch.allclose(net(x), before)

    assert output_moves_with_conv_weights()
    scale_residual_branches(net, 0.0)
    assert not output_moves_with_conv_weights()
    blocks = [m for name, m in net.named_modules() if name.endswith(("bn1", "bn2"))]
    assert blocks and all(not bn.weight.detach().any() for bn in blocks)


def test_a_fresh_run_starts_its_residual_branches_at_the_configured_scale(tmp_path) -> None:
    """After one Adam step every block's BatchNorm scale is within the learning rate of where it
    started: ``residual_init`` (0.2 by default), or 1 with ``--residual-init 1`` (the plain start)."""
    from hwnas.train.run import load_run, train_supernet

    for start in (0.2, 1.0):
        config = tiny(max_steps=1) if start == 0.2 else tiny(max_steps=1, residual_init=start)
        train_supernet(config, tmp_path / str(start))
        scales = [
            m.weight.detach()
            for name, m in load_run(tmp_path / str(start)).supernet.named_modules()
            if name.endswith(("bn1", "bn2"))
        ]
        assert scales and all(float((w - start).abs().max()) <= 1.01 * config.lr for w in scales), start
