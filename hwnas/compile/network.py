"""A folded subnet as one Relax module: every binary conv a bit-packed XNOR/popcount kernel.

Data flow per searched layer (batch 1, channels last ``[H, W, C]``), two kernels per binary conv:

    x --pack(sign(x - t1), +1 border)--> bits --binconv k x k, groups, stride--> D
      --epilogue: scale * D + bias + avgpool2(x) or x, RPReLU--> y
    y --pack(sign(y - t2))--> bits --binconv 1x1--> D --epilogue: ... + tile(y), RPReLU--> out

so each conv reads its float input once (the packer) and writes its float output once (the conv
with its fused epilogue). The stem and head are kernels of :mod:`hwnas.compile.realparts`.
Weights are Relax constants, so the exported library is self-contained: ``main(image [1, 3, R, R])
-> logits [1, classes]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from hwnas.arch import LayerConfig, LayerShape
from hwnas.compile.binconv import ConvShape, Tile, binary_conv2d
from hwnas.compile.bitpack import pack_weights, packer_for
from hwnas.compile.epilogue import Residual
from hwnas.compile.fold import Activation, FoldedConv, FoldedNet
from hwnas.compile.realparts import head_kernel, stem_kernel

OPAQUE = 8  # relax's kOpaque op pattern: keep the scheduled kernels out of operator fusion


def layer_convs(layer: LayerConfig) -> tuple[tuple[ConvShape, Residual], tuple[ConvShape, Residual]]:
    """A searched layer's two binary convs, each with the shortcut its epilogue fuses.

    The k x k group conv (c_in -> c_in) adds its input, average-pooled when it strides; the 1x1
    conv (c_in -> c_out) adds its input tiled over the output channels.
    """
    first = ConvShape(layer.c_in, layer.c_in, layer.k, layer.g, layer.stride, layer.size_in, layer.size_in)
    second = ConvShape(layer.c_in, layer.c_out, 1, 1, 1, layer.size_out, layer.size_out)
    return (first, Residual.POOL if layer.stride == 2 else Residual.IDENTITY), (second, Residual.TILE)


@dataclass(frozen=True)
class ConvKernels:
    """The two kernels one binary conv of the network runs, and the tile (word size) they share.

    ``packer(x [H, W, c_in], threshold, bits)`` then ``conv(bits, packed weights, scale, bias,
    source, shift_in, slope, shift_out, out)``; the source is the conv's float input ``x``.
    """

    shape: ConvShape
    packer: tvm.tirx.PrimFunc
    conv: tvm.tirx.PrimFunc
    tile: Tile

    def pack_weights(self, weight: np.ndarray) -> np.ndarray:
        """Float weights [c_out, c_in / groups, k, k] in the bit layout ``conv`` reads."""
        return pack_weights(weight, self.shape.groups, self.tile.vb, self.tile.word_bits)


def conv_kernels(
    shape: ConvShape, residual: Residual, target: tvm.target.Target, zero_pad: bool = False, weight_scale: bool = False
) -> ConvKernels:
    """The kernels of one binary conv with its fused epilogue, as the network runs them.

    The conv's tile (and with it the word size, 32 or 64 bits) is chosen first; the packer feeding
    the conv writes that word size. Latency profiling builds its kernels here too, so it times
    what the network runs.
    """
    conv, tile = binary_conv2d(shape, target, residual=residual, zero_pad=zero_pad, weight_scale=weight_scale)
    return ConvKernels(shape, packer_for(shape, tile, target), conv, tile)


def _const(array: np.ndarray) -> relax.Constant:
    return relax.const(np.ascontiguousarray(array))


def _act_consts(act: Activation) -> list[relax.Constant]:
    return [_const(act.shift_in), _const(act.slope), _const(act.shift_out)]


class _Builder:
    """Emits the kernels of one network into a Relax BlockBuilder."""

    def __init__(self, target: tvm.target.Target) -> None:
        self.bb = relax.BlockBuilder()
        self.target = target
        self.labels: list[str] = []  # one per kernel call, in execution order (for profiles)

    def call(
        self, func: tvm.tirx.PrimFunc, name: str, args: list, shape: tuple[int, ...], dtype: str, label: str
    ) -> relax.Var:
        self.labels.append(label)
        gvar = self.bb.add_func(func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE), name)
        return self.bb.emit(relax.call_tir(gvar, args, relax.TensorType(shape, dtype)))

    def conv(self, conv: FoldedConv, shape: ConvShape, residual: Residual, x: relax.Var, label: str) -> relax.Var:
        """Pack ``x``, then the binary conv whose epilogue adds the shortcut from ``x``."""
        k = conv_kernels(
            shape, residual, self.target, zero_pad=conv.border is not None, weight_scale=conv.weight_scale is not None
        )
        packed_shape = shape.packed_input_shape(k.tile.word_bits)
        bits = self.call(k.packer, "pack", [x, _const(conv.threshold)], packed_shape, k.tile.dtype, f"{label} pack")
        weights = _const(k.pack_weights(conv.weight))
        extra = [_const(a) for a in (conv.weight_scale, conv.border) if a is not None]
        args = [bits, weights, _const(conv.scale), _const(conv.bias), *extra, x, *_act_consts(conv.act)]
        return self.call(k.conv, "binconv", args, shape.output_shape, "float32", f"{label} conv")


def layer_labels(shape: LayerShape) -> tuple[str, str]:
    """The labels of a searched layer's two binary convs (profiles, verification reports)."""
    name = f"s{shape.stage + 1}.{shape.index + 1} c{shape.c_out}_k{shape.k}_g{shape.g}"
    return f"{name} k{shape.k}x{shape.k}", f"{name} 1x1"


