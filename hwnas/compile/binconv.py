"""Binary (XNOR/popcount) conv2d for TVM: the bit layout, the padding rule, compute and schedules.

Convention (the model's, matched exactly)
-----------------------------------------
Activations are a = sign(x - threshold) and weights sign(w), with sign(v) = +1 if v >= 0 else -1.
Weights have PyTorch's OIHW shape [c_out, c_in / groups, k, k]. A k x k conv pads its binarised
input spatially by p = k // 2 with the value **+1**, so the reference is::

    F.conv2d(F.pad(a, [p, p, p, p], value=1.0), w_sign, stride=s, groups=g)

with a, w_sign in {-1, +1} float32 and stride s in {1, 2}. The kernel returns that integer dot
product exactly (int32), or ``scale[c] * dot + bias[c]`` (float32) with the affine epilogue.

Zero padding (an imported run's ``nasbnn`` convention, the authors' rule) is the same kernel on
the same +1-padded bits minus what the border contributed: ``dot_zero = dot - border[ry, rx, c]``,
where ``border`` holds, per output channel, the sum of the weights that fall on padding. It
depends only on how far an output pixel is from each edge, so the table keeps the ``lead``
border rows, one interior row and the ``tail`` border rows of each axis (:func:`border_rows`).

Bit layout (written down here once; ``bitpack`` produces it)
-------------------------------------------------------------
- One bit per value, **bit 1 means -1**, bit 0 means +1. Values are packed along the input
  channels of one group (cg = c_in / groups channels) into words of B = 64 bits (uint64) or
  B = 32 bits (uint32; ``Tile.word_bits``), least significant bit first: channel
  ``grp * cg + w * B + j`` is bit j of word w of group grp. A group takes
  ``words = ceil(cg / B)`` words; when cg is not a multiple of B, the unused high bits of the last
  word are 0 in both operands.
- Packed activations (batch 1, channels last, already padded): ``[H + 2p, W + 2p, groups * words]``;
  word ``grp * words + w`` of a pixel is word w of group grp. The border of width p is all zero
  words: +1 in every real channel.
- Packed weights: ``[c_out / vb, k, k, words, vb]``: a block of ``vb`` consecutive output
  channels (all in one group, so vb divides c_out / groups) is contiguous per (ky, kx, word), so
  the kernel loads one vector of weights and broadcasts one activation word per output pixel.
- Output: channels last, ``[H_out, W_out, c_out]``, H_out = (H + 2p - k) // s + 1.

Why the dot product is exact: for one word, the product of two +-1 values is -1 exactly where the
bits differ, so the sum over the real bits is n - 2 * popcount(a xor w). Unused channel bits are 0
in both operands and add nothing to the popcount; the zero border words are +1 activations, as the
padding rule wants, and their real bits still count in n. Hence for every output,
dot = k * k * cg - 2 * sum(popcount(a xor w)).

Schedule (CPU)
--------------
Popcounts accumulate in lanes of the word's width (the vector popcount yields them; converting
64-bit popcounts to 32-bit accumulators cost 20-30 %). 32-bit words are used only where they halve
the padded bits and the target has a 32-bit vector popcount (AVX-512 VPOPCNTDQ): cg = 24 (the
space's first layers with the most groups) takes one word of 32 instead of 64 and ran 1.1-2x
faster; cg = 96 in 3 words of 32 instead of 2 of 64 measured slower, not faster.
A register tile of ``px`` output pixels along x times ``vb`` output channels is kept in local
accumulators, with the (ky, kx, word) reduction outside the tile; ``px`` divides W_out
(tiles that straddle rows are avoided on purpose). The parallel loop is (channel block, output
row), fused, so layers with few channel blocks still use every thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import te, tirx

from hwnas.compile.epilogue import Residual, activation_params, product, rprelu
from hwnas.compile.tvm_targets import has_vector_popcount, vector_bits

WORD_DTYPES = {32: "uint32", 64: "uint64"}
ACC_REGISTERS = 8  # SIMD registers a tile's accumulators may take


@dataclass(frozen=True)
class ConvShape:
    """One binary conv layer, batch 1: what the kernel is specialised for."""

    c_in: int
    c_out: int
    k: int
    groups: int = 1
    stride: int = 1
    height: int = 8
    width: int = 8

    def __post_init__(self) -> None:
        if self.c_in % self.groups or self.c_out % self.groups:
            raise ValueError(f"groups {self.groups} must divide c_in {self.c_in} and c_out {self.c_out}")
        if self.k % 2 != 1 or self.stride not in (1, 2):
            raise ValueError(f"need an odd kernel and stride 1 or 2, got k={self.k} s={self.stride}")

    @property
    def pad(self) -> int:
        return self.k // 2

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c_in // self.groups

    @property
    def cog(self) -> int:
        """Output channels per group."""
        return self.c_out // self.groups

    def words(self, word_bits: int) -> int:
        """Words per group and pixel."""
        return -(-self.cg // word_bits)

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.pad - self.k) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.pad - self.k) // self.stride + 1

    def packed_input_shape(self, word_bits: int) -> tuple[int, int, int]:
        return (self.height + 2 * self.pad, self.width + 2 * self.pad, self.groups * self.words(word_bits))

    def packed_weight_shape(self, vb: int, word_bits: int) -> tuple[int, int, int, int, int]:
        return (self.c_out // vb, self.k, self.k, self.words(word_bits), vb)

    def residual_shape(self, residual: Residual) -> tuple[int, int, int]:
        """Shape of the shortcut's source tensor for a fused epilogue."""
        if residual is Residual.POOL:
            return (self.height, self.width, self.c_out)
        return (self.out_height, self.out_width, self.c_in if residual is Residual.TILE else self.c_out)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.out_height, self.out_width, self.c_out)


