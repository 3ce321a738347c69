"""Elastic layers: each holds the largest weights and runs any smaller configuration of itself.

A configuration always takes the **first** channels and the **centre** k x k of a kernel, the rule
written once in :func:`narrow`. How a group conv with g groups takes its weights is
:class:`GroupWeights`: ``dense`` (new runs) gives each pair (output j, input c) one stored weight
whatever the width and groups (the block diagonal of one dense c_in x c_in weight), so a subnet's
neighbours trained the same pairings; ``first`` (runs trained before it) reads, for every output
channel, the first c_in / g stored input columns, so a column meets another input whenever c_in / g
changes. Pairs further apart than the widest group are never used, so ``dense`` stores only the
diagonal band they lie in (:func:`group_columns`) where that is narrower than c_in. ``dense``
lifted the mean of 50 random subnets by 1-4 points in two runs (docs/training.md). A subnet built
at exactly its own sizes runs the same code and gives the same outputs.

The ``nasbnn`` convention (:class:`Convention`, recorded in a run imported from the authors'
checkpoint) computes what the authors' model computes instead: output chunk i of a g-group conv
reads input slice (i mod r) of width c_in / g, r = min(c_in, stored) // (c_in / g) (the
floor is what keeps it defined in the 512-of-768 case); a smaller kernel is the centre crop of
the next larger one times that size's matrix (OFA's kernel transformation, in every mode); the
Bi-Transformation applies to the largest kernel only and comes *before* weight normalization,
which divides by the unbiased std without eps; binary activations are ``torch.sign`` (0 at 0) and
zero-padded; the stem's
8-bit step is per output channel and always applied.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas.model.binary import (
    RPReLU,
    RSign,
    authors_channel_norm,
    authors_transform,
    bi_transform,
    channel_norm,
    init_lsq_step,
    lsq_quantize,
    pad_binary,
    weight_sign,
)


class Convention(str, Enum):
    """Whose rules a supernet's weights follow: hwnas's own, or the authors' (an imported run)."""

    HWNAS = "hwnas"
    NASBNN = "nasbnn"


class GroupWeights(str, Enum):
    """How a g-group conv takes its weights from the shared tensor (the ``hwnas`` convention)."""

    DENSE = "dense"  # the block diagonal of one dense c_in x c_in weight
    FIRST = "first"  # the first c_in / g stored columns for every output channel (earlier runs)


class Mode(str, Enum):
    """Which parts are binary: weights / activations (the paper's FWBA teacher, BWBA student)."""

    BWBA = "bwba"  # binary weights, binary activations: the deployable network
    FWBA = "fwba"  # full-precision weights, binary activations: the Bi-Teacher
    FWFA = "fwfa"  # full-precision weights and activations

    @property
    def binary_weights(self) -> bool:
        return self is Mode.BWBA

    @property
    def binary_activations(self) -> bool:
        return self is not Mode.FWFA


