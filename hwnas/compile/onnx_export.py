"""The deployable network as plain PyTorch ops on folded constants, and its ONNX export.

The training model computes its binary weights from shared real weights on every call, which
ONNX exporters cannot turn into constant convolutions. :class:`FoldedModule` runs the
:class:`~hwnas.compile.fold.FoldedNet` arithmetic instead (sign as a comparison, +-1 weights,
+1 padding, one affine per conv, shortcut, RPReLU), the float simulation that tools outside this
project can read. It also cross-checks the folding against the training model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas.compile.fold import Activation, FoldedConv, FoldedNet
from hwnas.errors import HwnasError
from hwnas.files import atomic_path
from hwnas.model.binary import pad_binary, sign
from hwnas.model.layers import shortcut


def _vec(values) -> Tensor:
    return torch.from_numpy(values).view(1, -1, 1, 1)


class _Conv(nn.Module):
    def __init__(self, conv: FoldedConv, groups: int, stride: int) -> None:
        super().__init__()
        self.groups, self.stride, self.k = groups, stride, conv.weight.shape[-1]
        self.nasbnn = conv.weight_scale is not None  # torch.sign and zero padding, as the authors' code
        self.pad_value = 0.0 if self.nasbnn else 1.0
        self.register_buffer("weight_scale", None if conv.weight_scale is None else _vec(conv.weight_scale))
        self.register_buffer("threshold", _vec(conv.threshold))
        self.register_buffer("weight", torch.from_numpy(conv.weight))
        self.register_buffer("scale", _vec(conv.scale))
        self.register_buffer("bias", _vec(conv.bias))
        self.act = _Act(conv.act)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        v = x - self.threshold
        bits = pad_binary(torch.sign(v) if self.nasbnn else sign(v), self.k, self.pad_value)
        dot = F.conv2d(bits, self.weight, stride=self.stride, groups=self.groups)
        if self.weight_scale is not None:  # nasbnn: PyTorch's BatchNorm rounding
            return self.act(torch.addcmul(self.bias, dot * self.weight_scale, self.scale) + residual)
        return self.act(dot * self.scale + self.bias + residual)


class _Act(nn.Module):
    def __init__(self, act: Activation) -> None:
        super().__init__()
        for name in ("shift_in", "slope", "shift_out"):
            self.register_buffer(name, _vec(getattr(act, name)))

    def forward(self, x: Tensor) -> Tensor:
        z = x - self.shift_in
        return torch.where(z >= 0, z, z * self.slope) + self.shift_out


class FoldedModule(nn.Module):
    """image [N, 3, R, R] -> logits, computed from a FoldedNet's constants."""

    def __init__(self, net: FoldedNet) -> None:
        super().__init__()
        self.register_buffer("stem_weight", torch.from_numpy(net.stem_weight))
        self.register_buffer("stem_scale", _vec(net.stem_scale))
        self.register_buffer("stem_bias", _vec(net.stem_bias))
        self.stem_act = _Act(net.stem_act)
        self.strides = [layer.shape.stride for layer in net.layers]
        self.widths = [layer.shape.c_out for layer in net.layers]
        self.group_convs = nn.ModuleList(_Conv(x.group_conv, x.shape.g, x.shape.stride) for x in net.layers)
        self.pointwise = nn.ModuleList(_Conv(x.pointwise, 1, 1) for x in net.layers)
        self.classifier = nn.Linear(net.head_weight.shape[1], net.num_classes)
        self.classifier.weight.data = torch.from_numpy(net.head_weight)
        self.classifier.bias.data = torch.from_numpy(net.head_bias)

    def forward(self, image: Tensor) -> Tensor:
        x = F.conv2d(image, self.stem_weight, stride=2, padding=1)
        x = self.stem_act(x * self.stem_scale + self.stem_bias)
        for group_conv, pointwise, stride, width in zip(
            self.group_convs, self.pointwise, self.strides, self.widths, strict=True
        ):
            y = group_conv(x, shortcut(x, x.shape[1], stride))
            x = pointwise(y, shortcut(y, width, 1))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def export_onnx(net: FoldedNet, path: str | Path) -> Path:
    """Write the folded network as ONNX (opset 17) and check it with ``onnx.checker``."""
    path = Path(path)
    module = FoldedModule(net).eval()
    image = torch.zeros(1, 3, net.resolution, net.resolution)
    with atomic_path(path) as tmp, warnings.catch_warnings():  # checked before it replaces ``path``
        warnings.simplefilter("ignore")  # the tracer's notes on constant shapes are about our code
        torch.onnx.export(
            module, (image,), str(tmp), dynamo=False, input_names=["image"], output_names=["logits"], opset_version=17
        )
        onnx.checker.check_model(onnx.load(str(tmp)))
    return path


class OnnxRunner:
    """An exported ONNX file run by onnxruntime on the CPU: ``runner(image) -> logits`` (NumPy)."""

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise HwnasError("--verify of an ONNX file needs onnxruntime: pip install 'hwnas[onnx]'") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings would land on stderr beside ours
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": image})[0]


ONNX_TOLERANCE = 1e-3
"""Largest relative logit error accepted from an ONNX runtime. Unlike the compiled library (bit for
bit, :mod:`hwnas.compile.reference`), a runtime sums the real-valued stem and pools in its own order,
so a value within rounding of a sign threshold may flip a bit; at 224x224 with random weights that
moves logits by a few percent, so verify a trained network, where thresholds sit away from values."""


@dataclass(frozen=True)
class OnnxCheck:
    max_rel_error: float
    top1_agree: bool
    samples: int

    @property
    def ok(self) -> bool:
        return self.max_rel_error <= ONNX_TOLERANCE and self.top1_agree


def verify_onnx(path: str | Path, net: FoldedNet, samples: int = 4, seed: int = 0) -> OnnxCheck:
    """Run the ONNX file with onnxruntime on random images and compare with the folded reference."""
    from hwnas.compile.deploy import verification_images
    from hwnas.compile.reference import reference_logits

    runner, worst, agree = OnnxRunner(path), 0.0, True
    images = verification_images(net.resolution, samples, seed)
    for image in images:
        got, ref = runner(image), reference_logits(net, image)
        worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)))
        agree &= bool(got.argmax() == ref.argmax())
    return OnnxCheck(worst, agree, len(images))
