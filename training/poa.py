"""POA baseline (arXiv 2408.01031): pre-train once, extract elastic sub-networks.

One full ViT (depth L, width D) is trained with three branches: an EMA teacher, the intact
student, and an elastic student sampled each step (smaller sizes more often). The elastic
network of (d, w) uses the first w channels of every layer (first w/head_dim heads, first 4w MLP
channels) with inputs rescaled by D/w, and the evenly spaced blocks ``linspace(0, L-1, d)``.
Loss: intact_weight * L(teacher -> intact) + elastic_weight * L(teacher -> elastic)
+ distill_weight * L(intact -> elastic), with the same loss between views as every other method (the head's objective).

:func:`slice_state_dict` is both the elastic forward (differentiable) and the extraction of a
sub-network to an ordinary timm state dict (rescale folded into the weights); with
``rescale=False`` it is the *weight selection* baseline (channels and layers selected from a
larger pre-trained model, no rescaling).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from sweet_hub import export_timm
from sweet_hub.export import vit_model_args
from training.config import PoaSettings
from training.methods import SizeChoice, _split_embed, embed_views, view_pixels
from training.selfsup import FunctionalViT, ProjectionHead, TokenMatch, pooled_and_tokens

__all__ = ["POAMethod", "extract_vit", "slice_state_dict"]


def _layer_index(src_depth: int, depth: int) -> list[int]:
    return torch.linspace(0, src_depth - 1, depth).round().long().tolist()


def slice_state_dict(state: dict[str, Tensor], depth: int, width: int, rescale: bool = True) -> dict[str, Tensor] | None:
    """The (depth, width) sub-network of a timm ViT state dict, or None when it is larger.

    Width: the first ``width`` channels everywhere; inputs rescaled by D/width when ``rescale``.
    Depth: blocks at ``linspace(0, L-1, depth)``.
    """
    src_width = state["pos_embed"].shape[-1]
    src_depth = sum(1 for k in state if k.endswith(".attn.qkv.weight"))
    if depth > src_depth or width > src_width:
        return None
    w, s = width, (src_width / width if rescale else 1.0)
    out: dict[str, Tensor] = {
        "cls_token": state["cls_token"][..., :w],
        "pos_embed": state["pos_embed"][..., :w],
        "patch_embed.proj.weight": state["patch_embed.proj.weight"][:w],
        "patch_embed.proj.bias": state["patch_embed.proj.bias"][:w],
        "norm.weight": state["norm.weight"][:w],
        "norm.bias": state["norm.bias"][:w],
    }
    if "head.weight" in state:
        out["head.weight"] = state["head.weight"][:, :w] * s
        out["head.bias"] = state["head.bias"]
    for new, old in enumerate(_layer_index(src_depth, depth)):
        p, q = f"blocks.{old}.", f"blocks.{new}."
        qkv_w = state[p + "attn.qkv.weight"].view(3, src_width, src_width)[:, :w, :w].reshape(3 * w, w)
        out.update({
            q + "norm1.weight": state[p + "norm1.weight"][:w],
            q + "norm1.bias": state[p + "norm1.bias"][:w],
            q + "attn.qkv.weight": qkv_w * s,
            q + "attn.qkv.bias": state[p + "attn.qkv.bias"].view(3, src_width)[:, :w].reshape(3 * w),
            q + "attn.proj.weight": state[p + "attn.proj.weight"][:w, :w] * s,
            q + "attn.proj.bias": state[p + "attn.proj.bias"][:w],
            q + "norm2.weight": state[p + "norm2.weight"][:w],
            q + "norm2.bias": state[p + "norm2.bias"][:w],
            q + "mlp.fc1.weight": state[p + "mlp.fc1.weight"][: 4 * w, :w] * s,
            q + "mlp.fc1.bias": state[p + "mlp.fc1.bias"][: 4 * w],
            q + "mlp.fc2.weight": state[p + "mlp.fc2.weight"][:w, : 4 * w] * s,
            q + "mlp.fc2.bias": state[p + "mlp.fc2.bias"][:w],
        })
    return out


def extract_vit(model: nn.Module, depth: int, width: int, head_dim: int, rescale: bool = True) -> nn.Module | None:
    """A stock timm ViT of (depth, width) extracted from ``model``; None if it is not a sub-network."""
    state = slice_state_dict({k: v.detach() for k, v in model.state_dict().items()}, depth, width, rescale)
    if state is None:
        return None
    args = {**vit_model_args(model), "depth": depth, "embed_dim": width, "num_heads": width // head_dim, "num_classes": model.num_classes}
    sub = timm.create_model("vit_base_patch16_224", pretrained=False, pretrained_cfg_overlay=dict(model.pretrained_cfg), **args)
    sub.load_state_dict({k: v.clone() for k, v in state.items()})
    return sub.eval()


class POAMethod(nn.Module):
    """Full ViT + projection head; elastic sub-networks are slices of it (see module docstring)."""

    def __init__(self, model_kwargs: dict[str, Any], poa_cfg: PoaSettings, pretrained_cfg: dict[str, Any] | None = None,
                 head: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.vit = timm.create_model("vit_base_patch16_224", pretrained=False, dynamic_img_size=True,
                                     pretrained_cfg_overlay=pretrained_cfg, **model_kwargs)
        self.head_dim = model_kwargs["embed_dim"] // model_kwargs["num_heads"]
        self.full = (model_kwargs["depth"], model_kwargs["embed_dim"])
        pixels = view_pixels(model_kwargs["in_chans"], model_kwargs["img_size"])
        self.patch_size = model_kwargs["patch_size"]
        self.head = ProjectionHead(self.full[1], pixels, model_kwargs["in_chans"] * self.patch_size ** 2, **(head or {}))
        self.runner = FunctionalViT(model_kwargs)
        depths = poa_cfg.elastic_depths or list(range(max(1, self.full[0] // 2), self.full[0] + 1))
        widths = poa_cfg.elastic_widths or list(range(max(self.head_dim, self.full[1] // 3), self.full[1] + 1, self.head_dim))
        self.elastic_sizes = [(d, w) for d in depths for w in widths if (d, w) != self.full]
        # smaller networks are sampled more often: weight ~ params^-small_bias
        self.elastic_weights = [(d * w * w) ** -poa_cfg.small_bias for d, w in self.elastic_sizes]
        self.weights = (poa_cfg.intact_weight, poa_cfg.elastic_weight, poa_cfg.distill_weight)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [self.full]

    def sample_size(self, rng: random.Random) -> SizeChoice:
        depth, width = rng.choices(self.elastic_sizes, weights=self.elastic_weights)[0]
        return SizeChoice(self.full, depth, width)

    def _intact(self, groups: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return [pooled_and_tokens(self.vit, views) for views in groups]

    def _elastic(self, size: SizeChoice, groups: list[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
        state = slice_state_dict(dict(self.vit.named_parameters()), size.depth, size.width)
        heads = size.width // self.head_dim
        to_full = lambda x: nn.functional.pad(x * (self.full[1] / size.width), (0, self.full[1] - size.width))  # first-k channels of D
        outputs = [self.runner.features_and_tokens(state, views, heads) for views in groups]
        return [(to_full(pooled), to_full(tokens) if self.head.reads_tokens else None) for pooled, tokens in outputs]

    def forward(self, global_views: list[Tensor], local_views: list[Tensor], size: SizeChoice,
                targets: list[Tensor] | None = None, temperature: float = 0.2, masks: Tensor | None = None,
                matches: list[TokenMatch] | None = None) -> Tensor:
        """The tri-branch loss; ``targets`` are the EMA teacher's (or None: the intact student's). The
        pixel, masked-patch and dense terms are each student's own, weighted as its contrastive term."""
        p = self.patch_size
        intact, intact_features, intact_tokens = embed_views(self._intact, self.head, global_views, local_views, masks, p)
        elastic, elastic_features, elastic_tokens = embed_views(lambda g: self._elastic(size, g), self.head, global_views,
                                                                local_views, masks, p)
        targets = targets if targets is not None else intact[: len(global_views)]
        distill_targets = [t.detach() for t in intact[: len(global_views)]]
        wi, we, wd = self.weights
        reconstruction = lambda features, tokens: (self.head.pixel_loss(features, global_views)
                                                   + self.head.masked_patch_loss(tokens, global_views, masks, p)
                                                   + self.head.dense_loss(tokens, matches, temperature))
        view_loss = self.head.view_loss
        return (wi * view_loss(intact, targets, temperature) + we * view_loss(elastic, targets, temperature)
                + wd * view_loss(elastic, distill_targets, temperature)
                + wi * reconstruction(intact_features, intact_tokens)
                + we * reconstruction(elastic_features, elastic_tokens))

    @torch.no_grad()
    def embed_targets(self, global_views: list[Tensor]) -> list[Tensor]:
        return _split_embed(self._intact, self.head, global_views, [])[0]

    def model_for(self, depth: int, width: int) -> nn.Module | None:
        return extract_vit(self.vit, depth, width, self.head_dim)

    def describe_size(self, depth: int, width: int) -> str:
        return "POA full network" if (depth, width) == self.full else "POA extraction"

    def save_artefact(self, output_dir: Path, card_info: dict[str, Any]) -> Path:
        return export_timm(self.vit, output_dir / "poa", provenance={"pre-training": "POA (elastic sub-networks)"})
