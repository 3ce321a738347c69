"""The NAS-BNN authors' checkpoint format and forward pass, written for the tests from reading
their code (VDIGPKU/NAS-BNN, models/superbnn.py and dynamic_operations.py), not copied from it.

:func:`random_checkpoint` builds a state dict with their key names, shapes and semantics (random
values); :func:`reference_logits` computes their supernet's output for one candidate from that
state dict: per-channel 8-bit stem, biases added before sign (``torch.sign``, zero padding),
kernel transformation for smaller kernels, group slices cycling through the stored input
channels, Bi-Transformation of the largest kernel, then weight normalization by the unbiased std,
scale mean|W| per output channel, BatchNorm (eps 1e-5), Bi-Real shortcuts, classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = torch.finfo(torch.float32).eps  # their forward clamps the stem's step to it

# (widths, depths, kernels, groups, stride) per stage; stage 0 is the stem
CFG = [
    ((24, 32, 48), (1,), (3,), (1,), 2),
    ((48, 64, 96), (2, 3), (3,), (1,), 1),
    ((96, 128, 192), (2, 3), (3, 5), (1, 2), 2),
    ((192, 256, 384), (2, 3), (3, 5), (2, 4), 2),
    ((384, 512, 768), (8, 9), (3, 5), (4, 8), 2),
    ((768, 1024, 1536), (2, 3), (3, 5), (8, 16), 2),
]


def _bn(sd: dict, prefix: str, c: int, g: torch.Generator) -> None:
    sd[prefix + "weight"] = 1 + 0.2 * torch.randn(c, generator=g)
    sd[prefix + "bias"] = 0.2 * torch.randn(c, generator=g)
    sd[prefix + "running_mean"] = 0.5 * torch.randn(c, generator=g)
    sd[prefix + "running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[prefix + "num_batches_tracked"] = torch.tensor(7)


def _bias(c: int, g: torch.Generator) -> Tensor:
    return 0.1 * torch.randn(1, c, 1, 1, generator=g)


def random_checkpoint(classes: int = 10, seed: int = 0, dead_stem: int = 0) -> dict[str, Tensor]:
    """A supernet state dict in the authors' format with random values; the first ``dead_stem``
    stem channels are exactly 0 after the first sign (their 8-bit weights and biases are 0), as
    every channel is in their freshly initialised model (its LSQ step 1 rounds all weights to 0)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    c_max = max(CFG[0][0])
    sd["features.0.0.conv.weight"] = 0.3 * torch.randn(c_max, 3, 3, 3, generator=g)
    sd["features.0.0.conv.w_scale"] = sd["features.0.0.conv.weight"].abs().amax(dim=(1, 2, 3)) / 100
    sd["features.0.0.conv.w_init_state"] = torch.ones(1)
    _bn(sd, "features.0.0.bn.bn.", c_max, g)
    sd["features.0.0.move1.bias"] = _bias(c_max, g)
    sd["features.0.0.relu.prelu.weight"] = 0.25 + 0.1 * torch.randn(c_max, generator=g)
    sd["features.0.0.move2.bias"] = _bias(c_max, g)
    prev = c_max
    for s, (widths, depths, kernels, groups, _) in enumerate(CFG[1:], start=1):
        for j in range(max(depths)):
            p, inp, oup, k = f"features.{s}.{j}.", prev if j == 0 else max(widths), max(widths), max(kernels)
            sd[p + "move11.bias"] = _bias(inp, g)
            sd[p + "binary_conv.weight"] = torch.randn(inp, inp // min(groups), k, k, generator=g)
            sd[p + "binary_conv.scaling_factor"] = torch.ones(inp, 1, 1, 1)
            if len(kernels) > 1:
                sd[p + "binary_conv.matrix_5to3"] = torch.eye(9) + 0.1 * torch.randn(9, 9, generator=g)
            sd[p + f"binary_conv.fp2bin_{k}"] = torch.eye(k * k) + 0.1 * torch.randn(k * k, k * k, generator=g)
            _bn(sd, p + "bn1.bn.", inp, g)
            sd[p + "move12.bias"] = _bias(inp, g)
            sd[p + "prelu1.prelu.weight"] = 0.25 + 0.1 * torch.randn(inp, generator=g)
            sd[p + "move13.bias"] = _bias(inp, g)
            sd[p + "move21.bias"] = _bias(inp, g)
            sd[p + "binary_conv1x1.weight"] = torch.randn(oup, inp, 1, 1, generator=g)
            sd[p + "binary_conv1x1.scaling_factor"] = torch.ones(oup, 1, 1, 1)
            _bn(sd, p + "bn2.bn.", oup, g)
            sd[p + "move22.bias"] = _bias(oup, g)
            sd[p + "prelu2.prelu.weight"] = 0.25 + 0.1 * torch.randn(oup, generator=g)
            sd[p + "move23.bias"] = _bias(oup, g)
        prev = max(widths)
    for key in ("conv.weight", "bn.bn.bias", "bn.bn.running_mean", "move1.bias", "move2.bias"):
        sd["features.0.0." + key][(slice(None), slice(0, dead_stem)) if "move" in key else slice(0, dead_stem)] = 0
    sd["features.1.0.move11.bias"][:, :dead_stem] = 0
    sd["fc.weight"] = 0.05 * torch.randn(classes, prev, generator=g)
    sd["fc.bias"] = 0.05 * torch.randn(classes, generator=g)
    sd["biggest_cand"] = extreme_cand(biggest=True)
    sd["smallest_cand"] = extreme_cand(biggest=False)
    return sd


def extreme_cand(biggest: bool) -> Tensor:
    """Their candidate rows [stage, block, channels, kernel, groups1, groups2] of the largest or smallest subnet."""
    size, few = (max, min) if biggest else (min, max)
    rows = []
    for s, (widths, depths, kernels, groups, _) in enumerate(CFG):
        for j in range(max(depths)):
            on = j < size(depths)
            rows.append([s if on else -1, j if on else -1, size(widths), size(kernels), few(groups), 1])
    return torch.tensor(rows)


def arch_to_cand(arch) -> Tensor:
    """An hwnas Arch as their candidate rows (skipped layers repeat the previous width)."""
    rows, c = [[0, 0, arch.stem, 3, 1, 1]], arch.stem
    for s, (stage, (_, depths, kernels, _, _)) in enumerate(zip(arch.stages, CFG[1:], strict=True), start=1):
        for j in range(max(depths)):
            if j < len(stage):
                layer = stage[j]
                c = layer.c
                rows.append([s, j, layer.c, layer.k, layer.g, 1])
            else:
                rows.append([-1, -1, c, kernels[0], 1, 1])
    return torch.tensor(rows)


def _active_weight(w: Tensor, sd: dict, p: str, inp: int, oup: int, k: int, groups: int, binary: bool) -> Tensor:
    big = w.shape[-1]
    f = w[:oup, :inp]
    if k < big:
        lo = (big - k) // 2
        f = F.linear(f[:, :, lo : lo + k, lo : lo + k].reshape(-1, k * k), sd[p + f"matrix_{big}to{k}"])
        f = f.reshape(oup, -1, k, k)
    sub = inp // groups
    ratio = f.shape[1] // sub
    f = torch.cat([part[:, (i % ratio) * sub : (i % ratio) * sub + sub] for i, part in enumerate(f.chunk(groups))])
    if binary and k == big and k > 1:
        f = F.linear(f.reshape(-1, k * k), sd[p + f"fp2bin_{k}"]).reshape(f.shape)
    return f


def _bin_conv(x: Tensor, sd: dict, p: str, oup: int, k: int, groups: int, stride: int, round_once: bool) -> Tensor:
    w = _active_weight(sd[p + "weight"], sd, p, x.shape[1], oup, k, groups, binary=True)
    n = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True)
    scale = n.abs().mean(dim=(1, 2, 3), keepdim=True)
    if round_once:  # the exact sum of +-1 terms, times the scale: one rounding, as hwnas computes it
        return F.conv2d(x, torch.sign(n), stride=stride, padding=(k - 1) // 2, groups=groups) * scale.view(1, -1, 1, 1)
    return F.conv2d(x, scale * torch.sign(n), stride=stride, padding=(k - 1) // 2, groups=groups)


def _bn_apply(x: Tensor, sd: dict, p: str) -> Tensor:
    c = x.shape[1]
    return F.batch_norm(
        x,
        sd[p + "running_mean"][:c],
        sd[p + "running_var"][:c],
        sd[p + "weight"][:c],
        sd[p + "bias"][:c],
        False,
        0.0,
        1e-5,
    )


def _plus(x: Tensor, sd: dict, key: str) -> Tensor:
    return x + sd[key][:, : x.shape[1]]


def _shortcut_add(out: Tensor, res: Tensor) -> Tensor:
    if out.shape[2] != res.shape[2]:
        res = F.avg_pool2d(res, 2, stride=2)
    if out.shape[1] != res.shape[1]:
        res = res.repeat(1, -(-out.shape[1] // res.shape[1]), 1, 1)[:, : out.shape[1]]
    return out + res


def reference_logits(sd: dict[str, Tensor], cand: Tensor, x: Tensor, round_once: bool = False) -> Tensor:
    """Their supernet's logits for candidate rows ``cand`` on images ``x`` (eval mode).

    Their binary conv sums terms +-scale in float, in the order of PyTorch's conv kernel; with
    ``round_once`` it sums the +-1 terms exactly and multiplies by the scale once, as hwnas does.
    Every other op is theirs, in their order, so that variant is hwnas's output bit for bit.
    """
    with torch.no_grad():
        for i, j, c, k, g1, _ in cand.tolist():
            if i == -1 or j == -1:
                continue
            p = f"features.{i}.{j}."
            if i == 0:
                w, s = sd[p + "conv.weight"][:c], sd[p + "conv.w_scale"][:c].clamp(min=_EPS).view(-1, 1, 1, 1)
                x = F.conv2d(x, torch.round(w / s).clamp(-128, 127) * s, stride=2, padding=1)
                x = _plus(_bn_apply(x, sd, p + "bn.bn."), sd, p + "move1.bias")
                x = _plus(F.prelu(x, sd[p + "relu.prelu.weight"][:c]), sd, p + "move2.bias")
                continue
            stride = CFG[i][4] if j == 0 else 1
            y = torch.sign(_plus(x, sd, p + "move11.bias"))
            y = _bn_apply(
                _bin_conv(y, sd, p + "binary_conv.", x.shape[1], k, g1, stride, round_once), sd, p + "bn1.bn."
            )
            y = _plus(_shortcut_add(y, x), sd, p + "move12.bias")
            y = _plus(F.prelu(y, sd[p + "prelu1.prelu.weight"][: y.shape[1]]), sd, p + "move13.bias")
            z = torch.sign(_plus(y, sd, p + "move21.bias"))
            z = _bn_apply(_bin_conv(z, sd, p + "binary_conv1x1.", c, 1, 1, 1, round_once), sd, p + "bn2.bn.")
            z = _plus(_shortcut_add(z, y), sd, p + "move22.bias")
            x = _plus(F.prelu(z, sd[p + "prelu2.prelu.weight"][:c]), sd, p + "move23.bias")
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(x, sd["fc.weight"][:, : x.shape[1]], sd["fc.bias"])
