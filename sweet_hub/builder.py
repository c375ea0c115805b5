"""The one place a timm ``VisionTransformer`` is built from a template config.

``SweetTemplate.materialize`` and the ``sweet_*`` timm entrypoints both call
:func:`build_sweet_vit`, so the size checks, the architecture arguments, the data config and the
way weights are loaded are the same whichever door a user comes in by. Weights are handed to
timm's own loader (``build_model_with_cfg`` with an in-memory ``state_dict`` source), so a
different ``num_classes`` resets the classifier, a different ``in_chans`` adapts the patch
embedding and ``features_only`` works, exactly as for timm's own models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models import build_model_with_cfg, load_pretrained
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from .config import TemplateConfig, timm_pretrained_cfg, vit_args
from .errors import SizeError

__all__ = ["SOURCE_KEYS", "build_sweet_vit", "build_vit", "sweet_model_args"]

#: pretrained_cfg keys that say where weights come from
SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")


def sweet_model_args(cfg: TemplateConfig, depth: int, width: int, **kwargs: Any) -> dict[str, Any]:
    """VisionTransformer arguments of (depth, width) plus the caller's timm arguments.

    The size and everything the template fixes (head dim, MLP ratio, patch size) are refused
    when given another value: ``embed_dim`` is accepted as an alias of ``width``.
    """
    if "embed_dim" in kwargs:
        embed_dim = kwargs.pop("embed_dim")
        if embed_dim != width:
            raise SizeError(f"width={width} and embed_dim={embed_dim} disagree; pass only width=.")
    args = {**vit_args(cfg, depth, width), **kwargs}
    fixed = {"embed_dim": width, "depth": depth, "num_heads": width // cfg.head_dim, "patch_size": cfg.patch_size, "mlp_ratio": 4.0}
    for name, value in fixed.items():
        if args.get(name) != value:
            raise SizeError(
                f"{name}={args.get(name)!r} contradicts the template (expected {value}); set the size with "
                f"depth=/width= and leave {name} to the template (head_dim={cfg.head_dim}, mlp_ratio=4, patch_size={cfg.patch_size})."
            )
    return args


def build_vit(variant: str, pretrained: bool, pretrained_cfg: Mapping[str, Any], **kwargs: Any) -> VisionTransformer:
    """``build_model_with_cfg`` for a VisionTransformer, with timm's ViT checkpoint filter and
    ``features_only`` support; weights come from ``pretrained_cfg``'s source (file, hub, state_dict)."""
    out_indices = kwargs.pop("out_indices", 3)
    model = build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_cfg=dict(pretrained_cfg),
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )
    target = getattr(model, "model", model)  # features_only wraps the ViT
    # The full constructor arguments, so timm's save_for_hf / push_to_hf_hub write a config that
    # rebuilds this exact model (head count included, which no sweet_vit argument implies once the
    # template is gone). timm 1.0 keeps them in `_model_args` and has no public setter; this is
    # the only place sweet-hub writes it. timm's factory adds the caller's own kwargs on top.
    target._model_args = {k: v for k, v in kwargs.items()
                          if k not in ("drop_rate", "drop_path_rate", "pretrained_model_args", "features_only", "feature_cls")}
    return model


def build_sweet_vit(
    cfg: TemplateConfig,
    depth: int,
    width: int,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    variant: str = "sweet_vit",
    provenance: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> VisionTransformer:
    """A VisionTransformer of (depth, width) with the template's architecture and data config,
    loaded with ``state_dict`` (a materialized state dict) when given, else randomly initialized.

    ``provenance`` (e.g. ``{"hf_hub_id": "org/template"}``) is recorded in ``model.pretrained_cfg``
    as where the weights came from. timm's ``pretrained_model_args`` records the architecture
    of the materialized checkpoint, which timm uses when it resamples position embeddings for
    another ``img_size``.
    """
    args = sweet_model_args(cfg, depth, width, **kwargs)
    pretrained_cfg = {**{k: None for k in SOURCE_KEYS}, **timm_pretrained_cfg(cfg), "architecture": variant}
    source_args = vit_args(cfg, depth, width)
    if state_dict is not None and args.get("features_only"):
        # timm wraps features_only models after loading: hand it the weights as a pretrained source
        model = build_vit(variant, True, {**pretrained_cfg, "state_dict": dict(state_dict)}, pretrained_model_args=source_args, **args)
    else:
        model = build_vit(variant, False, pretrained_cfg, pretrained_model_args=source_args, **args)
        if state_dict is not None:
            # timm's own loader (classifier reset, in_chans adaptation, pos-embed resampling), called directly:
            # through build_model_with_cfg the state dict would pass PretrainedCfg <-> dataclasses.asdict, which
            # deep-copies every tensor twice (1.7 s of a 1.9 s first load at 10x512, measured)
            load_pretrained(model, pretrained_cfg={**model.pretrained_cfg, "state_dict": state_dict},
                            num_classes=model.num_classes, in_chans=args["in_chans"], filter_fn=checkpoint_filter_fn)
    # where the weights came from (the template), never the in-memory tensors (twice the memory, unserializable)
    target = getattr(model, "model", model)
    target.pretrained_cfg = {**{k: v for k, v in target.pretrained_cfg.items() if k not in SOURCE_KEYS}, **(provenance or {})}
    target.default_cfg = target.pretrained_cfg
    return model
