"""timm glue: the ``sweet_*`` entrypoints and their pretrained loading.

timm has no plugin discovery, so these models exist only after ``import sweet_hub``. Loading
``pretrained=True`` resolves a template (the bundled one, ``pretrained_cfg_overlay=dict(
hf_hub_id=...)``, an ``hf-hub:`` id or a ``local-dir:`` path), materializes the requested size
into the cache (see cache.py), and hands that checkpoint to timm's own loader, so everything timm
does on load (classifier reset for another ``num_classes``, ``in_chans`` adaptation, pos-embed
resampling for another ``img_size``, ``features_only``) works unchanged.

A repo whose config.json names ``sweet_vit`` but holds a plain checkpoint (e.g. a materialized
model pushed with ``timm.models.push_to_hf_hub``) is loaded as that checkpoint: nothing is
materialized a second time.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from .cache import cache_enabled, materialized_checkpoint
from .config import TemplateConfig, timm_pretrained_cfg, vit_args
from .errors import NotASweetTemplateError, SizeError, TemplateNotAvailableError
from .hub import load_template, parse_template_config, resolve_template_files

__all__ = ["BUNDLED_TEMPLATE", "create_sweet_vit", "sweet_vit", "sweet_vit_base", "sweet_vit_small", "sweet_vit_tiny"]

_logger = logging.getLogger(__name__)

#: the template shipped inside the package (Hub repo layout), default weights of every sweet_* model
BUNDLED_TEMPLATE = Path(__file__).resolve().parent / "fmnist"
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")
_IMPORT_HINT = "(sweet_* models exist in timm only after `import sweet_hub`)"


def _bundled_cfg() -> dict[str, Any]:
    """Registry cfg of the bundled template; without one (a broken install) pretrained=True errors clearly."""
    try:
        files = resolve_template_files(BUNDLED_TEMPLATE)
        cfg = parse_template_config(files.config, str(BUNDLED_TEMPLATE))
    except Exception as e:  # noqa: BLE001 - registry must import even when the bundled files are broken
        _logger.warning("Bundled SWEET template unavailable (%s); sweet_* models have no default weights.", e)
        return dict(num_classes=10, input_size=(1, 28, 28), first_conv="patch_embed.proj", classifier="head")
    return dict(
        file=str(BUNDLED_TEMPLATE),
        description="SWEET template pre-trained without labels on Fashion-MNIST (bundled with sweet-hub)",
        **timm_pretrained_cfg(cfg),
    )


_BUNDLED = _bundled_cfg()
default_cfgs = generate_default_cfgs({
    "sweet_vit.fmnist": dict(_BUNDLED),
    "sweet_vit_tiny.fmnist": dict(_BUNDLED),
    "sweet_vit_small.fmnist": dict(_BUNDLED),
    "sweet_vit_base.fmnist": dict(_BUNDLED),
})


# ---------------------------------------------------------------------------------------------


def _overlay_replaces_source(overlay: dict[str, Any] | None) -> dict[str, Any] | None:
    """An overlay that names a weight source (hf_hub_id, file) replaces the registry's source
    instead of competing with it (timm would otherwise prefer the registry's ``file``)."""
    if not overlay or not any(overlay.get(k) for k in _SOURCE_KEYS):
        return overlay
    return {**{k: None for k in _SOURCE_KEYS}, **overlay}


def _template_location(cfg: dict[str, Any]) -> str | None:
    source = cfg.get("source")
    if source == "hf-hub":
        return cfg["hf_hub_id"]
    if source == "local-dir":
        return cfg["file"]
    return cfg.get("file") or cfg.get("hf_hub_id")


def create_sweet_vit(
    variant: str,
    pretrained: bool = False,
    depth: int | None = None,
    width: int | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build a ``sweet_*`` model; see the module docstring for how weights are found."""
    cache_dir = kwargs.pop("cache_dir", None)
    overlay = _overlay_replaces_source(kwargs.pop("pretrained_cfg_overlay", None))
    cfg = resolve_pretrained_cfg(variant, kwargs.pop("pretrained_cfg", None), overlay).to_dict()
    pretrained_model_args = kwargs.pop("pretrained_model_args", None)
    location = _template_location(cfg)
    if pretrained and location is None:
        raise TemplateNotAvailableError(
            f"No template is configured for {variant}: pass pretrained_cfg_overlay=dict(hf_hub_id='org/template') "
            f"or use timm.create_model('hf-hub:org/template', ...) {_IMPORT_HINT}."
        )

    if "embed_dim" in kwargs:
        embed_dim = kwargs.pop("embed_dim")
        if width is not None and width != embed_dim:
            raise SizeError(f"width={width} and embed_dim={embed_dim} disagree; pass only width=.")
        width = embed_dim

    try:
        files = resolve_template_files(location, cache_dir=cache_dir, sizes=None) if location else None
    except NotASweetTemplateError:
        if not pretrained_model_args:
            raise
        # A plain checkpoint saved from a sweet_vit model (its config.json has full model_args):
        # timm loads it as it is, nothing is materialized.
        return _build(variant, pretrained, cfg, pretrained_model_args=pretrained_model_args, embed_dim=width, depth=depth, **kwargs)

    tcfg = parse_template_config(files.config, files.source) if files else TemplateConfig()
    default_depth, default_width = tcfg.largest_anchor
    depth = default_depth if depth is None else depth
    width = default_width if width is None else width
    args = {**vit_args(tcfg, depth, width), **kwargs}
    if args["num_heads"] * tcfg.head_dim != width or args.get("mlp_ratio", 4.0) != 4.0:
        raise SizeError(f"num_heads/mlp_ratio are fixed by the template (head_dim={tcfg.head_dim}, mlp_ratio=4); set only depth= and width=.")
    cfg.update(timm_pretrained_cfg(tcfg))
    if not pretrained:
        return _build(variant, False, cfg, **args)

    def build_state() -> dict[str, torch.Tensor]:
        from .template import SweetTemplate

        return load_template(SweetTemplate, files.source, files=files).state_dict_for(depth, width, dtype=torch.float32)

    provenance = {k: cfg.get(k) for k in _SOURCE_KEYS if cfg.get(k) is not None}
    if cache_enabled():
        checkpoint, hit = materialized_checkpoint(files, depth, width, build_state)
        _logger.info("%s d%d_w%d from %s (%s)", variant, depth, width, files.source, "cached" if hit else "materialized")
        model = _build(variant, True, {**cfg, **{k: None for k in _SOURCE_KEYS}, "file": str(checkpoint)}, **args)
    else:
        with tempfile.TemporaryDirectory(prefix="sweet-hub-") as tmp:
            checkpoint, _ = materialized_checkpoint(files, depth, width, build_state, directory=Path(tmp))
            model = _build(variant, True, {**cfg, **{k: None for k in _SOURCE_KEYS}, "file": str(checkpoint)}, **args)
    # keep where the weights really came from, not the cache path
    model.pretrained_cfg = {**{k: v for k, v in model.pretrained_cfg.items() if k not in _SOURCE_KEYS}, **provenance}
    model.default_cfg = model.pretrained_cfg
    return model


def _build(variant: str, pretrained: bool, cfg: dict[str, Any], **kwargs: Any) -> torch.nn.Module:
    out_indices = kwargs.pop("out_indices", 3)
    model_args = {k: v for k, v in kwargs.items() if k not in ("pretrained_model_args", "features_only", "feature_cls")}
    model = build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )
    # full reconstruction arguments, so timm's save_for_hf/push_to_hf_hub record a rebuildable model
    target = getattr(model, "model", model)
    target._model_args = {k: v for k, v in model_args.items() if k not in ("drop_rate", "drop_path_rate")}
    return model


def _sized(variant: str, depth: int | None, width: int | None):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        kwargs.setdefault("depth", depth)
        kwargs.setdefault("width", width)
        return create_sweet_vit(variant, pretrained=pretrained, **kwargs)

    return entrypoint


@register_model
def sweet_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """SWEET ViT of any size: ``depth=`` and ``width=`` (a multiple of the template's head_dim);
    defaults to the template's largest anchor. Weights are materialized from a SWEET template."""
    return _sized("sweet_vit", None, None)(pretrained, **kwargs)


@register_model
def sweet_vit_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """SWEET ViT-Tiny size (depth 12, width 192); depth/width overridable."""
    return _sized("sweet_vit_tiny", 12, 192)(pretrained, **kwargs)


@register_model
def sweet_vit_small(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """SWEET ViT-Small size (depth 12, width 384); depth/width overridable."""
    return _sized("sweet_vit_small", 12, 384)(pretrained, **kwargs)


@register_model
def sweet_vit_base(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """SWEET ViT-Base size (depth 12, width 768); depth/width overridable."""
    return _sized("sweet_vit_base", 12, 768)(pretrained, **kwargs)
