"""Binary conv kernels and packers against the PyTorch reference, bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from hwnas.compile import tvm_targets
from hwnas.compile.binconv import ConvShape, Tile, binary_conv2d, choose_tile
from hwnas.compile.bitpack import pack_activations, pack_activations_ref, pack_weights, packer_for
from hwnas.compile.runner import build, export_cross, run
from hwnas.targets.target import load_target

HOST_TARGETS = ("local", "x86-avx2")
EM_AARCH64 = 183
AARCH64 = load_target("aarch64")

# (c_in, c_out, k, groups, stride, H, W): groups, kernels 3/5/1, strides 1/2, odd and tiny sizes,
# channel counts that are not multiples of 64 (and some above 64 per group)
CONV_SHAPES = [
    (40, 40, 3, 2, 1, 8, 8),
    (96, 96, 5, 2, 2, 7, 7),
    (130, 70, 1, 1, 1, 6, 5),
    (48, 48, 3, 1, 2, 9, 8),
    (160, 160, 5, 4, 1, 7, 7),
    (256, 256, 3, 8, 2, 8, 8),
    (200, 136, 3, 1, 1, 5, 7),
    (24, 24, 5, 3, 2, 6, 6),
    (384, 768, 1, 1, 1, 7, 7),
]


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    tvm_targets.set_num_threads()


def signs(x: np.ndarray) -> np.ndarray:
    """The model's sign: +1 where x >= 0 (including -0.0), else -1."""
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def reference_conv(a: np.ndarray, w_sign: np.ndarray, shape: ConvShape) -> np.ndarray:
    """F.conv2d on +-1 values with the +1 spatial padding, channels last like the kernel."""
    padded = F.pad(torch.from_numpy(a)[None], [shape.pad] * 4, value=1.0)
    out = F.conv2d(padded, torch.from_numpy(w_sign), stride=shape.stride, groups=shape.groups)
    return out[0].permute(1, 2, 0).numpy()


