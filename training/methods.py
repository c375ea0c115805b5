"""What is being pre-trained: one module per method, all trained by the same loop (pretrain.py).

Every method follows :class:`PretrainMethod`: it samples the size a step trains, maps a batch of
views to the loss every method shares (``forward``), gives teacher targets (``embed_targets``,
used on its EMA copy), builds the model of a size for evaluation (``model_for``) and writes its
artefact (``save_artefact``).

- ``SweetMethod``: the SWEET template. Each step samples an anchor size, optionally replaces its
  width (and depth) by a random one whose scalers are resampled from the anchor's (width-wise
  stochastic scaling), materializes the weights inside the step and runs them as a timm ViT. With
  ``sandwich`` the largest anchor is trained in every step as well, in the same update (with
  ``sandwich_all``, every anchor is).
- ``SingleMethod``: one ordinary timm ViT of a fixed size (per-size pre-training baseline, and the
  plain-timm reference of the overhead benchmark).
- ``POAMethod`` (poa.py): the elastic-network baseline.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import timm
import torch
from torch import Tensor, nn

from sweet_hub import SweetTemplate, derive_scalers, export_timm, materialize_state_dict
from sweet_hub.config import format_size, vit_args
from training.selfsup import FunctionalViT, ProjectionHead, TokenMatch, apply_patch_masks, pooled_and_tokens

__all__ = ["PretrainMethod", "SingleMethod", "SizeChoice", "SweetMethod", "embed_views", "mask_views", "student_loss", "view_pixels"]


@dataclass(frozen=True)
class SizeChoice:
    """The size trained at one step: an anchor, possibly with a resampled width and depth."""

    anchor: tuple[int, int]
    depth: int
    width: int
    #: further sizes trained in the same update (``sandwich_all``: the other smaller anchors)
    also: tuple[SizeChoice, ...] = ()

    @property
    def stochastic(self) -> bool:
        return (self.depth, self.width) != self.anchor

    @property
    def label(self) -> str:
        """``DxW``, joined by ``+`` with the sizes in ``also`` (for the log and the progress bar)."""
        return "+".join(format_size(s.depth, s.width) for s in (self, *self.also))


@runtime_checkable
class PretrainMethod(Protocol):
    """What pretrain.py needs of a method (SWEET, POA, per-size); each is an ``nn.Module``."""

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """The sizes the method stores (evaluated after training)."""

    def sample_size(self, rng: random.Random) -> SizeChoice:
        """The size one step trains (a pure function of ``rng``, so resumes replay it)."""

    def __call__(self, global_views: list[Tensor], local_views: list[Tensor], size: SizeChoice,
                 targets: list[Tensor] | None = None, temperature: float = 0.2, masks: Tensor | None = None,
                 matches: list[TokenMatch] | None = None) -> Tensor:
        """The loss of the student at ``size`` (targets: an EMA teacher's, or None; masks: which
        patches of the global views the student does not see, (n_global * B, N), or None;
        matches: the global views' token correspondences the dense term reads, or None)."""

    def embed_targets(self, global_views: list[Tensor]) -> list[Tensor]:
        """Teacher targets of the global views (called on the EMA copy)."""

    def model_for(self, depth: int, width: int) -> nn.Module | None:
        """A timm model of (depth, width), or None if the method cannot produce that size."""

    def describe_size(self, depth: int, width: int) -> str:
        """Where the weights of (depth, width) come from, for reports."""

    def save_artefact(self, output_dir: Path, card_info: dict[str, Any]) -> Path:
        """Write what the method produces (a template folder, a timm repo folder)."""


class SweetMethod(nn.Module):
    """Template + projection head. The head reads features in the template's r-space
    (``features @ U / sqrt(width)``), so one head serves every width, stochastic ones included."""

    def __init__(self, template: SweetTemplate, width_scaling_p: float = 0.5, depth_scaling_p: float = 0.0,
                 width_scaling_max: int | None = None, anchor_weights: list[float] | None = None, sandwich: bool = False,
                 inplace_distill: bool = False, sandwich_all: bool = False, anchor_loss_weights: list[float] | None = None,
                 dense_largest_only: bool = False, head: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.template = template
        cfg = template.config
        self.patch_size = cfg.patch_size
        self.head = ProjectionHead(cfg.ranks[1], view_pixels(cfg.in_chans, cfg.img_size), cfg.in_chans * cfg.patch_size ** 2,
                                   **(head or {}))
        self.width_scaling_p, self.depth_scaling_p = width_scaling_p, depth_scaling_p
        widths = [w for _, w in cfg.anchors]
        #: widths width-wise stochastic scaling draws from: multiples of head_dim from the smallest
        #: anchor width up to width_scaling_max (default: the largest anchor width)
        self.stochastic_widths = list(range(min(widths), (width_scaling_max or max(widths)) + 1, cfg.head_dim))
        self.anchor_weights = anchor_weights
        #: sandwich: each step also trains the largest anchor; inplace_distill: its embeddings are the smaller size's targets
        self.sandwich, self.inplace_distill = sandwich, inplace_distill
        #: sandwich_all: every smaller anchor joins the largest in each update, instead of one sampled
        self.sandwich_all = sandwich_all
        #: with sandwich: each anchor's weight in the summed loss (a scaled size counts as its anchor); empty: 1 each
        self.anchor_loss_weights = dict(zip((tuple(a) for a in cfg.anchors), map(float, anchor_loss_weights or [])))
        #: with sandwich: only the largest anchor's loss has the dense term (its cost is per size, whatever the width)
        self.dense_largest_only = dense_largest_only
        self.runner = FunctionalViT(vit_args(cfg, 1, cfg.head_dim))

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return list(self.template.config.anchors)

    @property
    def teacher_size(self) -> tuple[int, int]:
        return self.template.config.largest_anchor

    def sample_size(self, rng: random.Random) -> SizeChoice:
        """An anchor (by ``anchor_weights``; with ``sandwich`` never the largest, which every step trains anyway), then
        width-wise and depth-wise stochastic scaling of it; with ``sandwich_all``, every smaller anchor, each scaled by its
        own draw, the first returned and the others in its ``also``."""
        cfg = self.template.config
        if self.sandwich_all:
            smaller = [self._scaled(rng, tuple(a)) for a in cfg.anchors if tuple(a) != cfg.largest_anchor]
            return dataclasses.replace(smaller[0], also=tuple(smaller[1:]))
        weights = self.anchor_weights
        if self.sandwich:
            weights = [0.0 if tuple(a) == cfg.largest_anchor else w for a, w in zip(cfg.anchors, weights or [1.0] * len(cfg.anchors))]
        # rng.choice without weights: the draws of runs before anchor_weights existed replay unchanged
        anchor = rng.choice(cfg.anchors) if weights is None else rng.choices(cfg.anchors, weights=weights)[0]
        return self._scaled(rng, anchor)

    def _scaled(self, rng: random.Random, anchor: tuple[int, int]) -> SizeChoice:
        """``anchor`` after width-wise and depth-wise stochastic scaling."""
        depth, width = anchor
        if rng.random() < self.width_scaling_p:
            width = rng.choice(self.stochastic_widths)
        if rng.random() < self.depth_scaling_p:
            depths = [d for d, _ in self.template.config.anchors]
            depth = rng.randint(min(depths), max(depths))
        return SizeChoice(anchor, depth, width)

    def _scalers(self, size: SizeChoice) -> dict[str, Tensor]:
        anchor = self.template.stored_scalers(*size.anchor)
        if not size.stochastic:
            return anchor
        cfg = self.template.config
        return derive_scalers(anchor, size.depth, size.width, cfg.depth_rescale, cfg.width_rescale)

    def features(self, size: SizeChoice, view_groups: list[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
        """Pooled features and patch tokens of each group of views in r-space (one forward per
        group, views batched inside it); tokens are None unless the head reads them."""
        scalers = self._scalers(size)
        state = materialize_state_dict(dict(self.template.cores.items()), scalers, self.template.config)
        to_r_space = scalers["U"] / math.sqrt(size.width)
        heads = size.width // self.template.config.head_dim
        outputs = [self.runner.features_and_tokens(state, views, heads) for views in view_groups]
        return [(pooled @ to_r_space, tokens @ to_r_space if self.head.reads_tokens else None) for pooled, tokens in outputs]

    def forward(self, global_views: list[Tensor], local_views: list[Tensor], size: SizeChoice,
                targets: list[Tensor] | None = None, temperature: float = 0.2, masks: Tensor | None = None,
                matches: list[TokenMatch] | None = None) -> Tensor:
        """Loss of the student at ``size`` (targets: EMA teacher's, or None for its own); with ``sandwich``, plus the
        loss of the largest anchor on the same views."""
        def objective(at: SizeChoice, goal: list[Tensor] | None, dense: bool = True) -> tuple[Tensor, list[Tensor]]:
            return student_objective_and_views(lambda groups: self.features(at, groups), self.head, global_views, local_views,
                                               goal, temperature, masks, self.patch_size, matches if dense else None)

        if not self.sandwich:
            return objective(size, targets)[0]
        largest = SizeChoice(self.teacher_size, *self.teacher_size)
        largest_loss, largest_views = objective(largest, targets)
        goal = [v.detach() for v in largest_views[:len(global_views)]] if self.inplace_distill else targets
        return (self._loss_weight(largest) * largest_loss
                + sum(self._loss_weight(at) * objective(at, goal, not self.dense_largest_only)[0] for at in (size, *size.also)))

    def _loss_weight(self, size: SizeChoice) -> float:
        """The weight of ``size``'s loss in a sandwich update: its anchor's ``anchor_loss_weights`` entry (default 1)."""
        return self.anchor_loss_weights.get(tuple(size.anchor), 1.0)

    @torch.no_grad()
    def embed_targets(self, global_views: list[Tensor]) -> list[Tensor]:
        size = SizeChoice(self.teacher_size, *self.teacher_size)
        return _split_embed(lambda groups: self.features(size, groups), self.head, global_views, [])[0]

    def model_for(self, depth: int, width: int) -> nn.Module:
        return self.template.materialize(depth, width)

    def describe_size(self, depth: int, width: int) -> str:
        return self.template.scaler_source(depth, width)

    def save_artefact(self, output_dir: Path, card_info: dict[str, Any]) -> Path:
        """The template as a Hub repo folder (output_dir/template) with its model card."""
        self.template.card_info = card_info
        self.template.save_pretrained(output_dir / "template")
        return output_dir / "template"


class SingleMethod(nn.Module):
    """An ordinary timm ViT of one size with the same head and loss (per-size baseline)."""

    def __init__(self, model_name: str, model_kwargs: dict[str, Any], pretrained_cfg: dict[str, Any] | None = None,
                 head: dict[str, Any] | None = None) -> None:
        super().__init__()
        # pretrained_cfg: the data config (input size, mean/std) recorded when the model is exported
        self.vit = timm.create_model(model_name, pretrained=False, dynamic_img_size=True, pretrained_cfg_overlay=pretrained_cfg,
                                     **model_kwargs)
        pixels = view_pixels(model_kwargs["in_chans"], model_kwargs["img_size"])
        self.patch_size = model_kwargs["patch_size"]
        self.head = ProjectionHead(self.vit.embed_dim, pixels, model_kwargs["in_chans"] * self.patch_size ** 2, **(head or {}))
        self.size = (len(self.vit.blocks), self.vit.embed_dim)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [self.size]

    def sample_size(self, rng: random.Random) -> SizeChoice:
        return SizeChoice(self.size, *self.size)

    def _features(self, groups: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return [pooled_and_tokens(self.vit, views) for views in groups]

    def forward(self, global_views: list[Tensor], local_views: list[Tensor], size: SizeChoice | None = None,
                targets: list[Tensor] | None = None, temperature: float = 0.2, masks: Tensor | None = None,
                matches: list[TokenMatch] | None = None) -> Tensor:
        return student_objective(self._features, self.head, global_views, local_views, targets, temperature, masks,
                                 self.patch_size, matches)

    @torch.no_grad()
    def embed_targets(self, global_views: list[Tensor]) -> list[Tensor]:
        return _split_embed(self._features, self.head, global_views, [])[0]

    def model_for(self, depth: int, width: int) -> nn.Module | None:
        return copy.deepcopy(self.vit).eval() if (depth, width) == self.size else None

    def describe_size(self, depth: int, width: int) -> str:
        return "per-size pre-training"

    def save_artefact(self, output_dir: Path, card_info: dict[str, Any]) -> Path:
        """The ViT as a stock timm repo folder (output_dir/model)."""
        return export_timm(self.vit, output_dir / "model", provenance={"pre-training": "per-size (method=single)"})


def student_loss(head: ProjectionHead, students: list[Tensor], targets: list[Tensor] | None, n_global: int,
                 temperature: float) -> Tensor:
    """The shared loss between views (the head's objective); without a teacher the targets are the student's global views."""
    targets = targets if targets is not None else students[:n_global]
    return head.view_loss(students, targets, temperature, same_views=True)


def student_objective(features_of, head: ProjectionHead, global_views: list[Tensor], local_views: list[Tensor],
                      targets: list[Tensor] | None, temperature: float, masks: Tensor | None, patch_size: int,
                      matches: list[TokenMatch] | None = None) -> Tensor:
    """The whole loss of one student (SWEET and per-size share it): contrastive, plus the pixel,
    masked-patch and dense terms the head enables. With ``masks`` the student sees the masked global
    views (or only the masked-patch term does, ``head.mim_separate``); both reconstruction terms are
    scored against the unmasked views."""
    return student_objective_and_views(features_of, head, global_views, local_views, targets, temperature, masks, patch_size,
                                       matches)[0]


def student_objective_and_views(features_of, head: ProjectionHead, global_views: list[Tensor], local_views: list[Tensor],
                                targets: list[Tensor] | None, temperature: float, masks: Tensor | None,
                                patch_size: int, matches: list[TokenMatch] | None = None) -> tuple[Tensor, list[Tensor]]:
    """:func:`student_objective` and the student's projection of every view (in-place distillation reads them)."""
    students, features, tokens = embed_views(features_of, head, global_views, local_views, masks, patch_size)
    loss = (student_loss(head, students, targets, len(global_views), temperature) + head.pixel_loss(features, global_views)
            + head.masked_patch_loss(tokens, global_views, masks, patch_size) + head.dense_loss(tokens, matches, temperature))
    return loss, students


def embed_views(features_of, head: ProjectionHead, global_views: list[Tensor], local_views: list[Tensor],
                masks: Tensor | None, patch_size: int) -> tuple[list[Tensor], Tensor, Tensor | None]:
    """:func:`_split_embed` of what the student sees: the global views masked by ``masks``, or,
    with ``head.mim_separate``, the unmasked views, the patch tokens then coming from a pass of
    their own over the masked ones."""
    if masks is None or not head.mim_separate:
        return _split_embed(features_of, head, mask_views(global_views, masks, patch_size), local_views)
    students, features, _ = _split_embed(features_of, head, global_views, local_views)
    tokens = features_of([torch.cat(mask_views(global_views, masks, patch_size))])[0][1]
    return students, features, tokens


def mask_views(global_views: list[Tensor], masks: Tensor | None, patch_size: int) -> list[Tensor]:
    """The global views with the patches ``masks`` (n_global * B, N) marks set to the mean; unchanged without masks."""
    if masks is None:
        return global_views
    return list(apply_patch_masks(torch.cat(global_views), masks, patch_size).split(global_views[0].shape[0]))


def view_pixels(in_chans: int, img_size: int | tuple[int, int]) -> int:
    """Numbers in one global view (the pixel decoder's outputs)."""
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    return in_chans * height * width


def _split_embed(features_of, head: ProjectionHead, global_views: list[Tensor],
                 local_views: list[Tensor]) -> tuple[list[Tensor], Tensor, Tensor | None]:
    """Run global views as one batch and local views as another through ``features_of`` (a list of
    view batches -> a list of (pooled features, patch tokens)); return one projection per view and
    the pooled features and patch tokens of the global batch (what the decoders read)."""
    groups = [torch.cat(global_views)] + ([torch.cat(local_views)] if local_views else [])
    outputs = features_of(groups)
    batch = global_views[0].shape[0]
    views = list(head(outputs[0][0]).split(batch))
    if local_views:
        views += list(head(outputs[1][0]).split(batch))
    return views, outputs[0][0], outputs[0][1]
