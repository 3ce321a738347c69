"""Two gloo processes train in lockstep: same subnets, same parameters, one writer; whether they
split the batch (DDP) or the step's subnets (hwnas.train.subnet_parallel)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hwnas.errors import HwnasError
from hwnas.train.checkpoint import FILENAME, load_checkpoint
from tests.conftest import tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str, parallel: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from hwnas.train.run import train_supernet

    try:
        net, _ = train_supernet(tiny(max_steps=3, parallel=parallel), Path(out) / "run")
        torch.save({"state": net.state_dict(), "active": str(net.active)}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("parallel", ["data", "subnets"])
def test_two_gloo_processes_stay_identical(tmp_path: Path, parallel: str) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), parallel), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    if parallel == "data":
        assert ranks[0]["active"] == ranks[1]["active"]  # the last random subnet agrees
    else:
        assert ranks[0]["active"] != ranks[1]["active"]  # each ran its own share of the subnets
    saved = load_checkpoint(tmp_path / "run" / FILENAME)
    assert saved["position"]["global_step"] == 3
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, saved["model"][name]), name  # rank 0 wrote the checkpoint
        if "running_" not in name and "num_batches" not in name:  # BN statistics stay per process
            assert torch.equal(tensor, ranks[1]["state"][name]), name
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".lock",
        "checkpoint.pt",
        "config.json",
        "splits.json",
    ]


@pytest.mark.parametrize("parallel", ["data", "subnets"])
def test_spawned_workers_resume_exactly(tmp_path: Path, parallel: str) -> None:
    """`hwnas train`'s own two workers: a run cut after 2 steps and resumed equals 4 steps straight."""
    from hwnas.train.run import train_supernet

    train_supernet(tiny(processes=2, max_steps=4, parallel=parallel), tmp_path / "whole")
    train_supernet(tiny(processes=2, max_steps=2, parallel=parallel), tmp_path / "cut")
    resumed, _ = train_supernet(tiny(processes=2, max_steps=4, parallel=parallel), tmp_path / "cut", resume=True)
    a, b = load_checkpoint(tmp_path / "whole" / FILENAME), load_checkpoint(tmp_path / "cut" / FILENAME)
    assert a["position"]["global_step"] == b["position"]["global_step"] == 4 and a["config"]["processes"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert not dist.is_initialized()  # the workers' process group never reached this process


def test_a_workers_error_comes_back_as_one(tmp_path: Path) -> None:
    from hwnas.train.run import train_supernet

    with pytest.raises(HwnasError, match="batch_size 63 is not divisible by the 2 processes"):
        train_supernet(tiny(processes=2, batch_size=63, max_steps=1, parallel="data"), tmp_path / "run")


def test_two_processes_splitting_the_subnets_take_the_one_process_step(tmp_path: Path) -> None:
    """Same batch, same subnets, gradients summed: one step equals one process's up to float
    summation order (later steps drift apart as any two float orders do in a binary network).

    Adam's first step divides each gradient by its own magnitude, so a weight whose gradient
    cancels to almost nothing (the subnets' contributions of opposite sign) moves by a share of lr
    that the low bits of the sum decide: one element in 112,800 did, after residual branches started
    at 0.2. Such elements may differ by up to two steps (2 lr), one in 10,000 at most; a wrong
    split of the subnets or of the gradients moves far more."""
    from hwnas.train.run import train_supernet

    config = tiny(processes=1, max_steps=1, num_random=2)
    train_supernet(config, tmp_path / "one")
    train_supernet(tiny(processes=2, max_steps=1, num_random=2, parallel="subnets"), tmp_path / "two")
    one, two = (load_checkpoint(tmp_path / name / FILENAME)["model"] for name in ("one", "two"))
    before = _initial(tiny(num_random=2))
    moved = compared = apart = 0
    for name, tensor in one.items():
        if "running_" in name or not tensor.is_floating_point():
            continue
        close = torch.isclose(two[name], tensor, rtol=1e-5, atol=1e-7 * float(tensor.abs().max()) + 1e-9)
        compared, apart = compared + close.numel(), apart + int((~close).sum())
        assert float((two[name] - tensor).abs().max()) <= 2.02 * config.lr, name
        moved += not torch.equal(tensor, before[name])
    assert apart <= compared // 10_000, (apart, compared)
    assert moved > 100  # the step changed the weights (the comparison is not of two untrained nets)


def _initial(config) -> dict:
    from hwnas.train.supernet import build_model

    torch.manual_seed(config.seed)
    return build_model(config, 10).state_dict()


def _sum_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    from hwnas.train.subnet_parallel import sum_gradients

    dist.init_process_group("gloo")
    try:
        module = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.zeros(3)) for k in ("both", "one", "none")})
        module["both"].grad = torch.full((3,), 1.0 + rank)
        if rank == 1:
            module["one"].grad = torch.full((3,), 5.0)
        total = sum_gradients(module, torch.tensor([float(rank), 2.0]))
        torch.save({"grads": {k: p.grad for k, p in module.items()}, "total": total}, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradients_are_summed_and_untouched_parameters_keep_none(tmp_path: Path) -> None:
    mp.spawn(_sum_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"r{rank}.pt", weights_only=True)
        assert got["grads"]["both"].tolist() == [3.0] * 3
        assert got["grads"]["one"].tolist() == [5.0] * 3  # touched by one process: its gradient
        assert got["grads"]["none"] is None  # touched by none: the optimizer must skip it
        assert got["total"].tolist() == [1.0, 4.0]


def test_the_teacher_stays_on_rank_0_and_students_go_to_the_least_loaded() -> None:
    from hwnas.train.subnet_parallel import assign

    assert assign([10, 10, 2, 5], 2) == [0, 1, 1, 0]  # 10 | 10, then the 5 to rank 0 (a tie), the 2 to rank 1
    assert assign([10, 10, 2, 5, 5, 5], 3) == [0, 1, 1, 2, 2, 0]
    assert assign([1, 1], 1) == [0, 0]


def test_which_processes_split_subnets() -> None:
    from hwnas.train.subnet_parallel import tasks_per_step, use_subnets

    tasks = tasks_per_step(num_random=1, bwba_teacher=False)
    assert tasks == 4 and tasks_per_step(1, True) == 3
    assert use_subnets("auto", 2, tasks, cuda=False) and use_subnets("subnets", 4, tasks, cuda=True)
    assert not use_subnets("auto", 1, tasks, False) and not use_subnets("auto", 2, tasks, cuda=True)
    assert not use_subnets("auto", 5, tasks, False) and not use_subnets("data", 2, tasks, False)
    with pytest.raises(HwnasError, match="at most 4 processes"):
        use_subnets("subnets", 5, tasks, False)
