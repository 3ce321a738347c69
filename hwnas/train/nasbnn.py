"""Import the NAS-BNN authors' released artefacts: the supernet checkpoint and the search result.

The authors' supernet (``models/superbnn.py`` of VDIGPKU/NAS-BNN) has the same space and layer
order as hwnas's, so its checkpoint maps tensor by tensor onto an hwnas supernet built with the
``nasbnn`` convention (:class:`hwnas.model.layers.Convention`), which reproduces their forward
pass. Names on their side, per searched layer ``features.S.J`` (S = 1..5; ``features.0.0`` is
the stem): ``move11`` / ``move21`` are biases *added* before each sign (hwnas thresholds are
subtracted, so they are negated), ``move12 prelu1 move13`` / ``move22 prelu2 move23`` the two
RPReLUs (shift in negated, slope, shift out), ``binary_conv`` / ``binary_conv1x1`` the convs,
``bn1.bn`` / ``bn2.bn`` the BatchNorms. Their matrices act as ``F.linear(w, M) = w M^T`` and hwnas
multiplies ``w theta``, so theta = M^T. ``scaling_factor`` buffers are a cache their forward
overwrites (recomputed here), ``w_init_state`` a flag; ``biggest_cand`` / ``smallest_cand`` are
checked against the space. Any other key, or a missing or misshapen one, fails the import.

Their preprocessing (mean = std = 0.5 per channel, Resize 256, CenterCrop 224) stays outside
the network as in their code; an imported run's ImageFolder data uses it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hwnas.arch import Arch, cand_json
from hwnas.errors import ArchError, HwnasError
from hwnas.files import atomic_write_json, atomic_write_text
from hwnas.model import BinaryNet, ModelOptions, build_supernet
from hwnas.space import NASBNN
from hwnas.train.checkpoint import FILENAME, save_checkpoint
from hwnas.train.config import TrainConfig
from hwnas.train.data import build_splits

_log = logging.getLogger(__name__)

IMPORTED_CONFIG = TrainConfig(data="none", resolution=224, width_mult=1.0, convention="nasbnn", calib_batches=10)
"""An imported run: the paper's full-width space at 224x224, no data until ``--data`` names some."""

Rule = Callable[[Tensor], Tensor]
_KEEP: Rule = lambda t: t  # noqa: E731
_NEGATE: Rule = lambda t: -t.flatten()  # noqa: E731
_FLAT: Rule = lambda t: t.flatten()  # noqa: E731
_TRANSPOSE: Rule = lambda t: t.t()  # noqa: E731
_EPS = torch.finfo(torch.float32).eps

_BN = {f"bn.{n}": n for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
_STEM = {
    "conv.weight": ("stem.weight", _KEEP),
    "conv.w_scale": ("stem.step", lambda t: t.clamp(min=_EPS)),  # their forward clamps it so
    "move1.bias": ("stem.act.shift_in", _NEGATE),
    "relu.prelu.weight": ("stem.act.slope", _KEEP),
    "move2.bias": ("stem.act.shift_out", _FLAT),
    **{f"bn.{k}": (f"stem.bn.{v}", _KEEP) for k, v in _BN.items()},
}
_BLOCK = {
    "move11.bias": ("rsign1.threshold", _NEGATE),
    "binary_conv.weight": ("conv1.weight", _KEEP),
    "move12.bias": ("act1.shift_in", _NEGATE),
    "prelu1.prelu.weight": ("act1.slope", _KEEP),
    "move13.bias": ("act1.shift_out", _FLAT),
    "move21.bias": ("rsign2.threshold", _NEGATE),
    "binary_conv1x1.weight": ("conv2.weight", _KEEP),
    "move22.bias": ("act2.shift_in", _NEGATE),
    "prelu2.prelu.weight": ("act2.slope", _KEEP),
    "move23.bias": ("act2.shift_out", _FLAT),
    **{f"bn1.{k}": (f"bn1.{v}", _KEEP) for k, v in _BN.items()},
    **{f"bn2.{k}": (f"bn2.{v}", _KEEP) for k, v in _BN.items()},
}
_IGNORED = re.compile(
    r"^features\.\d+\.\d+\.(binary_conv|binary_conv1x1)\.scaling_factor$|^features\.0\.0\.conv\.w_init_state$"
)
_MATRIX = re.compile(r"^(?:matrix_\d+to(\d+)|fp2bin_(\d+))$")
_FEATURE = re.compile(r"^features\.(\d+)\.(\d+)\.(.+)$")


def _target(key: str) -> tuple[str, Rule] | None:
    """The hwnas name of an authors' key and how its value converts (None: not a tensor of theirs)."""
    if key in ("fc.weight", "fc.bias"):
        return "classifier." + key[3:], _KEEP
    match = _FEATURE.match(key)
    if match is None:
        return None
    stage, index, rest = int(match[1]), int(match[2]), match[3]
    if stage == 0:
        return _STEM.get(rest) if index == 0 else None
    prefix = f"stages.{stage - 1}.{index}."
    if rest in _BLOCK:
        name, rule = _BLOCK[rest]
        return prefix + name, rule
    if rest.startswith("binary_conv."):
        matrix = _MATRIX.match(rest[len("binary_conv.") :])
        if matrix is not None:
            return f"{prefix}conv1.theta.k{matrix[1] or matrix[2]}", _TRANSPOSE
    return None


def read_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The authors' state dict from ``{'state_dict': ...}`` or a bare one (``obj``, read from
    ``path``), DDP's ``module.`` removed."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise HwnasError(f"{path}: neither a state dict nor a dict with 'state_dict'")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_release(path: Path) -> Any:
    """A file of the authors' release, read with the safe loader if it can."""
    if not path.is_file():
        raise HwnasError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure of the safe loader means "try the full one"
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        _log.warning(f"{path}: the safe loader refused it ({first}); loading it as a full pickle")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise HwnasError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None


