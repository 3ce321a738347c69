"""Element-wise tails fused into the compiled kernels: folded affine, Bi-Real shortcut, RPReLU.

They mirror :mod:`hwnas.model.layers` (``shortcut``) and :mod:`hwnas.model.binary` (``RPReLU``)
operation for operation, in the same order, and every product goes through :func:`product`, so
the compiled network rounds exactly as :mod:`hwnas.compile.reference` does on every CPU.
"""

from __future__ import annotations

from enum import Enum

from tvm import te, tirx

ZERO = tirx.const(0, "float32")
_FENCE = "llvm.arithmetic.fence"


def product(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """``a * b`` rounded to float32 on its own, never fused with the add that follows it.

    TVM lets LLVM contract a multiply and an add into one FMA (one rounding instead of two)
    wherever the CPU has FMA: an AVX-512 or AVX2 build would then round differently from an
    SSE-only build and from PyTorch, and a value near a sign threshold could land on the other
    side. ``llvm.arithmetic.fence`` blocks the contraction on every LLVM backend (x86, AArch64).
    """
    return tirx.call_llvm_pure_intrin("float32", _FENCE, a * b)


class Residual(Enum):
    """Which Bi-Real shortcut a binary conv's epilogue adds, and how it reads its source."""

    IDENTITY = "identity"  # source [H_out, W_out, c_out]
    POOL = "pool"  # 2x2 average pool, ceil mode, padding not counted: source [H_in, W_in, c_out]
    TILE = "tile"  # output channel c reads source channel c mod c_src: source [H_out, W_out, c_src]

    def read(self, src: te.Tensor, y: tirx.PrimExpr, x: tirx.PrimExpr, c: tirx.PrimExpr) -> tirx.PrimExpr:
        if self is Residual.IDENTITY:
            return src[y, x, c]
        if self is Residual.TILE:
            return src[y, x, c % src.shape[2]]
        height, width = src.shape[0], src.shape[1]
        total, count = None, None
        for i in (0, 1):  # the order PyTorch's average pool adds the window in
            for j in (0, 1):
                inside = tirx.all(2 * y + i < height, 2 * x + j < width)
                at = src[tirx.min(2 * y + i, height - 1), tirx.min(2 * x + j, width - 1), c]
                value = tirx.Select(inside, at, ZERO)
                one = tirx.Select(inside, tirx.const(1, "float32"), ZERO)
                total = value if total is None else total + value
                count = one if count is None else count + one
        return total / count


def activation_params(c: int, prefix: str) -> list[te.Tensor]:
    """Per-channel inputs of an RPReLU: shift_in, slope, shift_out."""
    return [te.placeholder((c,), "float32", name=f"{prefix}_{n}") for n in ("shift_in", "slope", "shift_out")]


def rprelu(
    v: tirx.PrimExpr, c: tirx.PrimExpr, shift_in: te.Tensor, slope: te.Tensor, shift_out: te.Tensor
) -> tirx.PrimExpr:
    """RPReLU as the model computes it: z = v - shift_in; (z if z >= 0 else z * slope) + shift_out."""
    z = v - shift_in[c]
    return tirx.Select(z >= ZERO, z, product(z, slope[c])) + shift_out[c]