def border_rows(size_in: int, size_out: int, k: int, stride: int) -> tuple[int, int, int]:
    """(lead, tail, m): output rows along one axis whose window starts in the padding, rows whose
    window ends in it, and the rows of the correction table (lead + 1 + tail, or every row when
    no interior row is left between them)."""
    p = k // 2
    inside = [y * stride - p >= 0 and y * stride - p + k - 1 < size_in for y in range(size_out)]
    lead = inside.index(True) if True in inside else size_out
    tail = inside[::-1].index(True) if True in inside else 0
    m = lead + 1 + tail
    return (lead, tail, m) if m < size_out else (0, 0, size_out)


def border_index(v: tirx.PrimExpr, size_out: int, rows: tuple[int, int, int]) -> tirx.PrimExpr:
    """The correction table's row of output row ``v`` (see :func:`border_rows`)."""
    lead, tail, m = rows
    if m == size_out:
        return v
    return tirx.Select(v < lead, v, tirx.Select(v >= size_out - tail, v - (size_out - m), tirx.const(lead, "int32")))


@dataclass(frozen=True)
class Tile:
    """Register tile (``px`` output pixels along x times ``vb`` output channels) and word size."""

    px: int
    vb: int
    word_bits: int = 64

    @property
    def dtype(self) -> str:
        return WORD_DTYPES[self.word_bits]


def _divisors_desc(n: int, limit: int) -> list[int]:
    return [d for d in range(min(n, limit), 0, -1) if n % d == 0]


