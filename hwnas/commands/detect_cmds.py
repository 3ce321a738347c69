"""`hwnas detect train | eval | predict`: Faster R-CNN with a searched binary subnet as backbone.

The detection modules are imported when a subcommand runs: torchvision takes a second to import,
which every other command would otherwise pay at start-up.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from hwnas.commands.output import add_json_flag, emit, log
from hwnas.commands.train_cmds import metrics_text
from hwnas.detect.config import DetectConfig
from hwnas.errors import HwnasError
from hwnas.train.checkpoint import check_resume
from hwnas.train.config import add_override_flags, overrides, resolve
from hwnas.train.distributed import is_main_process, set_threads
from hwnas.train.run import load_run, resolve_for_resume

DEFAULTS = DetectConfig()


def _require_coco_tools() -> None:
    """Detection reads and scores COCO data with pycocotools, an optional extra: one line if missing."""
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise HwnasError("hwnas detect needs pycocotools: pip install 'hwnas[detect]'") from None


def register(sub: argparse._SubParsersAction) -> None:
    detect = sub.add_parser("detect", help="Faster R-CNN detectors with a binary subnet as backbone")
    commands = detect.add_subparsers(dest="detect_command", required=True, metavar="SUBCOMMAND")

    p = commands.add_parser("train", help="train a detector, backbone initialised from the supernet; torchrun for DDP")
    p.add_argument("run_dir", type=Path, help="training run directory of the supernet")
    p.add_argument("arch", type=Path, help="architecture JSON file of the backbone")
    p.add_argument("--config", type=Path, help="TOML file of config keys (command-line flags win)")
    p.add_argument("--out", type=Path, help="detector directory (default RUN_DIR/detect-ARCHNAME)")
    p.add_argument("--resume", action="store_true", help="continue from the detector directory's last checkpoint")
    add_override_flags(p, DEFAULTS)
    add_json_flag(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("eval", help="COCO mAP on the val split, and the detector's OPs")
    p.add_argument("det_dir", type=Path, help="detector directory")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    add_json_flag(p)
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("predict", help="draw a detector's boxes on an image")
    p.add_argument("det_dir", type=Path, help="detector directory")
    p.add_argument("image", type=Path, help="image file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output image (PNG)")
    p.add_argument("--threshold", type=float, default=0.5, help="lowest score drawn (default 0.5)")
    add_json_flag(p)
    p.set_defaults(func=cmd_predict)


def cmd_train(args: argparse.Namespace) -> None:
    _require_coco_tools()
    from hwnas.detect.data import coco_tree
    from hwnas.detect.train import train_detector

    out = args.out or args.run_dir / f"detect-{args.arch.stem}"
    cli = overrides(args, DetectConfig)
    check_resume(out, args.resume, "detector")
    if args.resume:
        config = resolve_for_resume(out, cli, args.config, DEFAULTS)
    else:
        config = resolve(args.config, cli, DEFAULTS)
    coco_tree(config.data)  # a bad data path fails before the supernet is loaded
    run = load_run(args.run_dir)
    arch = run.space.load(args.arch)
    metrics = train_detector(run, arch, config, out, args.resume)
    if is_main_process():
        emit(args, {"det_dir": str(out), **metrics}, f"detector {out}\n{metrics_text(metrics)}")


def cmd_eval(args: argparse.Namespace) -> None:
    _require_coco_tools()
    from hwnas.detect.data import coco_tree, open_split
    from hwnas.detect.evaluate import evaluate_detector
    from hwnas.detect.ops import detector_ops
    from hwnas.detect.store import load_detector

    detector = load_detector(args.det_dir)
    set_threads(detector.config.threads)
    val = open_split(coco_tree(detector.config.data), "val")
    log(f"evaluating {args.det_dir} on {len(val)} val images")
    scores = evaluate_detector(detector.model, val, args.batch_size, progress=True)
    sizes = Counter((image["height"], image["width"]) for image in val.coco.loadImgs(val.ids))
    (height, width), _ = sizes.most_common(1)[0]
    ops = detector_ops(detector.model, detector.info.arch, detector.config, height, width).to_json()
    arch = detector.info.arch
    data = {"det_dir": str(args.det_dir), "arch": arch.to_json(), "images": len(val), **scores, "ops": ops}
    h, w = ops["input_size"]
    text = "\n".join(
        [
            f"detector {args.det_dir} (backbone {arch})",
            f"AP@[.5:.95] {scores['map']:.4f}   AP50 {scores['map50']:.4f}   AP75 {scores['map75']:.4f}",
            f"OPs at {h}x{w}, millions:",
            *(_ops_line(part, ops[part]) for part in ("backbone", "head", "total")),
        ]
    )
    emit(args, data, text)


def _ops_line(part: str, ops: dict[str, float]) -> str:
    return f"  {part:8s} {ops['ops_m']:10.3f}  " + "  ".join(
        f"{key[:-2]} {value:.3f}" for key, value in ops.items() if key != "ops_m"
    )


def cmd_predict(args: argparse.Namespace) -> None:
    _require_coco_tools()
    from hwnas.detect.predict import draw, predict, read_image
    from hwnas.detect.store import load_detector

    detector = load_detector(args.det_dir)
    set_threads(detector.config.threads)
    image = read_image(args.image)
    detections = predict(detector, image, args.threshold)
    draw(image, detections, args.output)
    lines = [f"{d['name']:>10s} {d['score']:.3f}  " + " ".join(f"{v:.1f}" for v in d["box"]) for d in detections]
    emit(
        args,
        {"image": str(args.image), "output": str(args.output), "detections": detections},
        "\n".join([f"{len(detections)} detections, drawn to {args.output}", *lines]),
    )
