"""COCO mAP of a detector with pycocotools: AP@[.5:.95], AP50 and AP75 over all areas, 100 detections.

:func:`coco_map` is the one scoring path; :func:`evaluate_detector` runs a detector over a split
and scores its detections with it. Detections are in the split's original image coordinates
(Faster R-CNN's transform maps its boxes back) as COCO results: ``[x, y, w, h]``, category id
(= the model's label) and score.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from hwnas.detect.data import CocoImages, collate

METRICS = {"map": 0, "map50": 1, "map75": 2}  # indices in COCOeval.stats


def coco_map(coco: Any, detections: list[dict[str, Any]], image_ids: list[int] | None = None) -> dict[str, float]:
    """mAP of ``detections`` against the ground truth ``coco`` (a pycocotools COCO), on ``image_ids`` (all by default).

    No detections at all scores 0 (pycocotools cannot load an empty result list).
    """
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return dict.fromkeys(METRICS, 0.0)
    with redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: max(float(evaluator.stats[i]), 0.0) for name, i in METRICS.items()}


def detect(model: nn.Module, dataset: CocoImages, batch_size: int = 8, progress: bool = False) -> list[dict[str, Any]]:
    """``model``'s detections on every image of ``dataset`` as COCO results (eval mode, no gradients)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc="detecting", disable=not progress, leave=False):
            for out, target in zip(model([im.to(device) for im in images]), targets, strict=True):
                boxes = out["boxes"].cpu()
                boxes[:, 2:] -= boxes[:, :2]
                results += [
                    {"image_id": target["image_id"], "category_id": int(label), "bbox": box, "score": float(score)}
                    for box, label, score in zip(
                        boxes.tolist(), out["labels"].tolist(), out["scores"].tolist(), strict=True
                    )
                ]
    model.train(was_training)
    return results


def evaluate_detector(model: nn.Module, dataset: CocoImages, batch_size: int = 8, progress: bool = False) -> dict:
    """COCO mAP of ``model`` on ``dataset`` (its image ids only, when it is cut to fewer images)."""
    return coco_map(dataset.coco, detect(model, dataset, batch_size, progress), list(dataset.ids))
