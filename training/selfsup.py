"""Self-supervised building blocks shared by every method (SWEET, POA, per-size baselines).

The loss is a multi-crop contrastive loss (InfoNCE with in-batch negatives): each student view
must pick its own image's target among the batch. Targets are the student's own global views
(SimCLR/CLIP-style, ``teacher: none``) or an EMA teacher's (MoCo-v3-style, ``teacher: ema``).
A prototype measured a plain DINO loss plateauing at 64-68% k-NN on this data while an InfoNCE
loss reached 71-72% in the same 20 minutes (CHANGELOG 0.1.0); the same loss is used for every method, so
methods differ only in how sizes share weights. ``objective: barlow`` replaces InfoNCE by Barlow Twins
(:func:`barlow_loss`), a loss without negatives whose target is a decorrelated, batch-standardized
projection.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.func import functional_call

from sweet_hub.distributed import gather_batches, global_mean_factors  # training scripts import gather_batches from here
from training.config import OBJECTIVES

__all__ = ["EMATeacher", "FunctionalViT", "ProjectionHead", "TokenMatch", "apply_patch_masks", "barlow_loss", "contrastive_loss",
           "cosine_schedule", "gather_batches", "patchify", "pooled_and_tokens", "random_patch_masks", "set_lr", "token_matches"]


class ProjectionHead(nn.Module):
    """MLP projection to the contrastive space (timm ``Mlp`` + a linear output), and the optional
    terms of the loss: a linear pixel decoder of the pooled features (:meth:`pixel_loss`,
    ``recon_weight`` > 0), a linear decoder of each masked patch token (:meth:`masked_patch_loss`,
    ``mim_weight`` > 0) and a dense contrastive loss between the tokens of two global views that
    cover the same part of the image (:meth:`dense_loss`, ``dense_weight`` > 0).

    Why reconstruction: a contrastive loss alone makes pooled features invariant to what the crops
    change (position, scale), and on centred silhouettes that is much of what separates classes.
    A linear read-back of the view's pixels keeps that information in the pooled feature, the way
    PCA does. Masked-patch prediction (SimMIM-style, from the final tokens of a view whose masked
    patches were set to the mean) asks each token to infer what it cannot see from its context, an
    objective on the tokens rather than on their mean. By default the masked views are also the
    ones the contrastive loss sees (no extra forward); ``mim_separate`` gives them a pass of their own.

    Why a dense term: flattened, the final tokens score ~3 k-NN points above their mean, so they
    hold class information the pooled loss does not ask for. The dense term (DenseCL / VICRegL-style,
    matches from the crop geometry) asks each token to pick, among every token of the other view's
    batch, the one at the same image position. Measured at 36 min on the bundled recipe it lowers the
    pooled k-NN (recipe study rounds 32-33), so it is off by default, as are the other two.
    """

    def __init__(self, in_dim: int, recon_pixels: int = 0, patch_pixels: int = 0, *, hidden_dim: int = 512, out_dim: int = 128,
                 norm: str = "none", objective: str = "infonce", barlow_lambda: float = 0.005, recon_weight: float = 0.0,
                 mim_weight: float = 0.0, mim_separate: bool = False, dense_weight: float = 0.0) -> None:
        # in_dim and the pixel counts come from the method's network; the keywords are the head's settings, which every
        # method forwards unchanged (``head_options`` in training/pretrain.py builds them from the config)
        super().__init__()
        # norm="batch": BatchNorm1d on the hidden layer, as SimCLR's projector has (per process under DDP)
        self.mlp = Mlp(in_dim, hidden_features=hidden_dim, out_features=hidden_dim, act_layer=nn.GELU,
                       norm_layer=nn.BatchNorm1d if norm == "batch" else None)
        self.out = nn.Linear(hidden_dim, out_dim)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}.")
        #: the loss between views' projections: InfoNCE on L2-normalized ones, or Barlow Twins on raw ones
        self.objective, self.barlow_lambda = objective, barlow_lambda
        self.recon_weight, self.mim_weight = recon_weight, mim_weight
        #: the masked views get a forward pass of their own and the contrastive loss sees the unmasked ones
        self.mim_separate = mim_separate
        self.decoder = nn.Linear(in_dim, recon_pixels) if recon_pixels and recon_weight > 0 else None
        self.token_decoder = nn.Linear(in_dim, patch_pixels) if patch_pixels and mim_weight > 0 else None
        self.dense_weight = dense_weight
        #: the dense term's own projection of each token (as DenseCL has a dense head beside the global one); one hidden layer
        #: where the global head has two: it runs on every token, 16x the rows
        self.dense = Mlp(in_dim, hidden_features=hidden_dim, out_features=out_dim, act_layer=nn.GELU) if dense_weight > 0 else None

    @property
    def reads_tokens(self) -> bool:
        """Whether a loss term reads patch tokens (methods skip mapping them otherwise)."""
        return self.token_decoder is not None or self.dense is not None

    def forward(self, x: Tensor) -> Tensor:
        """The projection: L2-normalized for InfoNCE; raw for Barlow Twins, which standardizes over the batch."""
        z = self.out(F.gelu(self.mlp(x)))
        return F.normalize(z, dim=-1) if self.objective == "infonce" else z

    def view_loss(self, students: list[Tensor], targets: list[Tensor], temperature: float, same_views: bool = True) -> Tensor:
        """The objective between the student's projected views and the targets' (see :func:`contrastive_loss`,
        :func:`barlow_loss`; ``temperature`` is InfoNCE's)."""
        if self.objective == "barlow":
            return barlow_loss(students, targets, self.barlow_lambda, same_views)
        return contrastive_loss(students, targets, temperature, same_views)

    def pixel_loss(self, features: Tensor, views: list[Tensor]) -> Tensor:
        """``recon_weight`` x the mean squared error of the linear read-back of ``views`` (normalized
        pixels, each (B, C, H, W), in the order their pooled ``features`` (len(views) * B, in_dim)
        were computed); 0 without a decoder."""
        if self.decoder is None:
            return features.new_zeros(())
        return self.recon_weight * F.mse_loss(self.decoder(features), torch.cat(views).flatten(1))

    def masked_patch_loss(self, tokens: Tensor | None, views: list[Tensor], masks: Tensor | None, patch_size: int) -> Tensor:
        """``mim_weight`` x the mean squared error of the decoded masked patches: ``tokens``
        (len(views) * B, N, in_dim) are the patch tokens of the masked views, ``views`` the
        unmasked ones, ``masks`` (len(views) * B, N) which patches were hidden; 0 without a
        token decoder or masks (``tokens`` may then be None)."""
        if self.token_decoder is None or masks is None:
            return views[0].new_zeros(())
        predicted = self.token_decoder(tokens[masks])
        return self.mim_weight * F.mse_loss(predicted, patchify(torch.cat(views), patch_size)[masks])

    def dense_loss(self, tokens: Tensor | None, matches: list[TokenMatch] | None, temperature: float) -> Tensor:
        """``dense_weight`` x the mean InfoNCE of the matched tokens: each ``matches`` entry's
        student tokens (of view ``a``) must pick their match among every token of view ``b`` in
        the batch (of all processes under DDP). ``tokens`` are the global views' patch tokens,
        (n_global * B, N, in_dim) in view order; 0 without a dense head or matches. Each pair of
        views is a mean over its matches in the global batch (:func:`global_mean_factors`), so the
        update does not depend on how the matches fall between processes."""
        if self.dense is None or not matches:
            return self.out.weight.new_zeros(())
        n_views = 1 + max(max(m.a, m.b) for m in matches)
        views = [v.flatten(0, 1) for v in F.normalize(self.dense(tokens), dim=-1).split(tokens.shape[0] // n_views)]
        gathered = [gather_batches(v) for v in views]  # once per view: every other view's tokens pick among them
        losses = []
        for match, factor in zip(matches, global_mean_factors([len(m.student) for m in matches]), strict=True):
            target, offset = gathered[match.b]
            logits = views[match.a][match.student] @ target.T / temperature
            losses.append(F.cross_entropy(logits, match.target + offset, reduction="sum") * factor)
        return self.dense_weight * torch.stack(losses).mean()


@dataclass(frozen=True)
class TokenMatch:
    """Tokens of global view ``a`` and the tokens of view ``b`` at the same image position: indices
    into each view's tokens flattened over (batch, position), ``student[i]`` matching ``target[i]``."""

    a: int
    b: int
    student: Tensor
    target: Tensor


def token_matches(boxes: list[Tensor], grid: int) -> list[TokenMatch]:
    """Geometric token correspondences between every ordered pair of global views.

    ``boxes`` holds one (B, 5) tensor per view: the crop's top, left, height, width in source
    pixels and whether it was flipped (1) or not (0), as :meth:`MultiCropAugment.crops_with_boxes`
    returns them; ``grid`` is the token grid side (img_size // patch_size). A token of view ``a``
    maps its centre to the source image and matches the token of view ``b`` whose cell holds that
    point; tokens whose centre falls outside view ``b`` have no match.
    """
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    rows, cols = centres.repeat_interleave(grid), centres.repeat(grid)  # row-major, as timm orders patch tokens
    num = grid * grid
    # each view's top, left, height, width and flip as (B, 1) columns, broadcast against the (N,) token positions
    fields = [[f[:, None] for f in box.float().unbind(1)] for box in boxes]
    out = []
    for a, (top, left, height, width, flip) in enumerate(fields):
        y = top + rows * height  # (B, N) source coordinates of view a's token centres
        x = left + torch.where(flip > 0, 1 - cols, cols) * width
        for b, (top_b, left_b, height_b, width_b, flip_b) in enumerate(fields):
            if a == b:
                continue
            row_b = (y - top_b) / height_b
            col_b = (x - left_b) / width_b
            col_b = torch.where(flip_b > 0, 1 - col_b, col_b)
            inside = (row_b >= 0) & (row_b < 1) & (col_b >= 0) & (col_b < 1)
            cell = (row_b.clamp(0, 1 - 1e-6) * grid).long() * grid + (col_b.clamp(0, 1 - 1e-6) * grid).long()
            image, position = inside.nonzero(as_tuple=True)
            out.append(TokenMatch(a, b, image * num + position, image * num + cell[image, position]))
    return out


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C * p * p), patches in the row-major order of timm's patch tokens."""
    b, c = images.shape[:2]
    patches = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # B, C, gh, gw, p, p
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * patch_size * patch_size)


def random_patch_masks(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> Tensor:
    """(batch, num_patches) bool: exactly ``round(ratio * num_patches)`` patches per row are True
    (hidden), drawn uniformly with ``generator`` (so a resumed step draws the same masks)."""
    hidden = round(ratio * num_patches)
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    return order < hidden


def apply_patch_masks(images: Tensor, masks: Tensor, patch_size: int) -> Tensor:
    """``images`` (B, C, H, W) with the patches ``masks`` (B, N) marks set to 0 (the mean after
    normalization)."""
    b, _, h, w = images.shape
    grid = masks.view(b, 1, h // patch_size, w // patch_size)
    pixels = grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return images.masked_fill(pixels, 0.0)


def pooled_and_tokens(model: VisionTransformer, images: Tensor) -> tuple[Tensor, Tensor]:
    """Pooled pre-logit features (B, D) and the final patch tokens (B, N, D) of a timm ViT, from one forward."""
    tokens = model.forward_features(images)
    return model.forward_head(tokens, pre_logits=True), tokens[:, model.num_prefix_tokens:]


class _PooledAndTokens(VisionTransformer):
    """A timm ViT whose forward returns :func:`pooled_and_tokens` (the skeleton ``functional_call`` runs)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return pooled_and_tokens(self, x)


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


def barlow_loss(students: list[Tensor], targets: list[Tensor], lambd: float, same_views: bool) -> Tensor:
    """Mean Barlow Twins loss over every (student view, target view) pair of different views.

    Each view's (B, d) projections are standardized per dimension over the batch; the loss pulls the
    (d, d) cross-correlation of a pair to the identity: sum_i (1 - C_ii)^2 + ``lambd`` sum_{i!=j} C_ij^2,
    divided by d so that its size (and so gradient clipping and the other terms' weights) does not
    change with the projection width. Why: no negatives, so the loss does not ask two images of the
    same class to be told apart, and the off-diagonal term spreads the information over every
    dimension. ``same_views`` as in :func:`contrastive_loss`. Under DDP the statistics are the
    global batch's (:func:`gather_batches`): every process computes the same loss, and the gather's
    backward sends each process the gradient of its own rows, so the averaged update equals one
    process's on the whole batch.
    """
    def standardized(z: Tensor) -> Tensor:
        z = gather_batches(z)[0]
        return (z - z.mean(0)) / (z.std(0, unbiased=False) + 1e-5)

    students_n = [standardized(s) for s in students]
    targets_n = students_n[: len(targets)] if same_views and all(t is s for t, s in zip(targets, students)) else [
        standardized(t) for t in targets]
    losses = []
    for i, student in enumerate(students_n):
        for j, target in enumerate(targets_n):
            if same_views and i == j:
                continue
            c = student.T @ target / student.shape[0]
            diagonal = torch.diagonal(c)
            off = c.pow(2).sum() - diagonal.pow(2).sum()
            losses.append(((1 - diagonal).pow(2).sum() + lambd * off) / c.shape[0])
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
        # num_classes=0: no classifier; the forward returns pooled pre-logit features and patch tokens
        self.vit_kwargs = {**vit_kwargs, "dynamic_img_size": True, "num_classes": 0}
        self._skeletons: dict[tuple[int, int], VisionTransformer] = {}

    def skeleton(self, depth: int, width: int, num_heads: int) -> VisionTransformer:
        key = (depth, width)
        if key not in self._skeletons:
            with torch.device("meta"):
                self._skeletons[key] = _PooledAndTokens(**{**self.vit_kwargs, "depth": depth, "embed_dim": width, "num_heads": num_heads})
        return self._skeletons[key]

    def features_and_tokens(self, state: dict[str, Tensor], images: Tensor, num_heads: int) -> tuple[Tensor, Tensor]:
        """Pooled pre-logit features (B, width), as timm's ``forward_head(pre_logits=True)``, and
        the final patch tokens (B, N, width)."""
        width = state["pos_embed"].shape[-1]
        depth = sum(1 for k in state if k.endswith(".attn.qkv.weight"))
        model = self.skeleton(depth, width, num_heads)
        weights = {k: v for k, v in state.items() if not k.startswith("head.")}
        return functional_call(model, weights, (images,), strict=True, tie_weights=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate to ``lr`` times its ``lr_scale`` (timm's key; 1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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
