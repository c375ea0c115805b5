"""Self-supervised building blocks shared by every method (SWEET, POA, per-size baselines).

The loss is a multi-crop contrastive loss (InfoNCE with in-batch negatives): each student view
must pick its own image's target among the batch. Targets are the student's own global views
(SimCLR/CLIP-style, ``teacher: none``) or an EMA teacher's (MoCo-v3-style, ``teacher: ema``).
A prototype measured a plain DINO loss plateauing at 64-68% k-NN on this data while an InfoNCE
loss reached 71-72% in the same 20 minutes (CHANGELOG 0.1.0); the same loss is used for every method, so
methods differ only in how sizes share weights.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.func import functional_call

from sweet_hub.knn import pooled_features

__all__ = ["EMATeacher", "FunctionalViT", "ProjectionHead", "contrastive_loss", "cosine_schedule", "gather_batches", "pooled_features"]


class ProjectionHead(nn.Module):
    """MLP projection to the contrastive space (timm ``Mlp`` + a linear output), and optionally a
    linear pixel decoder of the same pooled features (``recon_pixels`` and ``recon_weight`` > 0).

    The decoder is the reconstruction term of the loss (:meth:`pixel_loss`): a contrastive loss
    alone makes pooled features invariant to what the crops change (position, scale), and on
    centred silhouettes that is much of what separates classes; a linear read-back of the view's
    pixels keeps that information in the pooled feature, the way PCA does, while the contrastive
    term shapes the rest.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, recon_pixels: int = 0,
                 recon_weight: float = 0.0) -> None:
        super().__init__()
        self.mlp = Mlp(in_dim, hidden_features=hidden_dim, out_features=hidden_dim, act_layer=nn.GELU)
        self.out = nn.Linear(hidden_dim, out_dim)
        self.recon_weight = recon_weight
        self.decoder = nn.Linear(in_dim, recon_pixels) if recon_pixels and recon_weight > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.out(F.gelu(self.mlp(x))), dim=-1)

    def pixel_loss(self, features: Tensor, views: list[Tensor]) -> Tensor:
        """``recon_weight`` x the mean squared error of the linear read-back of ``views`` (normalized
        pixels, each (B, C, H, W), in the order their pooled ``features`` (len(views) * B, in_dim)
        were computed); 0 without a decoder."""
        if self.decoder is None:
            return features.new_zeros(())
        return self.recon_weight * F.mse_loss(self.decoder(features), torch.cat(views).flatten(1))


def gather_batches(tensor: Tensor) -> tuple[Tensor, int]:
    """All processes' batches concatenated (rank order), with gradients flowing back to each
    owner, and the offset of this process's rows. A no-op outside torch.distributed.

    SimCLR gathers its negatives this way: with N processes of B images each, every image is
    contrasted against N*B - 1 negatives, not B - 1, so the loss does not change when the same
    global batch is split over more processes.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor)), dist.get_rank() * tensor.shape[0]


def contrastive_loss(students: list[Tensor], targets: list[Tensor], temperature: float, same_views: bool) -> Tensor:
    """Mean InfoNCE over every (student view, target view) pair of different views.

    ``students`` and ``targets`` are lists of L2-normalized (B, d) embeddings. When
    ``same_views`` the first len(targets) students are the views the targets were computed
    from, and a view is never its own target. Under DDP the targets of every process are the
    candidates (:func:`gather_batches`); the mean of the per-process losses then equals the
    single-process loss of the whole global batch.
    """
    gathered = [gather_batches(target) for target in targets]
    offset = gathered[0][1] if gathered else 0
    labels = torch.arange(students[0].shape[0], device=students[0].device) + offset
    losses = []
    for i, student in enumerate(students):
        for j, (target, _) in enumerate(gathered):
            if same_views and i == j:
                continue
            losses.append(F.cross_entropy(student @ target.T / temperature, labels))
    return torch.stack(losses).mean()


class EMATeacher:
    """Exponential moving average of a module's parameters, with a cosine momentum schedule."""

    def __init__(self, module: nn.Module, momentum: float = 0.996, final_momentum: float = 1.0) -> None:
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.momentum, self.final_momentum = momentum, final_momentum

    @torch.no_grad()
    def update(self, module: nn.Module, progress: float) -> None:
        m = self.final_momentum - (self.final_momentum - self.momentum) * (math.cos(math.pi * min(progress, 1.0)) + 1) / 2
        for ema, p in zip(self.module.parameters(), module.parameters()):
            ema.lerp_(p.detach(), 1.0 - m)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


class FunctionalViT:
    """Runs a timm ``VisionTransformer`` of any (depth, width) with weights given per call.

    One parameter-free skeleton per size (on the meta device) and ``torch.func.functional_call``:
    pre-training materializes the weights inside the step, so gradients flow into the template.
    ``dynamic_img_size`` lets local crops (smaller images) use the resampled position embedding.
    """

    def __init__(self, vit_kwargs: dict[str, Any]) -> None:
        # num_classes=0: the skeleton's forward returns pooled pre-logit features
        self.vit_kwargs = {**vit_kwargs, "dynamic_img_size": True, "num_classes": 0}
        self._skeletons: dict[tuple[int, int], VisionTransformer] = {}

    def skeleton(self, depth: int, width: int, num_heads: int) -> VisionTransformer:
        key = (depth, width)
        if key not in self._skeletons:
            with torch.device("meta"):
                self._skeletons[key] = VisionTransformer(**{**self.vit_kwargs, "depth": depth, "embed_dim": width, "num_heads": num_heads})
        return self._skeletons[key]

    def features(self, state: dict[str, Tensor], images: Tensor, num_heads: int) -> Tensor:
        """Pooled pre-logit features (B, width), as timm's ``forward_head(pre_logits=True)``."""
        width = state["pos_embed"].shape[-1]
        depth = sum(1 for k in state if k.endswith(".attn.qkv.weight"))
        model = self.skeleton(depth, width, num_heads)
        weights = {k: v for k, v in state.items() if not k.startswith("head.")}
        return functional_call(model, weights, (images,), strict=True, tie_weights=False)


def cosine_schedule(step: int, total: int, warmup: int, base: float, final: float, progress: float | None = None) -> float:
    """Linear warmup then cosine decay from ``base`` to ``final``.

    ``progress`` (0..1) replaces the step-based position in the decay when training is bounded
    by time rather than steps (``time_budget_minutes``): the schedule then follows elapsed time.
    """
    if step < warmup:
        return base * (step + 1) / warmup
    if progress is None:
        progress = (step - warmup) / max(1, total - warmup)
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
