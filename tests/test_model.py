"""The binary supernet: extraction equality, modes, binarization, gradients, resolutions."""

from __future__ import annotations

import random

import pytest
import torch

from hwnas.errors import ArchError
from hwnas.model import Mode, ModelOptions, build_supernet
from hwnas.model.binary import binary_activation, pad_binary, sign, weight_sign
from hwnas.space import NASBNN, scaled_space

QUARTER = scaled_space(NASBNN, 0.25)


def with_bn_statistics(net, space):
    """BN with non-trivial running statistics, so eval-mode equality means something."""
    with torch.no_grad():
        for arch in (space.largest(), space.smallest()):
            net.set_active(arch)
            net(torch.randn(4, 3, 32, 32))
    return net.eval()


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return with_bn_statistics(build_supernet(NASBNN, 10), NASBNN)


@pytest.fixture(scope="module")
def dense_supernet():
    torch.manual_seed(0)
    return with_bn_statistics(build_supernet(QUARTER, 10, ModelOptions(group_weights="dense")), QUARTER)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", [Mode.BWBA, Mode.FWBA])
@pytest.mark.parametrize("group_weights", ["first", "dense"])
def test_extracted_subnet_equals_supernet(supernet, dense_supernet, seed, mode, group_weights):
    net, space = (supernet, NASBNN) if group_weights == "first" else (dense_supernet, QUARTER)
    arch = space.sample(random.Random(seed))
    net.set_mode(mode)
    net.set_active(arch)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        sub = net.extract(arch)
        got = sub(x)
    net.set_mode(Mode.BWBA)
    assert torch.equal(expected, got)
    assert sub.mode is mode and not sub.training
    n_sub = sum(p.numel() for p in sub.parameters())
    assert n_sub < sum(p.numel() for p in net.parameters())
    with pytest.raises(ArchError, match="does not fit"):
        sub.set_active(space.largest())


def test_dense_group_weights_pair_each_output_with_the_same_input():
    """Under dense group weights one stored weight serves pair (output j, input c) in every
    configuration that puts j and c in one group, also where only a band of offsets is stored;
    under ``first`` the input a stored column meets moves with c_in / g."""
    torch.manual_seed(0)
    net = build_supernet(QUARTER, 10, ModelOptions(group_weights="dense"))
    for conv, configs in (
        (net.stages[3][1].conv1, ((96, 8), (128, 8), (192, 4), (96, 4), (128, 4))),  # band: 95 of 192
        (net.stages[2][1].conv1, ((48, 4), (64, 2), (96, 2), (96, 4))),  # dense: 95 >= 96 - 1 columns
    ):
        with torch.no_grad():
            conv.weight.normal_()
        seen: dict[tuple[int, int], torch.Tensor] = {}
        for c_in, g in configs:
            active, cg = conv.active_weight(c_in, c_in, 3, g), c_in // g
            for j in range(c_in):
                for t in range(cg):
                    c = (j // cg) * cg + t
                    if (j, c) in seen:
                        assert torch.equal(seen[(j, c)], active[j, t])
                    seen[(j, c)] = active[j, t]
        assert len(seen) > 2 * conv.weight.shape[0]
    assert net.stages[3][1].conv1.weight.shape[:2] == (192, 95)
    legacy = build_supernet(QUARTER, 10).stages[3][1].conv1
    assert legacy.weight.shape[:2] == (192, 48)  # first: c_in / min groups
    assert torch.equal(legacy.active_weight(96, 96, 3, 8)[13], legacy.weight[13, :12, 1:4, 1:4])


def test_extracted_subnet_is_standalone(supernet):
    arch = NASBNN.smallest()
    sub = supernet.extract(arch)
    with torch.no_grad():
        for p in supernet.parameters():
            p.add_(1.0)  # the copy must not share storage with the supernet
        try:
            sub2 = supernet.extract(arch)
            x = torch.randn(1, 3, 32, 32)
            assert not torch.equal(sub(x), sub2(x))
        finally:
            for p in supernet.parameters():
                p.sub_(1.0)


def test_modes_differ_and_are_switchable(supernet):
    x = torch.randn(2, 3, 32, 32)
    supernet.set_active(NASBNN.smallest())
    outs = {}
    with torch.no_grad():
        for mode in Mode:
            supernet.set_mode(mode)
            outs[mode] = supernet(x)
    supernet.set_mode("bwba")
    assert not torch.allclose(outs[Mode.BWBA], outs[Mode.FWBA])
    assert not torch.allclose(outs[Mode.FWBA], outs[Mode.FWFA])


def test_sign_convention_and_padding():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-9, 3.0])
    assert sign(x).tolist() == [-1, 1, 1, 1, 1]
    padded = pad_binary(-torch.ones(1, 1, 2, 2), 5)
    assert padded.shape == (1, 1, 6, 6) and padded[0, 0, 0].tolist() == [1.0] * 6 and padded[0, 0, 2, 2] == -1
    assert pad_binary(torch.ones(1, 1, 2, 2), 1).shape == (1, 1, 2, 2)