def _whole_registers(vb: int, lanes: int, stride: int = 1) -> bool:
    """True when ``vb`` word lanes fill 1, 2 or 4 SIMD registers, or a power-of-two part of one.

    Three registers' worth (vb = 24 of 8 lanes, 12 of 4) or one and a half (24 of 16) measured 1.5-3.4x
    slower than the next smaller tile on 5x5 and strided group convs (AVX-512 and AVX2 builds,
    docs/performance.md): LLVM splits such vectors unevenly. So did three quarters of one: the
    24 -> 24 3x3 conv at 112x112 (32-bit words, 16 lanes) took 119 us at vb 12 and 53 us at vb 8;
    strided group convs with 24 channels per group were 13-31 % faster at vb 12 than at 8, so
    there part of a register may be any size.
    """
    if vb < lanes:
        return stride > 1 or vb & (vb - 1) == 0
    return vb % lanes == 0 and (vb // lanes) & (vb // lanes - 1) == 0


def choose_tile(shape: ConvShape, target: tvm.target.Target) -> Tile:
    """Pick the register tile for a shape on a target (measured on Zen 5, AVX-512 and AVX2 builds).

    Words are 32 bits where that halves the padded bits and the target has a 32-bit vector
    popcount, else 64. vb is up to four SIMD registers of word lanes (as c_out / groups allows),
    a power of two of them or of a part of one (:func:`_whole_registers`): one broadcast
    activation word then feeds up to four xor-popcount-add chains. Where the shortcut tiles the
    input's channels (c_out > c_in), vb divides c_in, so a block's shortcut channels stay
    contiguous: the 24 -> 48 1x1 conv at 112x112 took 90 us at vb 16 (blocks across the wrap at
    24) and 57 at vb 8 (48 -> 64 at 56x56: 35 and 12 us). For k x k convs px is the largest
    divisor of W_out that keeps about 8 accumulator registers. For 1x1 convs one pixel per tile
    measured 20-30 % faster than 7 pixels: LLVM then keeps the block's weights in registers
    across the x loop. Other tile shapes within these bounds differ by less than the run-to-run
    noise.
    """
    word_bits = 64
    if has_vector_popcount(target) and 2 * shape.words(32) * 32 <= shape.words(64) * 64:
        word_bits = 32
    lanes = vector_bits(target) // word_bits
    divisors = _divisors_desc(shape.cog, 4 * lanes)
    if shape.c_out > shape.c_in:  # tiled shortcut (channel j reads j mod c_in): no block across a wrap
        divisors = [d for d in divisors if shape.c_in % d == 0] or divisors
    vb = next((d for d in divisors if _whole_registers(d, lanes, shape.stride)), divisors[0])
    regs_per_pixel = -(-vb // lanes)
    px = 1 if shape.k == 1 else _divisors_desc(shape.out_width, max(1, ACC_REGISTERS // regs_per_pixel))[0]
    return Tile(px=px, vb=vb, word_bits=word_bits)


def conv_compute(
    shape: ConvShape,
    tile: Tile,
    affine: bool = False,
    residual: Residual | None = None,
    zero_pad: bool = False,
    weight_scale: bool = False,
) -> list[te.Tensor]:
    """TE compute of the binary conv in the packed layout; returns [inputs..., output].

    The accumulator is indexed (channel block, y, x, lane) so that a block's group is
    ``block // (cog / vb)`` and does not depend on the vector lane. With ``residual`` the output
    is ``RPReLU(scale * dot + bias + shortcut)``, the whole tail of a binary conv of the model.
    """
    s, k, vb, words = shape.stride, shape.k, tile.vb, shape.words(tile.word_bits)
    blocks_per_group = shape.cog // vb
    act = te.placeholder(shape.packed_input_shape(tile.word_bits), tile.dtype, name="act")
    wgt = te.placeholder(shape.packed_weight_shape(vb, tile.word_bits), tile.dtype, name="wgt")
    ky = te.reduce_axis((0, k), name="ky")
    kx = te.reduce_axis((0, k), name="kx")
    kw = te.reduce_axis((0, words), name="kw")
    acc = te.compute(
        (shape.c_out // vb, shape.out_height, shape.out_width, vb),
        lambda b, y, x, v: te.sum(
            tirx.popcount(act[y * s + ky, x * s + kx, (b // blocks_per_group) * words + kw] ^ wgt[b, ky, kx, kw, v]),
            axis=[ky, kx, kw],
        ),
        name="acc",
    )
    n_bits = k * k * shape.cg

    def dot(y, x, c):
        return tirx.const(n_bits, "int32") - 2 * acc[c // vb, y, x, c % vb].astype("int32")

    if not affine and residual is None:
        out = te.compute(shape.output_shape, dot, name="out")
        return [act, wgt, out]
    scale = te.placeholder((shape.c_out,), "float32", name="scale")
    bias = te.placeholder((shape.c_out,), "float32", name="bias")
    extra: list[te.Tensor] = []  # weight scale, then the border table, after ``bias``
    if weight_scale:
        extra.append(te.placeholder((shape.c_out,), "float32", name="weight_scale"))
    if zero_pad:
        rows = border_rows(shape.height, shape.out_height, k, s)
        cols = border_rows(shape.width, shape.out_width, k, s)
        extra.append(te.placeholder((rows[2], cols[2], shape.c_out), "int32", name="border"))

    def affine_dot(y, x, c):
        d = dot(y, x, c)
        if zero_pad:
            d = d - extra[-1][border_index(y, shape.out_height, rows), border_index(x, shape.out_width, cols), c]
        if weight_scale:  # PyTorch's order: (D * s), then BatchNorm as one fused multiply-add
            return tirx.op.fma(product(d.astype("float32"), extra[0][c]), scale[c], bias[c])
        return product(d.astype("float32"), scale[c]) + bias[c]

    if residual is None:
        return [act, wgt, scale, bias, *extra, te.compute(shape.output_shape, affine_dot, name="out")]
    src = te.placeholder(shape.residual_shape(residual), "float32", name="residual")
    act_params = activation_params(shape.c_out, "act")
    out = te.compute(
        shape.output_shape,
        lambda y, x, c: rprelu(affine_dot(y, x, c) + residual.read(src, y, x, c), c, *act_params),
        name="out",
    )
    return [act, wgt, scale, bias, *extra, src, *act_params, out]


def schedule_conv(func: tirx.PrimFunc, tile: Tile) -> tirx.PrimFunc:
    """Schedule the TE-generated PrimFunc for CPUs: register tile, vector lanes, threads."""
    sch = tvm.s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    b, y, x, v, ky, kx, kw = sch.get_loops(acc)
    xo, xi = sch.split(x, [None, tile.px])
    sch.reorder(b, y, xo, ky, kx, kw, xi, v)
    sch.vectorize(v)
    sch.unroll(xi)
    # the accumulator tile stays in "global" scope: compacted to px * vb words it is then a stack
    # array that LLVM keeps in registers, while a "local" buffer is lowered to a workspace
    # allocation (TVMBackendAllocWorkspace) in every parallel task
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, xo)
    channel_loops = sch.get_loops(out)[3:]  # below b, y, xo; none at vb = 1, where the last loop
    if channel_loops:  # would be xo itself, and vectorizing it (the reduction inside) miscomputed
        sch.vectorize(channel_loops[-1])
    # parallel and vectorize before decompose_reduction: afterwards the update block is no longer
    # a reduction block and both primitives refuse it
    sch.parallel(sch.fuse(b, y))
    init = sch.decompose_reduction(acc, ky)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"].without_attr("global_symbol")  # private: a Relax module names it


def binary_conv2d(
    shape: ConvShape,
    target: tvm.target.Target,
    tile: Tile | None = None,
    affine: bool = False,
    residual: Residual | None = None,
    zero_pad: bool = False,
    weight_scale: bool = False,
) -> tuple[tirx.PrimFunc, Tile]:
    """A scheduled PrimFunc of one binary conv layer for a target, and the tile it uses.

    Arguments of the PrimFunc: packed activations (``bitpack.packer_for`` with the returned tile),
    packed weights (``bitpack.pack_weights`` with ``tile.vb`` and ``tile.word_bits``), then
    ``scale, bias`` if ``affine``; with ``residual`` instead ``scale, bias, residual source,
    shift_in, slope, shift_out`` (the fused tail, see ``conv_compute``); then the output. With
    ``weight_scale`` the per-channel weight scale follows ``bias`` (the result is then
    ``fma(dot * weight_scale, scale, bias)``, PyTorch's rounding), and with ``zero_pad`` the
    border correction table follows.
    """
    tile = tile or choose_tile(shape, target)
    if shape.cog % tile.vb or shape.out_width % tile.px:
        raise ValueError(f"tile {tile} does not divide c_out/groups={shape.cog} or W_out={shape.out_width}")
    func = te.create_prim_func(conv_compute(shape, tile, affine, residual, zero_pad, weight_scale))
    return schedule_conv(func, tile), tile
