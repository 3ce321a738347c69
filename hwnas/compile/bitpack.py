"""Bit packing into the layout documented in ``hwnas.compile.binconv``.

Weights are packed once, offline, with NumPy (``pack_weights``). Activations are packed at run
time by a TVM kernel (``pack_activations``), which also writes the zero (= +1) border the next
conv needs. On x86 with AVX and channels-last input it compares 8 floats at a time and gathers their
sign bits with ``movmskps`` (a movemask), 8 instructions per 64-bit word instead of a 64-term
bit sum; elsewhere (NCHW input, other targets, cg not a multiple of 8) a portable bit sum.
``pack_activations_ref`` is the NumPy reference the kernel is tested against.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import tvm
from tvm import te, tirx
from tvm.script import tirx as T

from hwnas.compile.binconv import WORD_DTYPES, ConvShape, Tile
from hwnas.compile.tvm_targets import has_movemask

MOVEMASK_LANES = 8
_MOVEMASK_INTRIN = "llvm.x86.avx.movmsk.ps.256"


def _pack_bits(neg: np.ndarray, groups: int, word_bits: int) -> np.ndarray:
    """Pack booleans [..., channels] (True = -1) per group into words [..., groups * words]."""
    *lead, channels = neg.shape
    cg = channels // groups
    words = -(-cg // word_bits)
    bits = np.zeros((*lead, groups, words * word_bits), dtype=bool)
    bits[..., :cg] = neg.reshape(*lead, groups, cg)
    packed = np.packbits(bits, axis=-1, bitorder="little")  # bytes, lowest channel in bit 0
    little = np.ascontiguousarray(packed).view(f"<u{word_bits // 8}")
    return little.astype(WORD_DTYPES[word_bits]).reshape(*lead, groups * words)


def pack_weights(weight: np.ndarray, groups: int, vb: int, word_bits: int = 64) -> np.ndarray:
    """Pack real OIHW weights [c_out, c_in/groups, k, k] (sign taken here) to [c_out/vb, k, k, words, vb]."""
    c_out, _, k, _ = weight.shape
    if (c_out // groups) % vb:
        raise ValueError(f"vb {vb} must divide the output channels per group {c_out // groups}")
    neg = np.asarray(weight) < 0  # sign(w) = -1 exactly where w < 0
    words = _pack_bits(neg.transpose(0, 2, 3, 1), 1, word_bits)  # [c_out, k, k, words]
    return np.ascontiguousarray(words.reshape(c_out // vb, vb, k, k, -1).transpose(0, 2, 3, 4, 1))


def pack_activations_ref(
    x: np.ndarray, threshold: np.ndarray, groups: int, pad: int, word_bits: int = 64
) -> np.ndarray:
    """Reference packer: float CHW [c, h, w] -> words [h + 2 pad, w + 2 pad, groups * words]."""
    neg = (x - threshold[:, None, None]) < 0
    packed = _pack_bits(neg.transpose(1, 2, 0), groups, word_bits)
    return np.pad(packed, ((pad, pad), (pad, pad), (0, 0)))


@cache
def _packer_movemask(c: int, h: int, w: int, groups: int, pad: int, word_bits: int) -> tirx.PrimFunc:
    """x86 packer for NHWC input: one movmskps per 8 channels; needs cg % 8 == 0.

    Cached: parsing the TVMScript takes about 0.13 s, 90 % of building a network's module, and a
    network, a profile and a search build the same few shapes again and again (PrimFuncs are
    immutable).
    """
    cg = c // groups
    words = -(-cg // word_bits)
    per_word = word_bits // MOVEMASK_LANES
    dtype = WORD_DTYPES[word_bits]
    chunks = cg // MOVEMASK_LANES
    hp, wp = h + 2 * pad, w + 2 * pad
    ones = tirx.Broadcast(tirx.const(1.0, "float32"), MOVEMASK_LANES)
    minus_ones = tirx.Broadcast(tirx.const(-1.0, "float32"), MOVEMASK_LANES)

    @T.prim_func(private=True, s_tir=True)
    def pack(
        x: T.Buffer((h, w, c), "float32"),
        thr: T.Buffer((c,), "float32"),
        out: T.Buffer((hp, wp, groups * words), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        x_flat = T.decl_buffer((h * w * c,), "float32", data=x.data)
        for yp in T.parallel(hp):
            for xp, g, wd in T.grid(wp, groups, words):
                with T.sblock("pack"):
                    vy, vx, vg, vw = T.axis.remap("SSSS", [yp, xp, g, wd])
                    T.reads(x[0:h, 0:w, vg * cg : vg * cg + cg], thr[vg * cg : vg * cg + cg])
                    T.writes(out[vy, vx, vg * words + vw])
                    out[vy, vx, vg * words + vw] = T.Cast(dtype, 0)
                    if pad <= vy < h + pad and pad <= vx < w + pad:
                        for q in T.unroll(per_word):
                            if vw * per_word + q < chunks:
                                base = vg * cg + (vw * per_word + q) * MOVEMASK_LANES
                                # flat Ramp index: a 3-d index is not simplified to a Ramp
                                # and codegen would gather the 8 floats one by one
                                pixel = ((vy - pad) * w + vx - pad) * c
                                diff = (
                                    x_flat[T.Ramp(pixel + base, 1, MOVEMASK_LANES)]
                                    - thr[T.Ramp(base, 1, MOVEMASK_LANES)]
                                )
                                # -1.0 where x - t < 0 so that -0.0 (which is >= 0) maps to +1
                                neg = T.Select(diff < T.float32(0), minus_ones, ones)
                                mask = T.call_llvm_pure_intrin("int32", _MOVEMASK_INTRIN, neg)
                                out[vy, vx, vg * words + vw] = out[vy, vx, vg * words + vw] | (
                                    T.shift_left(T.Cast(dtype, mask), T.Cast(dtype, q * MOVEMASK_LANES))
                                )

    return pack


def _packer_portable(c: int, h: int, w: int, groups: int, pad: int, layout: str, word_bits: int) -> tirx.PrimFunc:
    """Portable packer: a bit sum over the channels of a word, for any target and layout."""
    cg = c // groups
    words = -(-cg // word_bits)
    dtype = WORD_DTYPES[word_bits]
    x = te.placeholder((h, w, c) if layout == "NHWC" else (c, h, w), "float32", name="x")
    thr = te.placeholder((c,), "float32", name="thr")
    j = te.reduce_axis((0, word_bits), name="j")

    def bit(y, xx, word, jj):
        ch = (word // words) * cg + (word % words) * word_bits + jj
        val = x[y, xx, ch] if layout == "NHWC" else x[ch, y, xx]
        neg = tirx.all((word % words) * word_bits + jj < cg, val - thr[ch] < tirx.const(0, "float32"))
        return tirx.if_then_else(neg, tirx.const(1, dtype) << jj.astype(dtype), tirx.const(0, dtype))

    def word_at(yp, xp, word):
        inside = tirx.all(yp >= pad, yp < h + pad, xp >= pad, xp < w + pad)
        return te.sum(tirx.if_then_else(inside, bit(yp - pad, xp - pad, word, j), tirx.const(0, dtype)), axis=j)

    out = te.compute((h + 2 * pad, w + 2 * pad, groups * words), word_at, name="pack")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, thr, out]))
    sch.parallel(sch.get_loops(sch.get_sblock("pack"))[0])
    return sch.mod["main"].without_attr("global_symbol")  # private: a Relax module names it


def pack_activations(
    c: int,
    h: int,
    w: int,
    groups: int,
    pad: int,
    target: tvm.target.Target,
    layout: str = "NHWC",
    word_bits: int = 64,
) -> tirx.PrimFunc:
    """PrimFunc (x [h, w, c] or [c, h, w] float32, threshold [c] float32, out words) packing
    sign(x - threshold) for a conv with ``groups`` groups and spatial padding ``pad``."""
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout must be NHWC or NCHW, got {layout!r}")
    if layout == "NHWC" and has_movemask(target) and (c // groups) % MOVEMASK_LANES == 0:
        return _packer_movemask(c, h, w, groups, pad, word_bits)
    return _packer_portable(c, h, w, groups, pad, layout, word_bits)


def packer_for(shape: ConvShape, tile: Tile, target: tvm.target.Target, layout: str = "NHWC") -> tirx.PrimFunc:
    """The activation packer feeding the conv ``shape`` built with ``tile``."""
    return pack_activations(
        shape.c_in, shape.height, shape.width, shape.groups, shape.pad, target, layout, tile.word_bits
    )