def _emit_network(b: _Builder, net: FoldedNet, name: str, trace: bool) -> None:
    """Emit ``net`` as the function ``name`` (see ``build_module``)."""
    res, c = net.resolution, net.arch.stem
    image = relax.Var("image", relax.TensorType((1, 3, res, res), "float32"))
    with b.bb.function(name, [image]):
        with b.bb.dataflow():
            size = net.arch.stem_size(res)
            stem_args = [
                image,
                _const(net.stem_weight.transpose(1, 2, 3, 0)),
                _const(net.stem_scale),
                _const(net.stem_bias),
                *_act_consts(net.stem_act),
            ]
            x = b.call(stem_kernel(c, res), "stem", stem_args, (size, size, c), "float32", "stem")
            activations = [x]
            for layer in net.layers:
                s = layer.shape
                (first, first_residual), (second, second_residual) = layer_convs(s)
                first_label, second_label = layer_labels(s)
                y = b.conv(layer.group_conv, first, first_residual, x, first_label)
                x = b.conv(layer.pointwise, second, second_residual, y, second_label)
                activations += [y, x]
                size = s.size_out
            head = head_kernel(net.arch.last_width, size, net.num_classes)
            logits = b.call(
                head,
                "head",
                [x, _const(net.head_weight.T), _const(net.head_bias)],
                (1, net.num_classes),
                "float32",
                "head",
            )
            out = b.bb.emit_output(relax.Tuple([*activations, logits]) if trace else logits)
        b.bb.emit_func_output(out)


def build_module(net: FoldedNet, target: tvm.target.Target, trace: bool = False) -> tuple[tvm.IRModule, list[str]]:
    """The Relax IRModule of a folded network for ``target``, and a label per kernel call in order.

    With ``trace`` its ``main`` returns every float activation, in order (the stem's output, each
    binary conv's output, the logits), to compare a compiled network layer by layer.
    """
    b = _Builder(target)
    _emit_network(b, net, "main", trace)
    return b.bb.get(), b.labels


def build_networks(nets: dict[str, FoldedNet], target: tvm.target.Target, trace: bool = False) -> tvm.IRModule:
    """One Relax IRModule with a function per named network (as ``build_module``'s ``main``).

    Kernels of the same shape are emitted once (the BlockBuilder deduplicates equal PrimFuncs),
    so many networks compile and link in a fraction of the time they take one by one.
    """
    b = _Builder(target)
    for name, net in nets.items():
        _emit_network(b, net, name, trace)
    return b.bb.get()
