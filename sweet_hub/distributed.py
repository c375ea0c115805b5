"""Batches of every process under ``torch.distributed`` (``accelerate launch``), for in-batch losses.

A loss that compares each image with the rest of the batch (contrastive negatives, relational
neighbourhoods) must see the whole global batch, or it changes with the number of processes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gather_batches"]


def gather_batches(tensor: Tensor) -> tuple[Tensor, int]:
    """All processes' batches concatenated (rank order), with gradients flowing back to each
    owner, and the offset of this process's rows. A no-op outside torch.distributed.

    SimCLR gathers its negatives this way: with N processes of B images each, every image is
    contrasted against N*B - 1 negatives, not B - 1, so the loss does not change when the same
    global batch is split over more processes. Every process must call it with the same shape.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor)), dist.get_rank() * tensor.shape[0]
