"""The architecture description: both layer notations, round trips, derived shapes."""

from __future__ import annotations

import itertools
import json
import random

from hwnas.arch import Arch, Layer, conv_out_size
from hwnas.space import NASBNN


def test_both_layer_notations_parse_to_the_same_arch():
    arch = NASBNN.sample(random.Random(3))
    as_strings = arch.to_json()
    as_objects = {
        "stem": arch.stem,
        "stages": [[{"c": x.c, "k": x.k, "g": x.g} for x in st] for st in arch.stages],
    }
    assert NASBNN.parse(as_strings) == NASBNN.parse(as_objects) == arch
    assert Layer.parse("c384_k5_g8", "here") == Layer(384, 5, 8)
    assert str(Layer(384, 5, 8)) == "c384_k5_g8"


def test_json_round_trip_and_hashable(tmp_path):
    arch = NASBNN.sample(random.Random(4))
    path = tmp_path / "a.json"
    path.write_text(arch.dumps())
    assert NASBNN.load(path) == arch
    assert json.loads(arch.dumps()) == arch.to_json()
    assert "strides" not in arch.to_json()
    assert len({arch, NASBNN.load(path)}) == 1


def test_layer_shapes_follow_strides_and_widths():
    arch = NASBNN.smallest()
    shapes = arch.layer_shapes(224)
    assert [s.size_in for s in shapes if s.index == 0] == [112, 112, 56, 28, 14]
    assert shapes[-1].size_out == 7
    assert shapes[0].c_in == arch.stem and all(b.c_in == a.c_out for a, b in itertools.pairwise(shapes))
    assert [s.stride for s in shapes[:3]] == [1, 1, 2]
    # odd sizes round up at stride 2, as the conv (padding k // 2) does
    assert conv_out_size(7, 3, 2) == conv_out_size(7, 5, 2) == 4
    assert Arch(24, NASBNN.smallest().stages).layer_shapes(32)[-1].size_out == 1
