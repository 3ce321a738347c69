"""Two gloo processes train in lockstep: same subnets, same parameters, one writer."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hwnas.train.checkpoint import FILENAME, load_checkpoint
from tests.conftest import tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from hwnas.train.run import train_supernet

    try:
        net, _ = train_supernet(tiny(max_steps=3), Path(out) / "run")
        torch.save({"state": net.state_dict(), "active": str(net.active)}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_stay_identical(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["active"] == ranks[1]["active"]  # the last random subnet agrees
    saved = load_checkpoint(tmp_path / "run" / FILENAME)
    assert saved["position"]["global_step"] == 3
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, saved["model"][name]), name  # rank 0 wrote the checkpoint
        if "running_" not in name:  # BN statistics stay per process; parameters must agree
            assert torch.equal(tensor, ranks[1]["state"][name]), name
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".lock",
        "checkpoint.pt",
        "config.json",
        "splits.json",
    ]


def test_spawned_workers_resume_exactly(tmp_path: Path) -> None:
    """`hwnas train`'s own two workers: a run cut after 2 steps and resumed equals 4 steps straight."""
    from hwnas.train.run import train_supernet

    train_supernet(tiny(processes=2, max_steps=4), tmp_path / "whole")
    train_supernet(tiny(processes=2, max_steps=2), tmp_path / "cut")
    resumed, _ = train_supernet(tiny(processes=2, max_steps=4), tmp_path / "cut", resume=True)
    a, b = load_checkpoint(tmp_path / "whole" / FILENAME), load_checkpoint(tmp_path / "cut" / FILENAME)
    assert a["position"]["global_step"] == b["position"]["global_step"] == 4 and a["config"]["processes"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert not dist.is_initialized()  # the workers' process group never reached this process


def test_a_workers_error_comes_back_as_one(tmp_path: Path) -> None:
    from hwnas.errors import HwnasError
    from hwnas.train.run import train_supernet

    with pytest.raises(HwnasError, match="batch_size 63 is not divisible by the 2 processes"):
        train_supernet(tiny(processes=2, batch_size=63, max_steps=1), tmp_path / "run")
