"""The compiled network equals its PyTorch reference bit for bit, on every build and CPU.

Trained-like weights (non-trivial BatchNorm statistics, thresholds near the values) put pre-sign
values within rounding of their thresholds, where any difference in rounding flips a bit. Each
build compiles 20 subnets at 32x32 (the largest and 19 random ones) into traced modules of 5, and
the smallest and largest at 224 into another; every activation is compared with
:mod:`hwnas.compile.reference`.
"""

from __future__ import annotations

import random
import zlib
from functools import cache

import numpy as np
import pytest
import torch
import tvm

from hwnas.compile.deploy import CompiledNet, check_outputs, verification_images
from hwnas.compile.fold import FoldedNet, fold
from hwnas.compile.network import build_networks, layer_convs
from hwnas.compile.realparts import stem_kernel
from hwnas.compile.reference import binary_conv, reference_outputs, stem
from hwnas.model.layers import shortcut
from hwnas.space import NASBNN
from hwnas.targets.target import load_target
from tests.builds import BUILDS, build_target, runs_here
from tests.test_compile import trained_like_supernet

SEEDS_32 = range(20)  # seed 0: the largest subnet, the others random
EXTREMES_224 = ("smallest", "largest")
CHUNK = 5


@cache
def supernet():
    """The trained-like supernet of tests/test_compile.py (its subnet 3 flipped a bit on an Intel
    host before this definition of equal), built once."""
    return trained_like_supernet(32)


def arch_of(key: int | str):
    if key in ("largest", 0):
        return NASBNN.largest()
    return NASBNN.smallest() if key == "smallest" else NASBNN.sample(random.Random(key))


@cache
def folded(key: int | str, resolution: int) -> FoldedNet:
    """The subnet folded straight from the supernet (what its extracted copy folds to, without the
    copy), with the 32x32 BN statistics at every resolution (a forward pass at 224 to collect
    statistics would take long and change nothing here)."""
    net = supernet()
    net.set_active(arch_of(key))
    return fold(net, resolution)


@cache
def compiled(build: str, keys: tuple[int | str, ...], resolution: int) -> CompiledNet:
    """Test networks of one build and resolution in one traced module, compiled once."""
    module = build_networks({f"net_{k}": folded(k, resolution) for k in keys}, build_target(build), trace=True)
    return CompiledNet(tvm.compile(module, target=build_target(build)))


def module_of(key: int | str, resolution: int) -> tuple[int | str, ...]:
    """The networks compiled together with ``key``: chunks of 5, so that no single test (the first
    of its chunk pays for folding and compiling) comes near the suite's per-test timeout."""
    keys = tuple(SEEDS_32 if resolution == 32 else EXTREMES_224)
    start = keys.index(key) // CHUNK * CHUNK
    return keys[start : start + CHUNK]


def check(build: str, key: int | str, resolution: int) -> None:
    """One random image (seeded per build and network) through the compiled and reference network:
    every activation, stem to logits, bit-identical."""
    if not runs_here(build):
        pytest.skip(f"build {build} does not run on this host")
    net = folded(key, resolution)
    image = verification_images(resolution, 1, seed=zlib.crc32(f"{build}/{key}".encode()))[0]
    outputs = compiled(build, module_of(key, resolution), resolution).outputs(image, f"net_{key}")
    assert len(outputs) == 2 + 2 * len(net.layers)  # stem, every binary conv, logits
    result = check_outputs(net, [image], [outputs])
    assert result.ok and result.differing == 0 and result.max_rel_error == 0.0, result
    assert result.values == sum(output.size for output in outputs)


@pytest.mark.parametrize("key", SEEDS_32)
@pytest.mark.parametrize("build", BUILDS)
def test_every_activation_bit_identical_at_32(build, key):
    check(build, key, 32)


@pytest.mark.parametrize("key", EXTREMES_224)
@pytest.mark.parametrize("build", BUILDS)
def test_extremes_bit_identical_at_224(build, key):
    check(build, key, 224)


def test_a_flipped_bit_is_found_and_named():
    net = folded(3, 32)
    image = verification_images(32, 1)[0]
    outputs = [t[0].permute(1, 2, 0).numpy().copy() for _, t in reference_outputs(net, image)[:-1]]
    outputs.append(reference_outputs(net, image)[-1][1].numpy())
    assert check_outputs(net, [image], [outputs]).ok
    outputs[3][0, 0, 0] = np.nextafter(outputs[3][0, 0, 0], np.float32(np.inf))  # one ulp, one value
    result = check_outputs(net, [image], [outputs])
    assert not result.ok and result.differing == 1
    assert result.first_difference == reference_outputs(net, image)[3][0]


@pytest.mark.parametrize(("build", "fma"), [("x86-avx2", "vfmadd"), ("aarch64", "fmla")])
def test_products_are_not_contracted_into_fma(monkeypatch, build, fma):
    """On FMA builds (haswell, AArch64 NEON) LLVM fuses the stem's multiply-adds unless the product
    is fenced (only code generation: nothing runs, so the AArch64 build is checked on any host)."""
    target = load_target("aarch64").tvm_target() if build == "aarch64" else build_target(build)

    def stem_asm() -> str:
        return tvm.compile(stem_kernel(24, 32), target=target).mod.inspect_source("asm")

    assert fma not in stem_asm()
    monkeypatch.setattr("hwnas.compile.realparts.product", lambda a, b: a * b)
    assert fma in stem_asm()


@pytest.mark.parametrize("key", [0, 3, "smallest"])
def test_fold_matches_the_model_layer_by_layer(key):
    """Folding BN and the weight scale into one affine changes only roundings: each folded conv,
    fed the model's own input, gives the model's output within float32 noise (same sign bits)."""
    subnet = supernet().extract(arch_of(key))
    net = fold(subnet, 32)
    x = torch.from_numpy(verification_images(32, 1, seed=5)[0])
    with torch.no_grad():
        got = stem(net, x)
        x = subnet.stem(x, net.arch.stem, subnet.mode)
        torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)
        for (s, i, layer), folded_layer in zip(subnet.active.layers(), net.layers, strict=True):
            block = subnet.stages[s][i]
            (first, _), _ = layer_convs(folded_layer.shape)
            c, mode = x.shape[1], subnet.mode
            y = block.bn1(block.conv1(block.rsign1(x, True), c, layer.k, layer.g, first.stride, mode))
            y = block.act1(y + shortcut(x, c, first.stride))
            got = binary_conv(folded_layer.group_conv, x, first.groups, first.stride)
            torch.testing.assert_close(got, y, rtol=1e-5, atol=1e-5)
            z = block.act2(
                block.bn2(block.conv2(block.rsign2(y, True), layer.c, 1, 1, 1, mode)) + shortcut(y, layer.c, 1)
            )
            torch.testing.assert_close(binary_conv(folded_layer.pointwise, y, 1, 1), z, rtol=1e-5, atol=1e-5)
            x = z
