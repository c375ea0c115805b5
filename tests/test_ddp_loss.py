"""Under DDP the in-batch losses see every process's images (SimCLR's gather): the contrastive
negatives of pre-training (pooled and dense) and the neighbourhoods of the relational scaler-distillation term.

Two CPU processes (gloo) each hold half of a global batch. With the gather, the mean of their
losses and their averaged gradients (what DDP applies) equal the single-process loss and
gradient of the whole batch; without it each process would only see its own half.
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

from sweet_hub.distill import relation_loss
from training.selfsup import barlow_loss, contrastive_loss, gather_batches

BATCH, DIM, VIEWS = 8, 16, 3


def _problem() -> tuple[torch.nn.Linear, list[torch.Tensor]]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(DIM, DIM)
    views = [torch.randn(BATCH, DIM) for _ in range(VIEWS)]
    return layer, views


def _contrastive(layer: torch.nn.Linear, views: list[torch.Tensor], rows: slice) -> torch.Tensor:
    students = [F.normalize(layer(v[rows]), dim=-1) for v in views]
    return contrastive_loss(students, students[:2], temperature=0.2, same_views=True)  # always gathers under DDP


def _barlow(layer: torch.nn.Linear, views: list[torch.Tensor], rows: slice) -> torch.Tensor:
    """Barlow Twins: the batch statistics are the global batch's, so each process computes the whole loss."""
    students = [layer(v[rows]) for v in views]
    return barlow_loss(students, students[:2], lambd=0.1, same_views=True)  # always gathers under DDP


def _relation(layer: torch.nn.Linear, views: list[torch.Tensor], rows: slice) -> torch.Tensor:
    """The student (width DIM) ranks its batch like a fixed teacher of another width (views[1] widened)."""
    teacher = torch.cat([views[1][rows], views[2][rows]], dim=1)
    return relation_loss(layer(views[0][rows]), teacher, gather=True)  # a no-op outside torch.distributed


def _dense(layer: torch.nn.Linear, views: list[torch.Tensor], rows: slice, second_box: list[int] | None = None) -> torch.Tensor:
    """Each image's two views as 2x2 grids of 4-dim tokens, the first cut from the whole image, the second flipped and
    cut from ``second_box`` for the images of the batch's second half (the whole image by default, so that every token
    has a match and both processes score as many); the candidates are every process's tokens."""
    from training.selfsup import ProjectionHead, token_matches

    torch.manual_seed(1)
    head = ProjectionHead(4, hidden_dim=8, out_dim=4, dense_weight=1.0)
    tokens = torch.cat([layer(v[rows]).view(-1, 4, 4) for v in views[:2]])
    second = [[0, 0, 28, 28, 1]] * (BATCH // 2) + [second_box or [0, 0, 28, 28, 1]] * (BATCH // 2)
    boxes = [torch.tensor([[0, 0, 28, 28, 0]] * BATCH)[rows], torch.tensor(second)[rows]]
    return head.dense_loss(tokens, token_matches(boxes, 2), temperature=0.2)  # always gathers under DDP


def _dense_unequal(layer: torch.nn.Linear, views: list[torch.Tensor], rows: slice) -> torch.Tensor:
    """The dense term when the processes hold different numbers of matches: the second half's second views are the
    top-left quarter of the image, where one token of the first view falls."""
    return _dense(layer, views, rows, second_box=[0, 0, 14, 14, 1])


LOSSES = {"barlow": _barlow, "contrastive": _contrastive, "dense": _dense, "dense_unequal": _dense_unequal, "relation": _relation}


def _worker(rank: int, world: int, port: int, out: str, name: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        layer, views = _problem()
        half = BATCH // world
        loss = LOSSES[name](layer, views, rows=slice(rank * half, (rank + 1) * half))
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
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_two_processes_see_the_whole_global_batch(tmp_path, name):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, _free_port(), out, name), nprocs=2, join=True)
    result = torch.load(out)

    layer, views = _problem()
    single = LOSSES[name](layer, views, rows=slice(None))
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


def test_without_the_gather_each_process_would_rank_its_own_half_only():
    """The check above is not vacuous: the relational term of half a batch differs from the whole batch's."""
    layer, views = _problem()
    whole = _relation(layer, views, rows=slice(None))
    halves = torch.stack([relation_loss(layer(views[0][i * 4:(i + 1) * 4]), torch.cat([views[1], views[2]], dim=1)[i * 4:(i + 1) * 4],
                                        gather=False) for i in range(2)]).mean()
    assert abs(whole.item() - halves.item()) > 1e-3
