"""OPs, the NAS-BNN paper's cost measure: FLOPs + Int8OPs / 8 + BOPs / 64.

All counts are multiply-accumulates of convolutions and the classifier: the stem conv is 8-bit
(Int8OPs), every searched layer's two convs are binary (BOPs), the classifier is real (FLOPs).
Element-wise work (BatchNorm, RSign, RPReLU, shortcuts, pooling) is not counted, as in the paper
and ReActNet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hwnas.arch import STEM_IN_CHANNELS, STEM_KERNEL, Arch, LayerShape


@dataclass(frozen=True)
class Ops:
    """Operation counts in multiply-accumulates."""

    flops: int
    int8ops: int
    bops: int

    @property
    def macs(self) -> int:
        """Every multiply-accumulate, whatever its precision (a float32 network runs them all)."""
        return self.flops + self.int8ops + self.bops

    @property
    def ops(self) -> float:
        return self.flops + self.int8ops / 8 + self.bops / 64

    def millions(self) -> dict[str, float]:
        """The counts in millions, keyed as the CLI's JSON output."""
        out = {f"{key}_m": value / 1e6 for key, value in asdict(self).items()}
        return {"ops_m": self.ops / 1e6, **out}


def layer_bops(shape: LayerShape, width_out: int | None = None) -> int:
    """Binary MACs of one searched layer: the k x k group conv plus the 1x1 conv.

    ``shape`` gives the output height; ``width_out`` the output width when it differs.
    """
    pixels = shape.size_out * (shape.size_out if width_out is None else width_out)
    group_conv = pixels * shape.c_in * (shape.c_in // shape.g) * shape.k * shape.k
    pointwise = pixels * shape.c_in * shape.c_out
    return group_conv + pointwise


def count_ops(arch: Arch, resolution: int = 224, num_classes: int = 1000, width: int | None = None) -> Ops:
    """OPs of ``arch`` on ``resolution`` x ``width`` inputs (square by default) with ``num_classes`` outputs."""
    width = resolution if width is None else width
    stem_pixels = arch.stem_size(resolution) * arch.stem_size(width)
    int8ops = stem_pixels * arch.stem * STEM_IN_CHANNELS * STEM_KERNEL * STEM_KERNEL
    rows, cols = arch.layer_shapes(resolution), arch.layer_shapes(width)
    bops = sum(layer_bops(row, col.size_out) for row, col in zip(rows, cols, strict=True))
    flops = arch.last_width * num_classes
    return Ops(flops=flops, int8ops=int8ops, bops=bops)