def random_layer(shape: ConvShape, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input, threshold and weights, with exact zeros and -0.0 at the sign's boundary."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.c_in, shape.height, shape.width)).astype(np.float32)
    threshold = (0.2 * rng.standard_normal(shape.c_in)).astype(np.float32)
    x[:, 0, 0] = threshold  # x - t == 0 -> +1
    threshold[0], x[0, -1, -1] = 0.0, -0.0
    w = rng.standard_normal((shape.c_out, shape.cg, shape.k, shape.k)).astype(np.float32)
    w[0, 0] = 0.0
    return x, threshold, w


@pytest.mark.parametrize("target_name", HOST_TARGETS)
@pytest.mark.parametrize("dims", CONV_SHAPES, ids=lambda d: "c{}-{}_k{}_g{}_s{}_{}x{}".format(*d))
def test_conv_matches_torch(target_name: str, dims: tuple[int, ...]) -> None:
    shape = ConvShape(*dims)
    target = load_target(target_name).tvm_target()
    func, tile = binary_conv2d(shape, target)
    x, threshold, w = random_layer(shape, seed=sum(dims))
    act = pack_activations_ref(x, threshold, shape.groups, shape.pad, tile.word_bits)
    out = run(
        build(func, target),
        act,
        pack_weights(w, shape.groups, tile.vb, tile.word_bits),
        out_shape=shape.output_shape,
        out_dtype="int32",
    )
    expected = reference_conv(signs(x - threshold[:, None, None]), signs(w), shape)
    np.testing.assert_array_equal(out, expected)


EXPLICIT_TILES = [Tile(1, 1), Tile(4, 8), Tile(8, 4, 32), Tile(1, 24), Tile(7, 2), Tile(7, 12, 32)]


@pytest.mark.parametrize("tile", EXPLICIT_TILES, ids=str)
def test_conv_explicit_tiles(tile: Tile) -> None:
    """Tiles other than the heuristic's, including px = W_out and multi-pixel tiles."""
    shape = ConvShape(96, 48, 3, 2, 1, 8, 8) if tile.px != 7 else ConvShape(96, 48, 5, 2, 2, 14, 13)
    target = load_target("local").tvm_target()
    func, _ = binary_conv2d(shape, target, tile=tile)
    x, threshold, w = random_layer(shape, seed=tile.px)
    act = pack_activations_ref(x, threshold, shape.groups, shape.pad, tile.word_bits)
    out = run(
        build(func, target),
        act,
        pack_weights(w, shape.groups, tile.vb, tile.word_bits),
        out_shape=shape.output_shape,
        out_dtype="int32",
    )
    np.testing.assert_array_equal(out, reference_conv(signs(x - threshold[:, None, None]), signs(w), shape))


def test_conv_affine_epilogue_and_explicit_tile() -> None:
    shape = ConvShape(64, 32, 3, 2, 2, 8, 8)
    target = load_target("local").tvm_target()
    func, tile = binary_conv2d(shape, target, tile=Tile(px=2, vb=8, word_bits=32), affine=True)
    assert tile == Tile(px=2, vb=8, word_bits=32)
    x, threshold, w = random_layer(shape, seed=7)
    scale = np.linspace(-1.5, 2.0, shape.c_out, dtype=np.float32)
    bias = np.linspace(3.0, -1.0, shape.c_out, dtype=np.float32)
    out = run(
        build(func, target),
        pack_activations_ref(x, threshold, shape.groups, shape.pad, 32),
        pack_weights(w, shape.groups, tile.vb, 32),
        scale,
        bias,
        out_shape=shape.output_shape,
        out_dtype="float32",
    )
    dot = reference_conv(signs(x - threshold[:, None, None]), signs(w), shape)
    np.testing.assert_allclose(out, dot * scale + bias, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("mcpu", "dims", "tile"),
    [  # (c_in, c_out, k, groups, stride, H=W): a power of two of registers, or part of one
        ("znver4", (96, 96, 5, 2, 1, 56), Tile(4, 16, 64)),  # 48 per group: not 24 lanes of 8
        ("znver4", (96, 96, 5, 4, 2, 56), Tile(7, 12, 32)),  # 24 per group, strided: not 24 lanes of 16
        ("znver4", (24, 24, 3, 1, 1, 112), Tile(8, 8, 32)),  # a power of two within one register
        ("znver4", (24, 48, 1, 1, 1, 112), Tile(1, 8, 32)),  # tiled shortcut: vb divides c_in
        ("znver4", (48, 64, 1, 1, 1, 56), Tile(1, 16, 64)),  # not 32: blocks across the wrap at 48
        ("znver4", (768, 768, 1, 1, 1, 7), Tile(1, 32, 64)),
        ("haswell", (96, 96, 5, 4, 2, 56), Tile(4, 8, 64)),  # not 12 lanes of 4
        ("haswell", (96, 96, 5, 2, 1, 56), Tile(2, 16, 64)),
    ],
)
def test_tiles_fill_whole_registers(mcpu: str, dims: tuple[int, ...], tile: Tile) -> None:
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    assert choose_tile(ConvShape(*dims, dims[-1]), target) == tile


def test_tile_must_divide_shape() -> None:
    with pytest.raises(ValueError):
        shape = ConvShape(64, 64, 3, 1, 1, 7, 7)
        binary_conv2d(shape, load_target("local").tvm_target(), tile=Tile(px=2, vb=8))


def test_reference_packer_layout() -> None:
    """Bit j of word w of group g is channel g * cg + 64 w + j; bit 1 means -1; zero border."""
    c, groups, pad = 140, 2, 1
    x = np.ones((c, 1, 1), np.float32)
    x[[0, 63, 64, 69, 70, 139], 0, 0] = -1.0
    packed = pack_activations_ref(x, np.zeros(c, np.float32), groups, pad)
    assert packed.shape == (3, 3, 4) and packed.dtype == np.uint64
    assert not packed[0].any() and not packed[:, 0].any()
    cell = [int(v) for v in packed[1, 1]]
    assert cell == [(1 << 0) | (1 << 63), (1 << 0) | (1 << 5), 1 << 0, 1 << 5]  # cg = 70


@pytest.mark.parametrize("target_name", (*HOST_TARGETS, "aarch64-portable"))
@pytest.mark.parametrize("layout", ("NHWC", "NCHW"))
@pytest.mark.parametrize("word_bits", (32, 64))
@pytest.mark.parametrize("dims", [(40, 5, 6, 2, 1), (96, 7, 7, 2, 2), (200, 9, 4, 1, 0), (192, 6, 6, 3, 1)])
def test_activation_packer(target_name: str, layout: str, word_bits: int, dims: tuple[int, ...]) -> None:
    c, h, w, groups, pad = dims
    x, threshold, _ = random_layer(ConvShape(c, c, 2 * pad + 1, groups, 1, h, w), seed=c + h)
    # the portable packer (chosen for non-x86 targets) is tested by building it for the host
    target = load_target(target_name.removesuffix("-portable")).tvm_target()
    func = pack_activations(c, h, w, groups, pad, target, layout, word_bits)
    host = load_target("local").tvm_target() if target_name.endswith("portable") else target
    data = np.ascontiguousarray(x.transpose(1, 2, 0)) if layout == "NHWC" else x
    expected = pack_activations_ref(x, threshold, groups, pad, word_bits)
    out = run(build(func, host), data, threshold, out_shape=expected.shape, out_dtype=str(expected.dtype))
    np.testing.assert_array_equal(out, expected)


def test_weight_packer_layout() -> None:
    """[c_out / vb, k, k, words, vb]: output channel b * vb + v, input channel 64 w + j at bit j."""
    w = np.ones((16, 70, 3, 3), np.float32)
    w[9, 66, 2, 1] = -1.0
    packed = pack_weights(w, groups=2, vb=8)
    assert packed.shape == (2, 3, 3, 2, 8)
    assert np.count_nonzero(packed) == 1 and int(packed[1, 2, 1, 1, 1]) == 1 << 2


def test_packer_and_conv_in_a_relax_module() -> None:
    """The PrimFuncs are private and compose with R.call_tir, as the network compiler uses them."""
    shape = ConvShape(64, 64, 3, 2, 1, 8, 8)
    target = load_target("local").tvm_target()
    conv, tile = binary_conv2d(shape, target)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((shape.height, shape.width, shape.c_in), "float32"))
    thr = relax.Var("thr", relax.TensorType((shape.c_in,), "float32"))
    wgt = relax.Var("wgt", relax.TensorType(shape.packed_weight_shape(tile.vb, tile.word_bits), tile.dtype))
    with bb.function("main", [x, thr, wgt]):
        with bb.dataflow():
            packer = bb.add_func(packer_for(shape, tile, target), "pack")
            packed = relax.TensorType(shape.packed_input_shape(tile.word_bits), tile.dtype)
            act = bb.emit(relax.call_tir(packer, [x, thr], packed))
            out = bb.emit_output(
                relax.call_tir(bb.add_func(conv, "binconv"), [act, wgt], relax.TensorType(shape.output_shape, "int32"))
            )
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())
    xv, threshold, w = random_layer(shape, seed=3)
    inputs = (
        np.ascontiguousarray(xv.transpose(1, 2, 0)),
        threshold,
        pack_weights(w, shape.groups, tile.vb, tile.word_bits),
    )
    got = vm["main"](*(tvm.runtime.tensor(v) for v in inputs))
    expected = reference_conv(signs(xv - threshold[:, None, None]), signs(w), shape)
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.skipif(shutil.which(AARCH64.cc) is None, reason="no aarch64 cross compiler")
def test_aarch64_cross_compile(tmp_path) -> None:
    target = AARCH64.tvm_target()
    func, _ = binary_conv2d(ConvShape(96, 96, 3, 2, 2, 14, 14), target)
    lib = export_cross(func, target, tmp_path / "conv.so", AARCH64.cc)
    header = lib.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == EM_AARCH64
