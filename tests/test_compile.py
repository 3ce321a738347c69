"""The compiled network: fused epilogues and whole subnets equal to PyTorch, export, cross-compile, CLI."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hwnas.cli import main
from hwnas.compile.binconv import ConvShape, binary_conv2d
from hwnas.compile.bitpack import pack_activations_ref, pack_weights
from hwnas.compile.deploy import CompiledNet, compile_subnet, export, verify
from hwnas.compile.epilogue import Residual
from hwnas.compile.fold import fold
from hwnas.compile.runner import build, run
from hwnas.errors import HwnasError
from hwnas.model import ModelOptions, build_supernet
from hwnas.model.layers import shortcut
from hwnas.space import NASBNN, scaled_space
from hwnas.targets.target import load_target

LOCAL = load_target("local").tvm_target()
AARCH64 = load_target("aarch64")


def trained_like_supernet(resolution: int, classes: int = 10, space=NASBNN, options=None):
    """A supernet with non-trivial parameters and BN statistics, so folding is really exercised."""
    torch.manual_seed(0)
    net = build_supernet(space, classes, options or ModelOptions())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        net.set_active(space.largest())
        net(torch.randn(8, 3, resolution, resolution))
    return net.eval()


@pytest.mark.parametrize(
    ("residual", "dims"),
    [
        (Residual.POOL, (24, 24, 3, 4, 2, 9, 7)),  # odd sizes: ceil-mode pooling windows
        (Residual.IDENTITY, (48, 48, 5, 2, 1, 6, 6)),
        (Residual.TILE, (40, 96, 1, 1, 1, 5, 5)),  # 96 output channels tile 40 input channels
    ],
)
def test_fused_epilogue_matches_model(residual, dims):
    c_in, c_out, k, g, stride, h, w = dims
    shape = ConvShape(c_in, c_out, k, g, stride, h, w)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((c_in, h, w)).astype("float32")
    thr = rng.standard_normal(c_in).astype("float32") * 0.1
    weight = rng.standard_normal((c_out, c_in // g, k, k)).astype("float32")
    scale, bias, shift_in, shift_out = (rng.standard_normal(c_out).astype("float32") for _ in range(4))
    slope = rng.random(c_out).astype("float32")
    src_t = torch.from_numpy(
        rng.standard_normal((1, c_out if residual is not Residual.TILE else c_in, h, w)).astype("float32")
    )
    func, tile = binary_conv2d(shape, LOCAL, residual=residual)
    packed = pack_activations_ref(x, thr, g, shape.pad, tile.word_bits)
    source = src_t[0].permute(1, 2, 0).numpy() if residual is not Residual.IDENTITY else None
    if residual is Residual.IDENTITY:
        src_t = torch.from_numpy(rng.standard_normal((1, c_out, *shape.output_shape[:2])).astype("float32"))
        source = src_t[0].permute(1, 2, 0).numpy()
    args = [
        packed,
        pack_weights(weight, g, tile.vb, tile.word_bits),
        scale,
        bias,
        np.ascontiguousarray(source),
        shift_in,
        slope,
        shift_out,
    ]
    got = run(build(func, LOCAL), *args, out_shape=shape.output_shape, out_dtype="float32")

    a = torch.where(torch.from_numpy(x - thr[:, None, None]) >= 0, 1.0, -1.0)[None]
    dot = F.conv2d(
        F.pad(a, [k // 2] * 4, value=1.0),
        torch.where(torch.from_numpy(weight) >= 0, 1.0, -1.0),
        stride=stride,
        groups=g,
    )
    v = lambda p: torch.from_numpy(p).view(1, -1, 1, 1)  # noqa: E731
    z = dot * v(scale) + v(bias) + shortcut(src_t, c_out, stride if residual is Residual.POOL else 1) - v(shift_in)
    expected = (torch.where(z >= 0, z, z * v(slope)) + v(shift_out))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("seed", "resolution"), [(0, 32), (1, 32), (2, 40), (3, 32)])
def test_whole_subnet_matches_pytorch(seed, resolution, tmp_path):
    net = trained_like_supernet(resolution)
    arch = NASBNN.sample(random.Random(seed)) if seed else NASBNN.largest()
    subnet = net.extract(arch)
    compiled = compile_subnet(subnet, resolution, LOCAL)
    check = verify(CompiledNet(compiled.executable), subnet, resolution, samples=2, seed=seed)
    assert check.ok, check
    loaded = CompiledNet.load(export(compiled, tmp_path / "net.so"))
    image = np.random.default_rng(seed).standard_normal((1, 3, resolution, resolution), dtype=np.float32)
    np.testing.assert_array_equal(loaded(image), CompiledNet(compiled.executable)(image))
    assert len(compiled.labels) == 2 + 4 * sum(arch.depths)


@pytest.mark.parametrize("seed", [5, 6])
def test_dense_group_weights_compile_to_what_pytorch_computes(seed):
    """A supernet with dense group weights (the training default): its block diagonals compile exactly."""
    space = scaled_space(NASBNN, 0.25)
    net = trained_like_supernet(32, space=space, options=ModelOptions(group_weights="dense"))
    subnet = net.extract(space.sample(random.Random(seed)))
    check = verify(CompiledNet(compile_subnet(subnet, 32, LOCAL).executable), subnet, 32, samples=2, seed=seed)
    assert check.ok, check


def test_fold_needs_the_deployable_network():
    net = build_supernet(NASBNN, 10)
    with pytest.raises(HwnasError, match="eval mode and BWBA"):
        fold(net, 32)


def test_onnx_export_matches_model(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    arch_path = tmp_path / "arch.json"
    arch_path.write_text(NASBNN.smallest().dumps())
    out = tmp_path / "net.onnx"
    assert (
        main(
            [
                "export",
                str(arch_path),
                "--weights",
                "random",
                "--classes",
                "10",
                "--resolution",
                "32",
                "-o",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["output"] == str(out)
    torch.manual_seed(0)
    subnet = build_supernet(NASBNN, 10).eval().extract(NASBNN.smallest())
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    got = ReferenceEvaluator(onnx.load(str(out))).run(None, {"image": image})[0]
    with torch.no_grad():
        expected = subnet(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_compile_cli_verify_and_bench(tmp_path, capsys):
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(NASBNN.sample(random.Random(7)).dumps())
    code = main(
        [
            "compile",
            str(arch_path),
            "--weights",
            "random",
            "--classes",
            "10",
            "--resolution",
            "32",
            "-o",
            str(tmp_path / "m.so"),
            "--verify",
            "--bench",
            "--profile",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["verified"] and data["top1_agree"] and data["max_rel_error"] < 1e-3
    assert data["latency_ms"] > 0 and data["speedup"] == pytest.approx(data["torch_fp32_ms"] / data["latency_ms"])
    assert data["latency_median_ms"] >= data["latency_ms"] and data["torch_fp32_median_ms"] >= data["torch_fp32_ms"]
    assert data["profile"][0]["kernel"] == "stem" and data["profile"][-1]["kernel"] == "head"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--weights", "random", "--target", "gpu9"], "unknown target 'gpu9'"),
        (["--weights", "/nonexistent/run"], "--weights must be a training run directory or 'random'"),
    ],
)
def test_compile_cli_bad_input(tmp_path, capsys, argv, message):
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(NASBNN.smallest().dumps())
    assert main(["compile", str(arch_path), "-o", str(tmp_path / "m.so"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_compile_cli_bad_arch(tmp_path, capsys):
    arch_path = tmp_path / "arch.json"
    arch_path.write_text('{"stem": 24, "stages": [["c48_k3_g1", "c40_k3_g1"], [], [], [], []]}')
    assert main(["compile", str(arch_path), "--weights", "random", "-o", str(tmp_path / "m.so")]) == 2
    assert "stage 1, layer 2 (c40_k3_g1): width 40 not in" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which(AARCH64.cc) is None, reason="no aarch64 cross compiler")
def test_aarch64_cross_compiled_network(tmp_path):
    torch.manual_seed(0)
    subnet = build_supernet(NASBNN, 10).eval().extract(NASBNN.smallest())
    path = export(compile_subnet(subnet, 32, AARCH64.tvm_target()), tmp_path / "net.so", AARCH64.cc)
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def test_compile_trained_run_weights(toy_run, tmp_path, capsys):
    from hwnas.train.run import load_run

    run = load_run(toy_run)
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(run.space.sample(random.Random(3)).dumps())
    code = main(
        ["compile", str(arch_path), "--weights", str(toy_run), "-o", str(tmp_path / "m.so"), "--verify", "--json"]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["verified"] and data["resolution"] == run.config.resolution
    arch_path.write_text(NASBNN.smallest().dumps())  # full-width arch: not in the run's quarter-width space
    assert main(["compile", str(arch_path), "--weights", str(toy_run), "-o", str(tmp_path / "m.so")]) == 2
    assert "not in" in capsys.readouterr().err


def test_onnx_export_verify_runs_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(NASBNN.sample(random.Random(3)).dumps())
    out = tmp_path / "net.onnx"
    argv = ["export", str(arch_path), "--weights", "random", "--classes", "10", "--resolution", "32"]
    assert main([*argv, "-o", str(out), "--verify", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verified"] is True and data["top1_agree"] is True and data["max_rel_error"] < 1e-5
