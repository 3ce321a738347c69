"""Detectors with a binary subnet backbone: the synthetic set, the network, mAP, resume, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hwnas.cli import main
from hwnas.detect.config import DetectConfig
from hwnas.detect.data import open_split
from hwnas.detect.evaluate import coco_map, evaluate_detector
from hwnas.detect.model import build_detector
from hwnas.detect.ops import detector_ops
from hwnas.detect.store import load_detector
from hwnas.detect.synthetic import SyntheticSpec, annotation_file, ensure_synthetic, image_dir, is_complete
from hwnas.detect.train import train_detector
from hwnas.model import Mode
from hwnas.predictors.ops import count_ops
from hwnas.train.checkpoint import FILENAME, load_checkpoint
from hwnas.train.run import load_run
from tests.test_train_cli import _error_line
from tests.test_train_resume import _assert_same

SMALL = SyntheticSpec(canvas=64, train=16, val=4, max_digits=3, min_size=12, max_size=24)
"""A few small canvases: every test here runs in seconds."""


def small_config(root: Path, **changes) -> DetectConfig:
    base = {
        "data": f"coco:{root}",
        "epochs": 1,
        "batch_size": 4,
        "min_size": 64,
        "max_size": 64,
        "first_stage": 3,
        "anchor_size": 8,
        "fpn_channels": 16,
        "head_size": 32,
        "proposals": 20,
        "roi_samples": 16,
        "checkpoint_minutes": 0.0,
    }
    return DetectConfig(**{**base, **changes})


@pytest.fixture(autouse=True)
def _one_thread(tmp_path_factory, monkeypatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    return ensure_synthetic(SMALL, tmp_path_factory.mktemp("data"))


def _annotations(root: Path, split: str) -> dict:
    return json.loads((root / annotation_file(split)).read_text())


def test_synthetic_set_is_deterministic_and_its_boxes_are_right(small_tree: Path, tmp_path: Path) -> None:
    again = ensure_synthetic(SMALL, tmp_path)
    for split in ("train", "val"):
        assert _annotations(small_tree, split) == _annotations(again, split)
        coco = _annotations(small_tree, split)
        assert len(coco["images"]) == SMALL.count(split)
        for image in coco["images"]:
            pixels = np.asarray(Image.open(small_tree / image_dir(split) / image["file_name"]))
            assert np.array_equal(pixels, np.asarray(Image.open(again / image_dir(split) / image["file_name"])))
            inside = np.zeros_like(pixels, dtype=bool)
            anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            assert 1 <= len(anns) <= SMALL.max_digits
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert 1 <= ann["category_id"] <= 10 and ann["area"] == w * h and ann["iscrowd"] == 0
                assert not inside[y : y + h, x : x + w].any(), "boxes overlap"
                inside[y : y + h, x : x + w] = True
                crop = pixels[y : y + h, x : x + w]
                assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any(), "box not tight"
            assert not pixels[~inside].any(), "ink outside every box"


def test_incomplete_synthetic_set_is_regenerated(tmp_path: Path) -> None:
    root = ensure_synthetic(SMALL, tmp_path)
    (root / image_dir("val") / "000002.png").unlink()
    assert not is_complete(root, SMALL)
    assert ensure_synthetic(SMALL, tmp_path) == root and is_complete(root, SMALL)
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary directory left


def test_forward_and_backward_with_a_random_subnet_backbone(toy_run) -> None:
    run = load_run(toy_run)
    arch = run.space.sample(random.Random(3))
    subnet = run.supernet.extract(arch)
    subnet.set_mode(Mode.BWBA)
    config = small_config(Path("."), min_size=48, max_size=64)
    detector = build_detector(subnet, 11, config, (0.3,) * 3, (0.3,) * 3).train()
    images = [torch.rand(3, 48, 64), torch.rand(3, 64, 48)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 20.0, 30.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.tensor([[10.0, 10.0, 30.0, 24.0], [30.0, 30.0, 44.0, 60.0]]), "labels": torch.tensor([1, 10])},
    ]
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    named = dict(detector.named_parameters())
    for name in ("backbone.body.stem.stem.weight", "backbone.body.stage5.blocks.0.conv1.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert named["roi_heads.box_predictor.cls_score.weight"].grad.abs().sum() > 0
    out = detector.eval()(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4 and len(out[0]["labels"]) == len(out[0]["scores"])
    ops = detector_ops(detector, arch, config, 64, 64)
    assert ops.input_size == (64, 64) and ops.backbone == count_ops(arch, 64, num_classes=0)
    assert ops.backbone.flops == 0 and ops.head.int8ops == ops.head.bops == 0 and ops.fpn > 0 and ops.rpn > 0
    assert ops.total.ops == ops.backbone.ops + ops.head.ops
    assert count_ops(arch, 64, width=96).bops == count_ops(arch, 96, width=64).bops > count_ops(arch, 64).bops


class GroundTruth(nn.Module):
    """Detects exactly the annotated boxes of a split, image by image, in the loader's order."""

    def __init__(self, split, empty: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.split, self.empty, self.seen = split, empty, 0

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        out = []
        for _ in images:
            _, target = self.split[self.seen]
            self.seen += 1
            n = 0 if self.empty else len(target["labels"])
            out.append({"boxes": target["boxes"][:n], "labels": target["labels"][:n], "scores": torch.ones(n)})
        return out


def test_map_of_perfect_and_empty_predictions(small_tree: Path) -> None:
    val = open_split(small_tree, "val")
    assert evaluate_detector(GroundTruth(val), val, batch_size=3) == {"map": 1.0, "map50": 1.0, "map75": 1.0}
    assert evaluate_detector(GroundTruth(val, empty=True), val) == {"map": 0.0, "map50": 0.0, "map75": 0.0}
    anns = val.coco.dataset["annotations"]
    wrong = [
        {"image_id": a["image_id"], "category_id": a["category_id"] % 10 + 1, "bbox": a["bbox"], "score": 1.0}
        for a in anns
    ]
    assert coco_map(val.coco, wrong)["map50"] == 0.0


def test_detector_training_resumes_exactly(toy_run, small_tree: Path, tmp_path: Path) -> None:
    run = load_run(toy_run)
    arch = run.space.smallest()
    config = small_config(small_tree, epochs=2)
    whole = train_detector(run, arch, config, tmp_path / "whole")
    train_detector(run, arch, small_config(small_tree, epochs=2, max_steps=3), tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / FILENAME)["position"]["global_step"] == 3
    resumed = train_detector(run, arch, config, tmp_path / "cut", resume=True)
    a, b = load_checkpoint(tmp_path / "whole" / FILENAME), load_checkpoint(tmp_path / "cut" / FILENAME)
    _assert_same(a["model"], b["model"])
    assert a["position"]["global_step"] == b["position"]["global_step"] == 8
    assert {"val_map", "val_map50", "val_map75", "loss_classifier"} <= set(whole)
    assert resumed["val_map50"] == whole["val_map50"]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert load_detector(tmp_path / "cut").info.arch == arch


def test_commands_and_their_errors(capsys, toy_run, small_tree: Path, tmp_path: Path) -> None:
    arch = tmp_path / "small.json"
    assert main(["sample", "--smallest", "--run", str(toy_run), "-o", str(arch)]) == 0
    assert json.loads(arch.read_text()) == load_run(toy_run).space.smallest().to_json()
    assert main(["sample", "--smallest", "-o", str(tmp_path / "full.json")]) == 0
    det = tmp_path / "det"
    flags = [
        "--data",
        f"coco:{small_tree}",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--min-size",
        "64",
        "--max-size",
        "64",
    ]
    flags += ["--fpn-channels", "16", "--head-size", "32", "--proposals", "20", "--anchor-size", "8"]
    assert "run directory not found" in _error_line(capsys, ["detect", "train", str(tmp_path / "no"), str(arch)])
    err = _error_line(capsys, ["detect", "train", str(toy_run), str(tmp_path / "full.json"), *flags])
    assert "not in" in err  # a full-width NAS-BNN arch is outside the toy run's scaled space
    err = _error_line(capsys, ["detect", "train", str(toy_run), str(arch), "--data", f"coco:{tmp_path}/nowhere"])
    assert err == f"hwnas: error: COCO directory not found: {tmp_path}/nowhere"
    assert "expected a COCO 2017 tree" in _error_line(
        capsys, ["detect", "train", str(toy_run), str(arch), "--data", f"coco:{tmp_path}"]
    )
    assert "unknown detection data" in _error_line(
        capsys, ["detect", "train", str(toy_run), str(arch), "--data", "voc"]
    )
    assert "nothing to resume" in _error_line(
        capsys, ["detect", "train", str(toy_run), str(arch), "--out", str(det), "--resume"]
    )
    assert "not a detector directory" in _error_line(capsys, ["detect", "eval", str(tmp_path)])

    assert main(["detect", "train", str(toy_run), str(arch), "--out", str(det), *flags, "--json"]) == 0
    assert "val_map50" in json.loads(capsys.readouterr().out)
    assert main(["detect", "eval", str(det), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == SMALL.val and 0 <= report["map"] <= report["map50"] <= 1
    assert report["ops"]["input_size"] == [64, 64] and report["ops"]["backbone"]["flops_m"] == 0
    assert report["ops"]["total"]["ops_m"] == pytest.approx(
        report["ops"]["backbone"]["ops_m"] + report["ops"]["head"]["ops_m"]
    )
    image = small_tree / image_dir("val") / "000001.png"
    assert (
        main(["detect", "predict", str(det), str(image), "-o", str(tmp_path / "out.png"), "--threshold", "0", "--json"])
        == 0
    )
    found = json.loads(capsys.readouterr().out)["detections"]
    assert all(len(d["box"]) == 4 and 0 <= d["score"] <= 1 for d in found)
    with Image.open(tmp_path / "out.png") as drawn:
        assert drawn.size == (64, 64) and drawn.mode == "RGB"
    assert "image not found" in _error_line(
        capsys, ["detect", "predict", str(det), str(tmp_path / "x.png"), "-o", str(tmp_path / "o.png")]
    )
