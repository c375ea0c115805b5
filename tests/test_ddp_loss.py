"""Under DDP the contrastive negatives come from every process (SimCLR's gather).

Two CPU processes (gloo) each hold half of a global batch. With the gather, the mean of their
losses and their averaged gradients (what DDP applies) equal the single-process loss and
gradient of the whole batch; without it each process would only see its own half as negatives.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.selfsup import contrastive_loss, gather_batches

BATCH, DIM, VIEWS = 8, 16, 3


def _problem() -> tuple[torch.nn.Linear, list[torch.Tensor]]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(DIM, DIM)
    views = [torch.randn(BATCH, DIM) for _ in range(VIEWS)]
    return layer, views


def _loss(layer: torch.nn.Linear, views: list[torch.Tensor]) -> torch.Tensor:
    students = [F.normalize(layer(v), dim=-1) for v in views]
    return contrastive_loss(students, students[:2], temperature=0.2, same_views=True)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        layer, views = _problem()
        half = BATCH // world
        loss = _loss(layer, [v[rank * half:(rank + 1) * half] for v in views])
        loss.backward()
        grad = layer.weight.grad.clone()
        dist.all_reduce(grad)  # DDP averages gradients over processes
        total = loss.detach().clone()
        dist.all_reduce(total)
        gathered, offset = gather_batches(torch.full((half, 1), float(rank)))
        if rank == 0:
            torch.save({"loss": total / world, "grad": grad / world, "gathered": gathered, "offset": offset}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_processes_contrast_against_the_whole_global_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    result = torch.load(out)

    layer, views = _problem()
    single = _loss(layer, views)
    single.backward()
    # the same loss and gradient as one process on the whole batch
    assert torch.allclose(result["loss"], single.detach(), atol=1e-5), (result["loss"], single)
    assert torch.allclose(result["grad"], layer.weight.grad, atol=1e-5)
    # rank order, and rank 0's rows come first
    assert result["gathered"].flatten().tolist() == [0.0] * 4 + [1.0] * 4 and result["offset"] == 0


def test_without_a_process_group_gather_is_the_identity():
    x = torch.randn(4, 3)
    gathered, offset = gather_batches(x)
    assert gathered is x and offset == 0
