"""Data for pre-training: the loaders of :mod:`sweet_hub.data` (re-exported here) and the
per-step batches. The batch of each step is a pure function of (seed, step, rank)
(:class:`StepBatches`), so ``--resume`` replays exactly the same data and augmentations.
"""

from __future__ import annotations

import torch

from sweet_hub.data import (
    FMNIST_DIR,
    FMNIST_LABELS,
    DataError,
    ImageTensors,
    MultiCropAugment,
    fashion_mnist,
    load_image_dataset,
    load_image_tensors,
    normalize,
    sklearn_digits,
)

__all__ = [
    "FMNIST_DIR",
    "FMNIST_LABELS",
    "DataError",
    "ImageTensors",
    "MultiCropAugment",
    "StepBatches",
    "fashion_mnist",
    "load_image_dataset",
    "load_image_tensors",
    "normalize",
    "sklearn_digits",
]


class StepBatches:
    """Indices of the batch of a step: epoch permutations seeded by (seed, epoch), the global
    batch split evenly across processes. A pure function of the step, hence exact resume."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch_size={global_batch} must be divisible by the number of processes ({world_size}).")
        if global_batch > num_samples:
            raise ValueError(f"batch_size={global_batch} is larger than the dataset ({num_samples} images).")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = num_samples // global_batch
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, offset = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            self._epoch = epoch
        batch = self._perm[offset * self.global_batch: (offset + 1) * self.global_batch]
        per_rank = self.global_batch // self.world_size
        return batch[self.rank * per_rank: (self.rank + 1) * per_rank]
