"""`hwnas import nasbnn FILE --out DIR`: the NAS-BNN authors' supernet as a run, or their search
result as arch files."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwnas.commands.output import add_json_flag, emit, log


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import another project's artefacts (nasbnn: the paper authors' release)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    q = kinds.add_parser(
        "nasbnn",
        help="checkpoint.pth.tar -> a run directory; info.pth.tar (their search result) -> arch files",
    )
    q.add_argument("file", type=Path, help="the authors' checkpoint.pth.tar or info.pth.tar")
    q.add_argument("--out", type=Path, required=True, help="run directory (checkpoint) or arch folder (search result)")
    q.add_argument("--data", default=None, help="the run's data for calibration and evaluation (imagefolder:PATH)")
    add_json_flag(q)
    q.set_defaults(func=cmd_import_nasbnn)


def cmd_import_nasbnn(args: argparse.Namespace) -> None:
    from hwnas.train.nasbnn import import_checkpoint, import_search, is_search_result, load_release

    obj = load_release(args.file)
    if is_search_result(obj):
        rows = import_search(obj, args.file, args.out)
        lines = [f"{r['file']:14s} ops {r['ops'] or 0:8.2f} M  top-1 {r['accuracy'] or 0:6.2f}" for r in rows]
        emit(
            args,
            {"out": str(args.out), "front": rows},
            "\n".join([f"wrote {len(rows)} arch files to {args.out}", *lines]),
        )
        return
    done = import_checkpoint(obj, args.file, args.out, args.data)
    log(f"imported {done.tensors} tensors from {args.file}")
    emit(
        args,
        {"run_dir": str(done.run_dir), "num_classes": done.num_classes, "tensors": done.tensors},
        f"run {done.run_dir}: the NAS-BNN supernet, {done.num_classes} classes, convention nasbnn",
    )
