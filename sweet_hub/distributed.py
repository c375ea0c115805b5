"""Batches of every process under ``torch.distributed`` (``accelerate launch``), for in-batch losses.

A loss that compares each image with the rest of the batch (contrastive negatives, relational
neighbourhoods) must see the whole global batch, or it changes with the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["gather_batches", "global_mean_factors"]


def _world() -> int:
    """The number of processes of torch.distributed (1 outside it)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_mean_factors(counts: Sequence[int]) -> list[float]:
    """For each count, the factor that makes this process's *sum* over ``count`` rows its share
    of the mean over every process's rows: DDP averages the processes' losses, so with
    ``world / total`` each process's loss may have its own number of rows (matched tokens, say)
    and the update still equals the single-process mean over all of them. ``1 / count`` outside
    torch.distributed; 0 when no process has a row. One all-reduce for all the counts."""
    world = _world()
    if world == 1:
        return [1.0 / count if count else 0.0 for count in counts]
    import torch.distributed as dist

    totals = torch.tensor(list(counts), dtype=torch.int64)
    dist.all_reduce(totals)
    return [world / total if total else 0.0 for total in totals.tolist()]


def gather_batches(tensor: Tensor) -> tuple[Tensor, int]:
    """All processes' batches concatenated (rank order), with gradients flowing back to each
    owner, and the offset of this process's rows. A no-op outside torch.distributed.

    SimCLR gathers its negatives this way: with N processes of B images each, every image is
    contrasted against N*B - 1 negatives, not B - 1, so the loss does not change when the same
    global batch is split over more processes. Every process must call it with the same shape.
    """
    if _world() == 1:
        return tensor, 0
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor)), dist.get_rank() * tensor.shape[0]