def convert_state(theirs: dict[str, Tensor], supernet: BinaryNet) -> dict[str, Tensor]:
    """``supernet``'s state dict filled from the authors' tensors; one HwnasError names the first
    key that does not map (unknown, misshapen, or an hwnas tensor nobody fills)."""
    mine = supernet.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in theirs.items():
        if _IGNORED.match(key):
            continue
        if key in ("biggest_cand", "smallest_cand"):
            _check_cand(key, value)
            continue
        target = _target(key)
        if target is None or target[0] not in mine:
            raise HwnasError(f"checkpoint key {key!r} {tuple(value.shape)} maps to nothing in the NAS-BNN supernet")
        name, rule = target
        converted = rule(value.detach()).to(mine[name].dtype)
        if converted.shape != mine[name].shape:
            raise HwnasError(
                f"checkpoint key {key!r} has shape {tuple(value.shape)}; the NAS-BNN supernet's {name} needs "
                f"{tuple(mine[name].shape)}"
            )
        out[name] = converted.clone()
    missing = [name for name in mine if name not in out]
    if missing:
        raise HwnasError(f"the checkpoint has no tensor for {missing[0]} (and {len(missing) - 1} more)")
    return out


def _check_cand(key: str, value: Tensor) -> None:
    expected = NASBNN.largest() if key == "biggest_cand" else NASBNN.smallest()
    try:
        got = cand_to_arch(value.tolist())
    except ArchError as exc:
        raise HwnasError(f"checkpoint key {key!r}: {exc}") from None
    if got != expected:
        raise HwnasError(f"checkpoint key {key!r} is {got}, not the NAS-BNN space's {expected}")


def cand_to_arch(cand: Any) -> Arch:
    """An authors' candidate (a tensor or nested lists, :func:`hwnas.arch.cand_json`) as an Arch
    of the NAS-BNN space."""
    values = cand.flatten().tolist() if isinstance(cand, Tensor) else cand
    return NASBNN.parse(cand_json(list(values)))


@dataclass(frozen=True)
class Imported:
    run_dir: Path
    num_classes: int
    tensors: int


def is_search_result(obj: Any) -> bool:
    """Whether a loaded release file is the authors' search result (else it should be a checkpoint)."""
    return isinstance(obj, dict) and "pareto_global" in obj


def import_checkpoint(obj: Any, checkpoint: Path, run_dir: Path, data: str | None = None) -> Imported:
    """Write ``run_dir``: a run of the authors' supernet (``obj``, loaded from ``checkpoint``) that
    every command taking a run accepts (``data``: its ImageFolder for calibration, evaluation and
    search; "none" by default)."""
    theirs = read_state_dict(obj, checkpoint)
    if "fc.weight" not in theirs:
        raise HwnasError(f"{checkpoint}: no classifier (fc.weight); not a NAS-BNN supernet checkpoint")
    num_classes = int(theirs["fc.weight"].shape[0])
    config = IMPORTED_CONFIG if data is None else replace(IMPORTED_CONFIG, data=data)
    if data is not None:
        build_splits(config)  # a bad data path fails before anything is written
    options = ModelOptions(config.bi_transform, config.weight_norm, config.convention)
    supernet = build_supernet(NASBNN, num_classes, options)
    state = convert_state(theirs, supernet)
    supernet.load_state_dict(state)
    if (run_dir / FILENAME).exists():
        raise HwnasError(f"{run_dir} already holds a run; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir / FILENAME, {"model": supernet.state_dict(), "position": {"epoch": 0}})
    atomic_write_json(run_dir / "splits.json", {})
    atomic_write_text(run_dir / "imported.json", json.dumps({"source": str(checkpoint), "num_classes": num_classes}))
    atomic_write_text(run_dir / "config.json", json.dumps(config.to_json(), indent=1) + "\n")
    return Imported(run_dir, num_classes, len(theirs))


def import_search(obj: Any, info: Path, out_dir: Path) -> list[dict[str, Any]]:
    """The authors' search result (``obj``, loaded from ``info.pth.tar``): one arch file per OPs
    bucket of its front (``ops-N.json``) and ``front.json`` listing them with their accuracy and
    OPs as searched."""
    if not isinstance(obj, dict) or "pareto_global" not in obj or "vis_dict" not in obj:
        raise HwnasError(f"{info}: not a NAS-BNN search result (no 'pareto_global' and 'vis_dict')")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for bucket, cand in sorted(obj["pareto_global"].items()):
        try:
            arch = cand_to_arch(cand)
        except ArchError as exc:
            raise HwnasError(f"{info}: front entry at {bucket} OPs: {exc}") from None
        seen = obj["vis_dict"].get(tuple(cand), {})
        name = f"ops-{int(bucket)}.json"
        atomic_write_json(out_dir / name, arch.to_json())
        rows.append({"file": name, "ops_bucket": int(bucket), "ops": seen.get("ops"), "accuracy": seen.get("acc")})
    atomic_write_json(out_dir / "front.json", rows)
    return rows
