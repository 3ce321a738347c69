"""`hwnas space | sample | show | ops`: inspect the search space and single architectures."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from hwnas.arch import Arch
from hwnas.commands.output import add_json_flag, emit, table
from hwnas.errors import HwnasError
from hwnas.files import atomic_write_text
from hwnas.predictors.ops import count_ops, layer_bops
from hwnas.space import NASBNN


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("space", help="exact size of the search space, with and without ND")
    add_json_flag(p)
    p.set_defaults(func=cmd_space)

    p = sub.add_parser("sample", help="write a valid architecture (uniform over the ND space)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: fresh randomness)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--largest", action="store_true", help="the largest subnet")
    which.add_argument("--smallest", action="store_true", help="the smallest subnet")
    p.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    p.add_argument("--run", type=Path, default=None, help="from this training run's (scaled) space")
    p.set_defaults(func=cmd_sample)

    for name, func, text in (
        ("show", cmd_show, "print an architecture as a table in the paper's notation"),
        ("ops", cmd_ops, "OPs, FLOPs, BOPs and Int8OPs of an architecture (millions of MACs)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("arch", type=Path, help="architecture JSON file")
        p.add_argument("--resolution", type=int, default=224, help="square input size (default 224)")
        p.add_argument("--classes", type=int, default=1000, help="number of classes (default 1000)")
        add_json_flag(p)
        p.set_defaults(func=func)


def cmd_space(args: argparse.Namespace) -> None:
    free = NASBNN.without_nd()
    stages = [
        {"stage": s + 1, "with_nd": NASBNN.count_stage(s), "without_nd": free.count_stage(s)}
        for s in range(len(NASBNN.stages))
    ]
    data = {
        "with_nd": NASBNN.count(),
        "without_nd": free.count(),
        "stem_choices": len(NASBNN.stem_widths),
        "stages": stages,
    }
    rows = [("stem", data["stem_choices"], data["stem_choices"])]
    rows += [(f"stage {st['stage']}", st["with_nd"], st["without_nd"]) for st in stages]
    rows.append(("total", data["with_nd"], data["without_nd"]))
    text = table(("part", "with ND", "without ND"), rows)
    text += f"\n\nsubnets: {data['with_nd']:.3e} with the Non-Decreasing constraint, {data['without_nd']:.3e} without"
    emit(args, data, text)


def cmd_sample(args: argparse.Namespace) -> None:
    space = NASBNN
    if args.run is not None:
        from hwnas.train.run import read_config
        from hwnas.train.supernet import config_space

        if not args.run.is_dir():
            raise HwnasError(f"run directory not found: {args.run}")
        space = config_space(read_config(args.run))
    if args.largest:
        arch = space.largest()
    elif args.smallest:
        arch = space.smallest()
    else:
        arch = space.sample(random.Random(args.seed))
    text = json.dumps(arch.to_json(), indent=1)
    if args.output is None:
        print(text)
    else:
        atomic_write_text(args.output, text + "\n")


def _shape_rows(arch: Arch, resolution: int) -> list[dict]:
    return [
        {
            "stage": s.stage + 1,
            "layer": s.index + 1,
            "notation": f"c{s.c_out}_k{s.k}_g{s.g}",
            "c_in": s.c_in,
            "stride": s.stride,
            "size_in": s.size_in,
            "size_out": s.size_out,
            "bops_m": layer_bops(s) / 1e6,
        }
        for s in arch.layer_shapes(resolution)
    ]


def cmd_show(args: argparse.Namespace) -> None:
    arch = NASBNN.load(args.arch)
    rows = _shape_rows(arch, args.resolution)
    ops = count_ops(arch, args.resolution, args.classes).millions()
    data = {"arch": arch.to_json(), "resolution": args.resolution, "layers": rows, **ops}
    text = f"stem c{arch.stem}_k3 stride 2 (8-bit), {args.resolution} -> {arch.stem_size(args.resolution)}\n"
    text += table(
        ("stage", "layer", "layer (paper)", "c_in", "stride", "size", "BOPs (M)"),
        [
            (
                r["stage"],
                r["layer"],
                r["notation"],
                r["c_in"],
                r["stride"],
                f"{r['size_in']}->{r['size_out']}",
                f"{r['bops_m']:.1f}",
            )
            for r in rows
        ],
    )
    text += f"\nclassifier {arch.last_width} -> {args.classes}; OPs {ops['ops_m']:.2f} M"
    emit(args, data, text)


def cmd_ops(args: argparse.Namespace) -> None:
    arch = NASBNN.load(args.arch)
    data = count_ops(arch, args.resolution, args.classes).millions()
    text = "\n".join(f"{key[:-2].upper():8s} {value:12.3f} M" for key, value in data.items())
    emit(args, data, text)