def group_columns(c: int, groups: int, half: int | None) -> Tensor:
    """Dense group weights: the stored column of each (output j, input slot t) of a c -> c g-group conv.

    Output j meets input ``(j // cg) * cg + t`` (cg = c / g); stored densely that is the column,
    in a band of offsets ``c - j + half`` (``half`` = the widest group minus one) otherwise.
    """
    cg = c // groups
    j, t = torch.arange(c)[:, None], torch.arange(cg)[None, :]
    col = (j // cg) * cg + t
    return col if half is None else col - j + half


def narrow(t: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """The active part of a shared tensor: first entries, except the centre of a conv kernel."""
    for dim, size in enumerate(shape):
        if t.dim() == 4 and dim >= 2:
            t = t.narrow(dim, (t.shape[dim] - size) // 2, size)
        else:
            t = t.narrow(dim, 0, size)
    return t


class BinaryConv2d(nn.Module):
    """Elastic binary conv with channel-wise weight normalization and Bi-Transformation.

    Bi-Transformation keeps one k^2 x k^2 matrix per kernel size the layer can take (identity at
    start), applied to the centre-cropped kernel; it is not used for 1x1 convs, where a scalar
    cannot change a sign. Under the ``nasbnn`` convention the matrix of a kernel smaller than the
    largest is the authors' kernel transformation instead (see the module docstring).
    """

    def __init__(
        self,
        c_out: int,
        c_in_per_group: int,
        kernels: tuple[int, ...],
        bi_transform: bool,
        weight_norm: bool,
        convention: Convention = Convention.HWNAS,
        dense: bool = False,
    ) -> None:
        super().__init__()
        k = max(kernels)
        self.kernels = tuple(sorted(kernels))
        self.weight = nn.Parameter(torch.empty(c_out, c_in_per_group, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.theta = nn.ParameterDict(
            {f"k{k}": nn.Parameter(torch.eye(k * k)) for k in kernels if k > 1 and bi_transform}
        )
        self.weight_norm = weight_norm
        self.nasbnn = Convention(convention) is Convention.NASBNN
        self.dense = dense  # dense group weights (GroupWeights), stored as a band of offsets when narrower
        self.half = (c_in_per_group - 1) // 2 if dense and c_in_per_group < c_out else None  # None: as columns
        self._columns: dict[tuple[int, int, torch.device], Tensor] = {}

    def _normalize(self, w: Tensor) -> Tensor:
        if not self.weight_norm:
            return w
        return authors_channel_norm(w) if self.nasbnn else channel_norm(w)

    def active_weight(self, c_out: int, c_in: int, k: int, groups: int) -> Tensor:
        """The shared weight's part a configuration uses, before Bi-Transformation and normalization.

        hwnas: :func:`narrow` (dense group weights: then the :func:`group_columns`). nasbnn: the
        authors' kernel transformation and group slicing. Made contiguous so a supernet and its
        extracted subnet compute bit-identical outputs.
        """
        if self.dense and groups > 1:
            if c_out != c_in:
                raise ValueError(f"dense group weights need c_out == c_in, got {c_out} and {c_in}")
            key = (c_in, groups, self.weight.device)  # the module may move to another device after a call
            if key not in self._columns:
                self._columns[key] = group_columns(c_in, groups, self.half).to(self.weight.device)
            cols = self._columns[key]
            w = narrow(self.weight, (c_out, self.weight.shape[1], k, k))
            return w.gather(1, cols[:, :, None, None].expand(c_out, cols.shape[1], k, k)).contiguous()
        if self.dense:
            return narrow(self.weight, (c_out, c_in, k, k)).contiguous()
        if not self.nasbnn:
            return narrow(self.weight, (c_out, c_in // groups, k, k)).contiguous()
        w = self.weight[:c_out, :c_in]
        for big, small in zip(self.kernels[:0:-1], self.kernels[-2::-1], strict=True):
            if big <= k:
                break
            w = narrow(w, (*w.shape[:2], small, small))
            if f"k{small}" in self.theta:
                w = authors_transform(w.contiguous(), self.theta[f"k{small}"])
        w = narrow(w, (*w.shape[:2], k, k))
        width = c_in // groups
        ratio = w.shape[1] // width
        if groups > 1 and ratio > 1:
            chunks = w.chunk(groups, dim=0)
            w = torch.cat([ch[:, (i % ratio) * width : (i % ratio + 1) * width] for i, ch in enumerate(chunks)])
        return w[:, :width].contiguous()

    def real_weight(self, c_out: int, c_in: int, k: int, groups: int) -> Tensor:
        """The active real-valued weight (normalized when enabled), shape [c_out, c_in/g, k, k]."""
        return self._normalize(self.active_weight(c_out, c_in, k, groups))

    def bi_matrix(self, k: int) -> Tensor | None:
        """The Bi-Transformation matrix of kernel size k (nasbnn: only the largest kernel has one)."""
        if self.nasbnn and k != self.kernels[-1]:
            return None
        return self.theta[f"k{k}"] if f"k{k}" in self.theta else None

    def binary_weight(self, c_out: int, c_in: int, k: int, groups: int) -> tuple[Tensor, Tensor]:
        """The deployable network's weight: sign(W theta) and its per-output-channel scale mean|W theta|."""
        theta = self.bi_matrix(k)
        if self.nasbnn:  # Bi-Transformation, then normalization
            w = self.active_weight(c_out, c_in, k, groups)
            w = self._normalize(w if theta is None else authors_transform(w, theta))
        else:  # normalization, then Bi-Transformation
            w = self.real_weight(c_out, c_in, k, groups)
            w = w if theta is None else bi_transform(w, theta)
        return weight_sign(w)

    def forward(self, x: Tensor, c_out: int, k: int, groups: int, stride: int, mode: Mode) -> Tensor:
        c_in = x.shape[1]
        if mode.binary_weights:
            w, scale = self.binary_weight(c_out, c_in, k, groups)
        else:
            w, scale = self.real_weight(c_out, c_in, k, groups), None
        if mode.binary_activations:
            out = F.conv2d(pad_binary(x, k, 0.0 if self.nasbnn else 1.0), w, stride=stride, groups=groups)
        else:
            out = F.conv2d(x, w, stride=stride, padding=k // 2, groups=groups)
        return out if scale is None else out * scale.view(1, -1, 1, 1)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its statistics and affine parameters."""

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or not self.track_running_stats
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c], use_batch, factor, self.eps
        )


class Stem(nn.Module):
    """First conv: 3 -> c, 3x3 stride 2, 8-bit LSQ weights (real in full-precision modes), BN, RPReLU.

    ``nasbnn``: one LSQ step per output channel, and the weights are quantized in every mode.
    """

    def __init__(self, c_max: int, convention: Convention = Convention.HWNAS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_max, 3, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.nasbnn = Convention(convention) is Convention.NASBNN
        step = torch.stack([init_lsq_step(w) for w in self.weight]) if self.nasbnn else init_lsq_step(self.weight)
        self.step = nn.Parameter(step)
        self.bn = ElasticBatchNorm2d(c_max)
        self.act = RPReLU(c_max)

    def quantized_weight(self, c: int) -> Tensor:
        step = self.step[:c].view(-1, 1, 1, 1) if self.step.dim() else self.step
        return lsq_quantize(self.weight[:c], step)

    def forward(self, x: Tensor, c: int, mode: Mode) -> Tensor:
        w = self.quantized_weight(c) if mode.binary_weights or self.nasbnn else self.weight[:c]
        return self.act(self.bn(F.conv2d(x, w, stride=2, padding=1)))


def shortcut(x: Tensor, c_out: int, stride: int) -> Tensor:
    """Bi-Real shortcut: 2x2 average pool on stride 2, channels tiled (or cut) to c_out."""
    if stride == 2:
        x = F.avg_pool2d(x, 2, stride=2, ceil_mode=True, count_include_pad=False)
    c_in = x.shape[1]
    if c_out != c_in:
        x = torch.cat([x] * -(-c_out // c_in), dim=1)[:, :c_out]
    return x


class SeparableBlock(nn.Module):
    """One searched layer: binary k x k group conv c_in -> c_in, then binary 1x1 conv c_in -> c.

    Each conv: RSign -> conv -> BN -> + Bi-Real shortcut -> RPReLU.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernels: tuple[int, ...],
        min_groups: int,
        stride: int,
        bi_transform: bool,
        weight_norm: bool,
        convention: Convention = Convention.HWNAS,
        group_weights: GroupWeights = GroupWeights.FIRST,
    ) -> None:
        super().__init__()
        self.stride = stride
        nasbnn = Convention(convention) is Convention.NASBNN
        self.rsign1 = RSign(c_in, torch_sign=nasbnn)
        dense = GroupWeights(group_weights) is GroupWeights.DENSE and not nasbnn
        # dense: the widest group's offsets, a band of 2 * (c_in / min groups) - 1 columns, or all c_in
        stored = min(c_in, 2 * (c_in // min_groups) - 1) if dense else c_in // min_groups
        self.conv1 = BinaryConv2d(c_in, stored, kernels, bi_transform, weight_norm, convention, dense)
        self.bn1 = ElasticBatchNorm2d(c_in)
        self.act1 = RPReLU(c_in)
        self.rsign2 = RSign(c_in, torch_sign=nasbnn)
        self.conv2 = BinaryConv2d(c_out, c_in, (1,), bi_transform, weight_norm, convention)
        self.bn2 = ElasticBatchNorm2d(c_out)
        self.act2 = RPReLU(c_out)

    def forward(self, x: Tensor, c: int, k: int, g: int, mode: Mode) -> Tensor:
        c_in, binary = x.shape[1], mode.binary_activations
        y = self.bn1(self.conv1(self.rsign1(x, binary), c_in, k, g, self.stride, mode))
        y = self.act1(y + shortcut(x, c_in, self.stride))
        z = self.bn2(self.conv2(self.rsign2(y, binary), c, 1, 1, 1, mode))
        return self.act2(z + shortcut(y, c, 1))
