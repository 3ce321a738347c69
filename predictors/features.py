"""Latency features of searched layers, vectorised over many layers (and many archs) at once.

A layer is its kernel configuration ``(c_in, c_out, k, g, stride, size_in)`` (see
:mod:`hwnas.targets.configs`). From an int matrix of configurations, one row per layer, the features
are computed column-wise with NumPy, so thousands of archs cost one pass. They describe what the
layer's four kernels (pack, k x k group conv, pack, 1x1 conv, each conv with its fused
shortcut and RPReLU) do: shape, binary MACs, 64-bit
word operations (popcounts round channels up to words), and bytes moved (float activations in
and out, packed activations and packed weights).

``FEATURE_SCHEMA_VERSION`` changes whenever the features, their order or what a saved predictor
holds change (2: the stem and head measurements); a saved predictor records it and is refused by
code with another version.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hwnas.arch import CONFIG_FIELDS, Arch, LayerConfig

FEATURE_SCHEMA_VERSION = 2
WORD_BITS = 64
LAYER_FEATURES = (
    *CONFIG_FIELDS,
    "size_out",
    "c_per_group",
    "words_per_group",
    "bops_group",
    "bops_point",
    "bops",
    "word_ops_group",
    "word_ops_point",
    "packed_act_bytes_group",
    "packed_act_bytes_point",
    "packed_weight_bytes",
    "float_bytes",
    "bytes_moved",
    "log_bops",
)


def config_matrix(configs: Sequence[LayerConfig]) -> np.ndarray:
    """Configurations as an int64 matrix [n, len(CONFIG_FIELDS)]."""
    return np.array([[getattr(c, f) for f in CONFIG_FIELDS] for c in configs], dtype=np.int64).reshape(
        -1, len(CONFIG_FIELDS)
    )


def config_rows(arch: Arch, resolution: int) -> list[tuple[int, ...]]:
    """The config of every searched layer of ``arch`` as plain tuples (CONFIG_FIELDS order)."""
    return [
        (c_in, layer.c, layer.k, layer.g, stride, size) for _, _, layer, c_in, stride, size in arch.walk(resolution)
    ]


def arch_config_matrix(archs: Sequence[Arch], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Every searched layer of every arch as one config matrix, and the arch index of each row."""
    rows = [config_rows(arch, resolution) for arch in archs]
    owner = np.repeat(np.arange(len(archs)), [len(r) for r in rows])
    matrix = np.array([row for arch in rows for row in arch], dtype=np.int64)
    return matrix.reshape(-1, len(CONFIG_FIELDS)), owner


def layer_features(configs: np.ndarray) -> np.ndarray:
    """Feature matrix [n, len(LAYER_FEATURES)] (float64) of a config matrix, in LAYER_FEATURES order."""
    c_in, c_out, k, g, stride, size_in = (configs[:, i].astype(np.float64) for i in range(len(CONFIG_FIELDS)))
    pad = k // 2
    size_out = (size_in + 2 * pad - k) // stride + 1
    pixels = size_out * size_out
    cg = c_in / g
    words_group = np.ceil(cg / WORD_BITS)
    words_point = np.ceil(c_in / WORD_BITS)
    bops_group = pixels * c_in * cg * k * k
    bops_point = pixels * c_in * c_out
    word_ops_group = pixels * c_in * k * k * words_group
    word_ops_point = pixels * c_out * words_point
    act_group = (size_in + 2 * pad) ** 2 * g * words_group * 8
    act_point = pixels * words_point * 8
    weights = (c_in * k * k * words_group + c_out * words_point) * 8
    floats = (size_in * size_in * c_in + pixels * c_in * 2 + pixels * c_out) * 4  # in, mid out+in, out
    columns = (
        c_in,
        c_out,
        k,
        g,
        stride,
        size_in,
        size_out,
        cg,
        words_group,
        bops_group,
        bops_point,
        bops_group + bops_point,
        word_ops_group,
        word_ops_point,
        act_group,
        act_point,
        weights,
        floats,
        floats + 2 * (act_group + act_point) + weights,
        np.log(bops_group + bops_point),
    )
    return np.stack(columns, axis=1)


def network_work(archs: Sequence[Arch], resolution: int) -> np.ndarray:
    """Per subnet, the two costs that scale differently from one instruction set to another:
    binary work (billions of binary MACs over the searched layers) and activation volume (millions
    of input elements the searched layers read, pack and write back). One row per arch."""
    configs, owner = arch_config_matrix(archs, resolution)
    bops = layer_features(configs)[:, LAYER_FEATURES.index("bops")]
    c_in, size_in = configs[:, 0].astype(np.float64), configs[:, CONFIG_FIELDS.index("size_in")].astype(np.float64)
    return np.c_[
        np.bincount(owner, weights=bops, minlength=len(archs)) / 1e9,
        np.bincount(owner, weights=c_in * size_in * size_in, minlength=len(archs)) / 1e6,
    ]
