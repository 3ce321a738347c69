"""Importing the NAS-BNN authors' release: their checkpoint computes what their model computes,
in PyTorch and compiled; every key maps or the import names the first that does not; their search
result becomes arch files; --no-calibration keeps the stored BatchNorm statistics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hwnas.cli import main
from hwnas.compile.binconv import ConvShape, binary_conv2d
from hwnas.compile.bitpack import pack_activations_ref, pack_weights
from hwnas.compile.deploy import CompiledNet
from hwnas.compile.fold import border_correction
from hwnas.compile.runner import build, run
from hwnas.errors import HwnasError
from hwnas.model import ModelOptions, build_supernet
from hwnas.space import NASBNN
from hwnas.targets.target import load_target
from hwnas.train.nasbnn import cand_to_arch, convert_state, read_state_dict
from hwnas.train.run import load_run
from tests.nasbnn_reference import arch_to_cand, random_checkpoint, reference_logits

CLASSES = 10


@pytest.fixture(scope="module")
def checkpoint():
    return random_checkpoint(CLASSES, seed=1, dead_stem=8)


@pytest.fixture(scope="module")
def imported(checkpoint, tmp_path_factory):
    """The authors' checkpoint format as their training script saves it (DDP prefix), imported."""
    root = tmp_path_factory.mktemp("nasbnn")
    path = root / "checkpoint.pth.tar"
    state = {f"module.{k}": v for k, v in checkpoint.items()}
    torch.save({"epoch": 512, "arch": "superbnn", "state_dict": state}, path)
    assert main(["import", "nasbnn", str(path), "--out", str(root / "run")]) == 0
    return root / "run"


def _archs():
    return [NASBNN.largest(), NASBNN.smallest(), *(NASBNN.sample(random.Random(s)) for s in (3, 4))]


def test_imported_run_computes_the_authors_forward(checkpoint, imported):
    run = load_run(imported)
    assert run.config.convention == "nasbnn" and run.splits.num_classes == CLASSES
    x = torch.randn(2, 3, 32, 32)
    for arch in _archs():
        cand = arch_to_cand(arch)
        assert cand_to_arch(cand) == arch
        expected = reference_logits(checkpoint, cand, x)
        run.supernet.set_active(arch)
        with torch.no_grad():
            got, sub = run.supernet(x), run.supernet.extract(arch)(x)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
        assert torch.equal(got, sub)


def test_imported_run_rounds_as_the_authors_code_bit_for_bit(checkpoint, imported):
    """Every op of their forward in their order (weight normalization by mean and std, their
    matrices through F.linear): only the conv's sum of +-scale terms rounds differently, and with
    that sum rounded once the outputs are equal, not close. One ulp in a weight scale had been
    enough to flip a sign near its threshold and move the logits of a 224x224 subnet by 5-10 %."""
    run = load_run(imported)
    x = torch.randn(2, 3, 32, 32)
    for arch in _archs():
        run.supernet.set_active(arch)
        with torch.no_grad():
            got = run.supernet(x)
        assert torch.equal(got, reference_logits(checkpoint, arch_to_cand(arch), x, round_once=True))


def test_compiled_imported_subnet_matches_the_authors_forward(checkpoint, imported, tmp_path, capsys):
    arch = NASBNN.sample(random.Random(5))
    cand = arch_to_cand(arch)
    arch_file = tmp_path / "cand.json"
    arch_file.write_text(json.dumps(cand.tolist()))  # the authors' candidate rows as an arch file
    out = tmp_path / "net.so"
    argv = ["compile", str(arch_file), "--weights", str(imported), "--no-calibration", "--resolution", "32"]
    assert main([*argv, "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == arch.to_json()
    net = CompiledNet.load(out)
    for seed in range(2):
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 3, 32, 32), dtype=np.float32))
        expected = reference_logits(checkpoint, cand, x)
        got = torch.from_numpy(net(x.numpy()))
        assert float((got - expected).norm() / expected.norm()) < 1e-4
        assert int(got.argmax()) == int(expected.argmax())


