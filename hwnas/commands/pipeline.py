"""`hwnas pipeline`: the main job on the built-in defaults.

Today it runs the foundation's steps: the space's size, a sampled subnet written to the output
directory, its OPs, and a timed forward pass of it extracted from a freshly built supernet.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from hwnas.commands.output import add_json_flag, emit, log
from hwnas.model import build_supernet
from hwnas.space import NASBNN
from predictors.ops import count_ops


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the main job on the built-in defaults")
    p.add_argument("--out", type=Path, default=Path("hwnas-out"), help="output directory (default hwnas-out)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sampled subnet and weights")
    p.add_argument("--resolution", type=int, default=224, help="input size of the forward pass")
    p.add_argument("--classes", type=int, default=1000, help="number of classes")
    add_json_flag(p)
    p.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"[1/4] search space: {NASBNN.count():.3e} subnets with ND, {NASBNN.without_nd().count():.3e} without")
    arch = NASBNN.sample(random.Random(args.seed))
    arch_path = args.out / "arch.json"
    arch_path.write_text(arch.dumps() + "\n")
    log(f"[2/4] sampled {arch} -> {arch_path}")
    ops = count_ops(arch, args.resolution, args.classes)
    log(f"[3/4] OPs {ops.ops / 1e6:.2f} M at {args.resolution}x{args.resolution}")
    torch.manual_seed(args.seed)
    subnet = build_supernet(NASBNN, args.classes).eval().extract(arch)
    image = torch.randn(1, 3, args.resolution, args.resolution)
    with torch.inference_mode():
        start = time.perf_counter()
        logits = subnet(image)
        forward_ms = (time.perf_counter() - start) * 1e3
    log(f"[4/4] forward pass of the extracted subnet: logits {tuple(logits.shape)} in {forward_ms:.1f} ms")
    data = {
        "space_with_nd": NASBNN.count(),
        "space_without_nd": NASBNN.without_nd().count(),
        "arch": arch.to_json(),
        "arch_path": str(arch_path),
        **ops.millions(),
        "forward_ms": forward_ms,
        "logits_shape": list(logits.shape),
    }
    text = (
        f"subnet  {arch}\nOPs     {ops.ops / 1e6:.2f} M\n"
        f"forward {forward_ms:.1f} ms, logits {tuple(logits.shape)}\narch    {arch_path}"
    )
    emit(args, data, text)
