"""Binarization primitives (ReActNet style) shared by the supernet and every subnet.

Conventions the compiler relies on:
- ``sign(v) = +1 if v >= 0 else -1`` for activations and weights (``torch.sign`` would give 0).
- Binary activations are padded with **+1** before a k x k conv (k > 1), so border outputs are
  plain +-1 dot products with no correction term; real-valued activations pad with zeros. (The
  ``nasbnn`` convention of an imported run pads with 0 like the authors' code; the compiler
  subtracts the border's weights, see ``hwnas.compile.fold.border_correction``.)
- A binary weight is ``mean|W|`` per output channel times ``sign(W)``; the conv runs on the signs
  and its output is scaled, and the scale folds into the following BatchNorm at inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sign(x: Tensor) -> Tensor:
    """+1 where x >= 0, -1 elsewhere, in x's dtype."""
    return (x >= 0).to(x.dtype) * 2 - 1


class _ApproxSign(torch.autograd.Function):
    """Sign forward; ReActNet/Bi-Real piecewise-polynomial backward, d/dx = max(0, 2 - 2|x|).

    ``torch_sign``: ``torch.sign`` (0 at 0), the authors' convention (``nasbnn``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, torch_sign: bool = False) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.sign(x) if torch_sign else sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp_(min=0), None


def binary_activation(x: Tensor, torch_sign: bool = False) -> Tensor:
    return _ApproxSign.apply(x, torch_sign)


def channel_norm(w: Tensor, eps: float = 1e-5) -> Tensor:
    """Channel-wise weight normalization: zero mean, unit variance per output channel.

    hwnas divides by sqrt(biased variance + eps); the authors' code (``nasbnn`` convention) by
    the unbiased standard deviation without eps: :func:`authors_channel_norm`.
    """
    var, mean = torch.var_mean(w, dim=tuple(range(1, w.dim())), keepdim=True, unbiased=False)
    return (w - mean) / torch.sqrt(var + eps)


def authors_channel_norm(w: Tensor) -> Tensor:
    """The authors' weight normalization, (w - mean) / unbiased std, with their ops in their order.

    The same value as ``channel_norm(w, eps=0)`` with the unbiased variance, but ``var_mean``
    rounds otherwise: one ulp in a scale moves a pre-sign value across its threshold now and then,
    and a binary network turns that into logits 5-10 % apart (docs/real-scale.md).
    """
    dims = tuple(range(1, w.dim()))
    return (w - w.mean(dim=dims, keepdim=True)) / w.std(dim=dims, keepdim=True)


class _WeightSign(torch.autograd.Function):
    """sign(W) forward; straight-through gradient where |W| <= 1 (ReActNet's clipped STE)."""

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        return sign(w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def weight_sign(w: Tensor) -> tuple[Tensor, Tensor]:
    """sign(W) with a clipped straight-through gradient, and the per-output-channel scale mean|W|.

    The conv runs on the +-1 weights and its (exact, integer) output is multiplied by the scale
    afterwards: the same value as a conv with mean|W| * sign(W), rounded once instead of once per
    term, which the compiled network reproduces closely (a binary net amplifies rounding noise
    that crosses a sign threshold).
    """
    return _WeightSign.apply(w), w.abs().mean(dim=tuple(range(1, w.dim()))).detach()


def bi_transform(w: Tensor, theta: Tensor) -> Tensor:
    """Bi-Transformation: each k x k kernel, flattened, times the layer's k^2 x k^2 matrix."""
    return (w.flatten(2) @ theta).view_as(w)


def authors_transform(w: Tensor, theta: Tensor) -> Tensor:
    """:func:`bi_transform` as the authors' code calls it: ``F.linear`` with their matrix M = theta^T
    stored contiguously, the BLAS call (and so the rounding) their kernel and Bi-Transformation make."""
    return F.linear(w.reshape(-1, theta.shape[0]), theta.t().contiguous()).view_as(w)


class PerChannel(nn.Module):
    """Base of per-channel modules whose parameters are sliced to the input's channel count.

    Slicing the first C entries is what makes them elastic in the supernet and exact in a subnet.
    """

    def _param(self, p: Tensor, x: Tensor) -> Tensor:
        return p[: x.shape[1]].view(1, -1, 1, 1)


class RSign(PerChannel):
    """Learnable per-channel threshold, then sign (only when activations are binary)."""

    def __init__(self, channels: int, torch_sign: bool = False) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.zeros(channels))
        self.torch_sign = torch_sign  # nasbnn: 0 where x equals the threshold, as the authors' code

    def forward(self, x: Tensor, binary: bool) -> Tensor:
        return binary_activation(x - self._param(self.threshold, x), self.torch_sign) if binary else x


class RPReLU(PerChannel):
    """ReActNet's RPReLU: PReLU(x - gamma) + zeta with per-channel gamma, slope and zeta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), 0.25))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x - self._param(self.shift_in, x), self.slope[: x.shape[1]]) + self._param(self.shift_out, x)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def lsq_quantize(w: Tensor, step: Tensor, bits: int = 8) -> Tensor:
    """Learned step size quantization (Esser et al. 2020) of a weight tensor to signed ``bits``."""
    qmax = 2 ** (bits - 1) - 1
    grad_scale = 1.0 / math.sqrt(w.numel() * qmax)
    s = (step - step * grad_scale).detach() + step * grad_scale
    return _RoundSTE.apply((w / s).clamp(-qmax - 1, qmax)) * s


def init_lsq_step(w: Tensor, bits: int = 8) -> Tensor:
    """LSQ's initial step: 2 mean|W| / sqrt(qmax)."""
    return 2 * w.detach().abs().mean() / math.sqrt(2 ** (bits - 1) - 1)


def pad_binary(x: Tensor, k: int, value: float = 1.0) -> Tensor:
    """Pad +-1 activations by k // 2 with +1 (``value``) on every side (see the module docstring)."""
    p = k // 2
    return F.pad(x, [p, p, p, p], value=value) if p else x