def test_approx_sign_gradient():
    x = torch.tensor([-1.5, -0.5, 0.0, 0.25, 1.0], requires_grad=True)
    binary_activation(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 1.5, 0.0]


def test_weight_sign_values_scale_and_straight_through_gradient():
    w = torch.tensor([[[[0.5, -1.5]]], [[[2.0, 0.0]]]], requires_grad=True)
    signs, scale = weight_sign(w)
    assert signs.flatten().tolist() == [1.0, -1.0, 1.0, 1.0]
    assert scale.tolist() == [1.0, 1.0]
    signs.sum().backward()
    assert w.grad.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]  # clipped where |w| > 1


def test_gradients_reach_shared_weights_and_bi_transformation():
    net = build_supernet(NASBNN, 10).train()
    arch = NASBNN.sample(random.Random(9))
    net.set_active(arch)
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    layer = arch.stages[3][0]
    block = net.stages[3][0]
    assert block.conv1.weight.grad.abs().sum() > 0
    assert block.conv1.theta[f"k{layer.k}"].grad.abs().sum() > 0
    assert block.conv2.weight.grad.abs().sum() > 0
    assert block.rsign1.threshold.grad.abs().sum() > 0
    assert net.stem.step.grad is not None and net.stem.step.grad != 0
    unused = net.stages[3][8] if arch.depths[3] == 8 else None
    if unused is not None:
        assert unused.conv1.weight.grad is None


def test_ablation_switches():
    net = build_supernet(NASBNN, 10, ModelOptions(bi_transform=False, weight_norm=False))
    assert len(net.stages[2][0].conv1.theta) == 0
    w = net.stages[2][0].conv1.real_weight(192, 96, 5, 2)
    assert torch.equal(w, net.stages[2][0].conv1.weight[:192, :48])
    conv = build_supernet(NASBNN, 10).stages[2][0].conv1
    with_norm = conv.real_weight(192, 96, 3, 2)
    raw_var = conv.weight[:192, :48, 1:4, 1:4].var(dim=(1, 2, 3), unbiased=False)
    assert torch.allclose(with_norm.mean(dim=(1, 2, 3)), torch.zeros(192), atol=1e-5)
    assert torch.allclose(with_norm.var(dim=(1, 2, 3), unbiased=False), raw_var / (raw_var + 1e-5), atol=1e-4)


@pytest.mark.parametrize(("resolution", "classes"), [(32, 10), (48, 7), (96, 1000)])
def test_any_resolution_and_class_count(resolution, classes):
    net = build_supernet(NASBNN, classes).eval()
    net.set_active(NASBNN.smallest())
    with torch.no_grad():
        out = net(torch.randn(2, 3, resolution, resolution))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


def test_set_active_validates(supernet):
    bad = NASBNN.smallest()
    object.__setattr__(bad, "stem", 40)
    with pytest.raises(ArchError, match="stem: width 40"):
        supernet.set_active(bad)
