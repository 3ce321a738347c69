"""How closely an imported NAS-BNN supernet computes what the authors' own code computes, at 224x224.

Needs a checkout of the authors' code (github.com/VDIGPKU/NAS-BNN; pass the folder holding their
``models/``): nothing of it is in hwnas. Builds their supernet with random weights, runs one
training-mode forward so that their quantizer steps are initialised from data as in training
(their fresh 8-bit stem rounds every weight to 0, and its logits would not depend on the image),
randomises the BatchNorm statistics, biases and slopes, saves it as their training script does,
imports it with ``hwnas import nasbnn`` and compares the logits of their model and of the imported
run's PyTorch subnet on the largest and ``--subnets`` random candidates, ``--inputs`` images each.
With ``--compile N`` it also compiles the first N subnets (``hwnas compile --no-calibration``) and
compares the libraries with the authors' model on the same images.

Their binary conv sums terms +-scale in float in the order of PyTorch's conv kernel; hwnas sums
the +-1 terms exactly and multiplies by the scale once. Everything else rounds as theirs does
(``tests/test_nasbnn.py`` checks bit equality with the sum rounded once). Where the two sums
differ by an ulp at a value next to a sign threshold, the binary network amplifies it: such
images read 3-10 % apart in relative L2, the rest about 3e-7.

    python benchmarks/nasbnn_fidelity.py --authors PATH [--subnets 6] [--inputs 8] [--compile 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hwnas.compile.deploy import CompiledNet
from hwnas.train.nasbnn import cand_to_arch
from hwnas.train.run import load_run

LIMIT = 1e-3  # the relative L2 error the issue allows on 7 of 8 comparisons


def randomised_model(models, seed: int) -> torch.nn.Module:
    """Their supernet with random weights, scales initialised by one training forward, eval mode."""
    torch.manual_seed(seed)
    model = models.superbnn()
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 224, 224), model.biggest_cand)
        for name, p in model.named_parameters():
            if "move" in name or name.endswith("bn.bias"):
                p.normal_(0, 0.1)
            elif "prelu" in name or name.endswith("bn.weight"):
                p.uniform_(0.1, 1.2)
            elif "matrix" in name or "fp2bin" in name:
                p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.3)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2)
    return model.eval()


def rel_l2(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


def same_top1(got: torch.Tensor, ref: torch.Tensor) -> bool:
    return bool(got.argmax() == ref.argmax())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, required=True, help="folder holding their models/")
    parser.add_argument("--subnets", type=int, default=6, help="random candidates besides the largest")
    parser.add_argument("--inputs", type=int, default=8, help="images per subnet")
    parser.add_argument("--compile", type=int, default=0, help="compile the first N subnets too")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(args.authors))
    import models  # the authors' package, from --authors

    start = time.time()
    model = randomised_model(models, args.seed)
    random.seed(args.seed)
    cands = [model.biggest_cand] + [model.get_random_cand() for _ in range(args.subnets)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, run_dir = Path(tmp) / "checkpoint.pth.tar", Path(tmp) / "run"
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
        subprocess.run(["hwnas", "import", "nasbnn", str(ckpt), "--out", str(run_dir)], check=True, stdout=sys.stderr)
        supernet = load_run(run_dir).supernet.eval()
        for index, cand in enumerate(cands):
            arch = cand_to_arch(cand)
            supernet.set_active(arch)
            net = None
            if index < args.compile:
                arch_file, lib = Path(tmp) / f"a{index}.json", Path(tmp) / f"a{index}.so"
                arch_file.write_text(json.dumps(cand.tolist()))
                argv = [
                    "hwnas",
                    "compile",
                    str(arch_file),
                    "--weights",
                    str(run_dir),
                    "--no-calibration",
                    "-o",
                    str(lib),
                ]
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
                net = CompiledNet.load(lib)
            for _ in range(args.inputs):
                x = torch.randn(1, 3, 224, 224)
                with torch.no_grad():
                    ref, _ = model(x, cand)
                    got = supernet(x)
                row = {
                    "subnet": index,
                    "torch_rel_l2": rel_l2(got, ref),
                    "torch_top1_equal": same_top1(got, ref),
                }
                if net is not None:
                    compiled = torch.from_numpy(net(x.numpy()))
                    row |= {
                        "compiled_rel_l2": rel_l2(compiled, ref),
                        "compiled_top1_equal": same_top1(compiled, ref),
                    }
                rows.append(row)
            print(
                f"subnet {index}: " + " ".join(f"{r['torch_rel_l2']:.1e}" for r in rows if r["subnet"] == index),
                file=sys.stderr,
            )
    summary = {
        "comparisons": len(rows),
        "torch_over_limit": sum(r["torch_rel_l2"] > LIMIT for r in rows),
        "torch_top1_differs": sum(not r["torch_top1_equal"] for r in rows),
        "compiled_comparisons": sum("compiled_rel_l2" in r for r in rows),
        "compiled_over_limit": sum(r.get("compiled_rel_l2", 0.0) > LIMIT for r in rows),
        "compiled_top1_differs": sum(not r.get("compiled_top1_equal", True) for r in rows),
        "seconds": round(time.time() - start, 1),
    }
    if args.json:
        print(json.dumps({**summary, "limit": LIMIT, "rows": rows}))
        return
    print(
        f"PyTorch subnet vs the authors' model: {summary['torch_over_limit']} of {summary['comparisons']} over "
        f"{LIMIT:g} relative L2, top-1 differs on {summary['torch_top1_differs']}"
    )
    if summary["compiled_comparisons"]:
        print(
            f"compiled library vs the authors' model: {summary['compiled_over_limit']} of "
            f"{summary['compiled_comparisons']} over {LIMIT:g}, top-1 differs on {summary['compiled_top1_differs']}"
        )


if __name__ == "__main__":
    main()
