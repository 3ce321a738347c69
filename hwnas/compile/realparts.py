"""The real-valued ends of the network as scheduled TVM kernels: the 8-bit stem and the head.

Both work in the compiled network's layout: batch 1, channels last ``[H, W, C]``. The stem reads
the NCHW image, computes the 3x3 stride-2 conv (zero padding) with its exact 8-bit weights, then
the folded BatchNorm affine and RPReLU, all in one kernel. The head averages over the pixels and
applies the classifier, returning logits ``[1, classes]``. Every product is an
:func:`~hwnas.compile.epilogue.product` and every sum runs in the order its loop nest states, so
:mod:`hwnas.compile.reference` computes the same float32 values bit for bit.
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

from hwnas.arch import STEM_IN_CHANNELS, STEM_KERNEL, STEM_STRIDE, conv_out_size
from hwnas.compile.epilogue import activation_params, product, rprelu

MAX_LANES = 32  # float lanes of one vectorised loop: two AVX-512 registers


def vector_lanes(n: int) -> int:
    """Length of the vector loops over an axis of ``n``: the largest power of two dividing it, capped.

    LLVM legalises a vector of a length that is not a power of two (24, 48 floats) badly: the stem
    vectorised over all 24 or 48 channels at once ran 3-5x slower than over 32.
    """
    return min(n & -n, MAX_LANES)


def stem_kernel(c: int, resolution: int) -> tirx.PrimFunc:
    """PrimFunc(image [1, 3, R, R], weight [3, 3, 3, c] (ci, ky, kx, co), scale, bias, shift_in,
    slope, shift_out, out [H, H, c])."""
    size = conv_out_size(resolution, STEM_KERNEL, STEM_STRIDE)
    image = te.placeholder((1, STEM_IN_CHANNELS, resolution, resolution), "float32", name="image")
    weight = te.placeholder((STEM_IN_CHANNELS, STEM_KERNEL, STEM_KERNEL, c), "float32", name="weight")
    scale = te.placeholder((c,), "float32", name="stem_scale")
    bias = te.placeholder((c,), "float32", name="stem_bias")
    act = activation_params(c, "stem")
    ci = te.reduce_axis((0, STEM_IN_CHANNELS), name="ci")
    ky = te.reduce_axis((0, STEM_KERNEL), name="ky")
    kx = te.reduce_axis((0, STEM_KERNEL), name="kx")
    pad = STEM_KERNEL // 2

    def pixel(y, x):
        iy, ix = y * STEM_STRIDE + ky - pad, x * STEM_STRIDE + kx - pad
        inside = tirx.all(iy >= 0, iy < resolution, ix >= 0, ix < resolution)
        return tirx.if_then_else(inside, image[0, ci, iy, ix], tirx.const(0, "float32"))

    acc = te.compute(
        (size, size, c),
        lambda y, x, o: te.sum(product(pixel(y, x), weight[ci, ky, kx, o]), axis=[ci, ky, kx]),
        name="acc",
    )
    out = te.compute(
        (size, size, c), lambda y, x, o: rprelu(product(acc[y, x, o], scale[o]) + bias[o], o, *act), name="out"
    )
    sch = tvm.s_tir.Schedule(te.create_prim_func([image, weight, scale, bias, *act, out]))
    block = sch.get_sblock("acc")
    y, x, o, r_ci, r_ky, r_kx = sch.get_loops(block)
    lanes = vector_lanes(c)
    o_out, o_in = sch.split(o, [None, lanes])
    sch.reorder(y, x, r_ci, r_ky, r_kx, o_out, o_in)
    sch.vectorize(o_in)
    sch.unroll(o_out)
    sch.set_scope(block, 0, "local")
    out_block = sch.get_sblock("out")
    sch.reverse_compute_at(out_block, x)
    sch.vectorize(sch.split(sch.get_loops(out_block)[-1], [None, lanes])[1])
    sch.parallel(y)
    init = sch.decompose_reduction(block, r_ci)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def head_kernel(c: int, size: int, classes: int) -> tirx.PrimFunc:
    """PrimFunc(x [size, size, c], weight [c, classes] (transposed), bias [classes], logits [1, classes]):
    global average pooling, then the full-precision classifier.

    Both reductions keep their reduced axis outermost and vectorise over the contiguous one
    (channels for the pooling, classes for the classifier), so no horizontal sums are needed; the
    classifier, which reads its whole weight matrix once per image, runs on every core.
    """
    x = te.placeholder((size, size, c), "float32", name="x")
    weight = te.placeholder((c, classes), "float32", name="weight")
    bias = te.placeholder((classes,), "float32", name="bias")
    ry = te.reduce_axis((0, size), name="ry")
    rx = te.reduce_axis((0, size), name="rx")
    total = te.compute((c,), lambda o: te.sum(x[ry, rx, o], axis=[ry, rx]), name="total")
    pooled = te.compute((c,), lambda o: total[o] / tirx.const(size * size, "float32"), name="pooled")
    rc = te.reduce_axis((0, c), name="rc")
    dot = te.compute((1, classes), lambda _, j: te.sum(product(pooled[rc], weight[rc, j]), axis=rc), name="dot")
    logits = te.compute((1, classes), lambda _, j: dot[0, j] + bias[j], name="logits")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, weight, bias, logits]))
    o, r_y, r_x = sch.get_loops(sch.get_sblock("total"))
    o_out, o_in = sch.split(o, [None, vector_lanes(c)])
    sch.reorder(o_out, r_y, r_x, o_in)
    sch.vectorize(o_in)
    _, j, r_c = sch.get_loops(sch.get_sblock("dot"))
    j_out, j_in = sch.split(j, [None, 16])
    sch.reorder(j_out, r_c, j_in)
    sch.vectorize(j_in)
    sch.parallel(j_out)
    return sch.mod["main"]
