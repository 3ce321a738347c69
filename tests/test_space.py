"""Search-space sizes, sampling and validation."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from math import comb

import pytest

from hwnas.arch import Arch, Layer
from hwnas.errors import ArchError, HwnasError
from hwnas.space import NASBNN, SearchSpace


def brute_force(space: SearchSpace) -> list[Arch]:
    """Every combination of choices that the validator accepts."""

    def stage_options(st):
        layer = [Layer(c, k, g) for c in st.widths for k in st.kernels for g in st.groups]
        for depth in st.depths:
            yield from itertools.product(layer, repeat=depth)

    archs = []
    for stem in space.stem_widths:
        for stages in itertools.product(*(list(stage_options(st)) for st in space.stages)):
            arch = Arch(stem, tuple(stages), space.strides)
            try:
                archs.append(space.validate(arch))
            except ArchError:
                pass
    return archs


def test_count_matches_brute_force_with_and_without_nd(tiny_space):
    for space in (tiny_space, tiny_space.without_nd()):
        archs = brute_force(space)
        assert space.count() == len(archs) == len(set(archs))
    assert tiny_space.count() < tiny_space.without_nd().count()


def test_nasbnn_sizes_match_closed_form():
    # Stage width sets chain (max of one = min of the next), so ND only acts inside a stage:
    # non-decreasing width sequences of length d over 3 widths number comb(d + 2, 2).
    def stage(depths, kg, nd):
        return sum((comb(d + 2, 2) if nd else 3**d) * kg**d for d in depths)

    for nd, space in ((True, NASBNN), (False, NASBNN.without_nd())):
        per_stage = [
            stage((2, 3), 1, nd),
            stage((2, 3), 4, nd),
            stage((2, 3), 4, nd),
            stage((8, 9), 4, nd),
            stage((2, 3), 4, nd),
        ]
        assert [space.count_stage(s) for s in range(5)] == per_stage
        total = 3
        for n in per_stage:
            total *= n
        assert space.count() == total
    assert NASBNN.count() == 332_353_674_695_147_520  # the paper's "3.3e17"


def test_sampling_is_uniform_and_valid(tiny_space):
    archs = brute_force(tiny_space)
    rng = random.Random(1)
    draws = 60 * len(archs)
    counts = Counter(tiny_space.sample(rng) for _ in range(draws))
    assert set(counts) == set(archs)  # every sample valid, every arch reachable
    chi2 = sum((counts[a] - 60) ** 2 / 60 for a in archs)
    dof = len(archs) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5  # far above a biased sampler's statistic


def test_sampling_is_seeded():
    assert NASBNN.sample(random.Random(7)) == NASBNN.sample(random.Random(7))
    assert NASBNN.sample(random.Random(7)) != NASBNN.sample(random.Random(8))


def test_largest_and_smallest():
    big, small = NASBNN.largest(), NASBNN.smallest()
    assert big.stem == 48 and big.depths == (3, 3, 3, 9, 3)
    assert all(layer.k == 5 for s, _, layer in big.layers() if s > 0)
    assert [st[0].g for st in big.stages] == [1, 1, 2, 4, 8]
    assert small.stem == 24 and small.depths == (2, 2, 2, 8, 2)
    assert [st[0].g for st in small.stages] == [1, 2, 4, 8, 16]
    assert [st[-1].c for st in small.stages] == [48, 96, 192, 384, 768]


def _arch(**changes) -> dict:
    obj = NASBNN.smallest().to_json()
    obj.update(changes)
    return obj


def test_nd_constraint():
    obj = _arch()
    obj["stages"][3][1] = "c512_k3_g8"  # widens then narrows back to 384
    with pytest.raises(ArchError, match=r"stage 4, layer 3 .*Non-Decreasing"):
        NASBNN.parse(obj)
    assert NASBNN.without_nd().parse(obj).stages[3][2].c == 384


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stem": 30}, r"stem: width 30 not in \{24, 32, 48\}"),
        ({"stages": [["c48_k3_g1"] * 2] * 4}, r"4 stages given, the space has 5"),
        ({"stages": [["c48_k3_g1"]] + [["c96_k3_g2"] * 2] * 4}, r"stage 1: depth 1 not in \{2, 3\}"),
        ({"strides": [1, 1, 2, 2, 2]}, r"strides \[1, 1, 2, 2, 2\] differ"),
    ],
)
def test_bad_arch_top_level(change, message):
    with pytest.raises(ArchError, match=message):
        NASBNN.parse(_arch(**change))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("c100_k3_g4", r"stage 3, layer 2 \(c100_k3_g4\): width 100 not in \{192, 256, 384\}"),
        ("c192_k7_g4", r"kernel 7 not in \{3, 5\}"),
        ("c192_k3_g3", r"groups 3 not in \{2, 4\}"),
        ("c192_k3", r"stage 3, layer 2: cannot parse 'c192_k3'"),
        ({"c": 192, "k": 3}, r"needs exactly the keys c, k, g"),
        ({"c": 192, "k": 3, "g": True}, r"g must be an integer"),
        (7, r"a layer is a string"),
    ],
)
def test_bad_layer(layer, message):
    obj = _arch()
    obj["stages"][2][1] = layer
    with pytest.raises(ArchError, match=message):
        NASBNN.parse(obj)


def test_groups_must_divide_input_channels(tiny_space):
    arch = Arch(4, ((Layer(4, 3, 3),), (Layer(8, 3, 2),)), tiny_space.strides)
    with pytest.raises(ArchError, match=r"stage 1, layer 1 \(c4_k3_g3\): groups 3 do not divide the 4 input"):
        tiny_space.validate(arch)


def test_load_errors(tmp_path):
    with pytest.raises(HwnasError, match="architecture file not found"):
        NASBNN.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ArchError, match=r"bad.json: not valid JSON \(line 1"):
        NASBNN.load(bad)
    bad.write_text('{"stem": 24, "stages": [], "depth": 3}')
    with pytest.raises(ArchError, match=r"unknown key\(s\) \['depth'\]"):
        NASBNN.load(bad)