@pytest.mark.parametrize(("k", "g", "stride", "size"), [(3, 2, 1, 6), (5, 4, 2, 8), (5, 2, 1, 3), (3, 1, 2, 7)])
def test_zero_padded_kernel_matches_torch(k, g, stride, size):
    c = 16
    shape = ConvShape(c, c, k, g, stride, size, size)
    rng = np.random.default_rng(k + size)
    x = rng.standard_normal((c, size, size)).astype("float32")
    thr = np.zeros(c, "float32")
    weight = np.where(rng.standard_normal((c, c // g, k, k)) >= 0, 1.0, -1.0).astype("float32")
    border = border_correction(torch.from_numpy(weight), g, stride, size)
    func, tile = binary_conv2d(shape, load_target("local").tvm_target(), affine=True, zero_pad=True)
    ones, zeros = np.ones(c, "float32"), np.zeros(c, "float32")
    packed = pack_activations_ref(x, thr, g, shape.pad, tile.word_bits)
    args = [packed, pack_weights(weight, g, tile.vb, tile.word_bits), ones, zeros, border]
    got = run(build(func, load_target("local").tvm_target()), *args, out_shape=shape.output_shape, out_dtype="float32")
    a = torch.where(torch.from_numpy(x) >= 0, 1.0, -1.0)[None]
    expected = F.conv2d(a, torch.from_numpy(weight), stride=stride, padding=k // 2, groups=g)[0].permute(1, 2, 0)
    np.testing.assert_array_equal(got, expected.numpy())


def test_state_dict_forms_and_unmapped_keys(checkpoint):
    bare = read_state_dict(dict(checkpoint), "bare")
    wrapped = read_state_dict({"state_dict": {f"module.{k}": v for k, v in checkpoint.items()}}, "wrapped")
    assert bare.keys() == wrapped.keys() == checkpoint.keys()
    net = build_supernet(NASBNN, CLASSES, ModelOptions(convention="nasbnn"))
    for change, message in (
        ({"features.2.0.binary_conv.fp2bin_7": torch.eye(49)}, "'features.2.0.binary_conv.fp2bin_7'"),
        ({"features.1.0.move11.bias": torch.zeros(1, 32, 1, 1)}, "'features.1.0.move11.bias' has shape"),
        ({"teacher.fc.weight": torch.zeros(1)}, "'teacher.fc.weight' .* maps to nothing"),
    ):
        with pytest.raises(HwnasError, match=message):
            convert_state({**checkpoint, **change}, net)
    missing = dict(checkpoint)
    del missing["features.3.1.prelu2.prelu.weight"]
    with pytest.raises(HwnasError, match=r"no tensor for stages\.2\.1\.act2\.slope"):
        convert_state(missing, net)
    with pytest.raises(HwnasError, match="biggest_cand"):
        convert_state({**checkpoint, "biggest_cand": arch_to_cand(NASBNN.smallest())}, net)


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(10, 1536), "module.conv9.weight": torch.zeros(1)}}, path)
    assert main(["import", "nasbnn", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hwnas: error: checkpoint key 'conv9.weight' (1,) maps to nothing in the NAS-BNN supernet"]
    assert not (tmp_path / "run").exists()


def test_search_result_imports_to_arch_files(tmp_path, capsys):
    archs = {40: NASBNN.smallest(), 180: NASBNN.largest()}
    cands = {ops: tuple(arch_to_cand(a).flatten().tolist()) for ops, a in archs.items()}
    info = {
        "memory": [],
        "candidates": list(cands.values()),
        "vis_dict": {c: {"ops": float(ops) + 0.4, "acc": 50.0 + ops / 10, "visited": True} for ops, c in cands.items()},
        "epoch": 20,
        "pareto_global": cands,
    }
    torch.save(info, tmp_path / "info.pth.tar")
    assert main(["import", "nasbnn", str(tmp_path / "info.pth.tar"), "--out", str(tmp_path / "front"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["front"]
    assert [r["file"] for r in rows] == ["ops-40.json", "ops-180.json"] and rows[1]["accuracy"] == 68.0
    for ops, arch in archs.items():
        assert NASBNN.load(tmp_path / "front" / f"ops-{ops}.json") == arch


def test_imported_run_without_data(imported, tmp_path, capsys):
    arch_file = tmp_path / "a.json"
    arch_file.write_text(NASBNN.smallest().dumps())
    assert main(["eval", str(imported), str(arch_file)]) == 2
    assert "has no data to recalibrate BatchNorm (or pass --no-calibration)" in capsys.readouterr().err
    assert main(["eval", str(imported), str(arch_file), "--no-calibration"]) == 2
    assert "has no data to evaluate: pass --data imagefolder:PATH" in capsys.readouterr().err
