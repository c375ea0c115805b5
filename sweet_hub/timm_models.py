"""timm glue: the ``sweet_*`` entrypoints and where their weights come from.

timm has no plugin discovery, so these models exist only after ``import sweet_hub``. Loading
``pretrained=True`` resolves a template (the bundled one, ``pretrained_cfg_overlay=dict(
hf_hub_id=...)`` or ``dict(file=FOLDER)``, an ``hf-hub:`` id or a ``local-dir:`` path),
materializes the requested size (or reads it from the cache, see cache.py) and builds the model
with :func:`~sweet_hub.builder.build_sweet_vit`, i.e. through timm's own loader.
``pretrained=False`` reads the template's config.json only.

A repo whose config.json names ``sweet_vit`` but holds a plain checkpoint (e.g. a materialized
model pushed with ``timm.models.push_to_hf_hub``) is loaded as that checkpoint: nothing is
materialized a second time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer

from .builder import SOURCE_KEYS, build_sweet_vit, build_vit
from .cache import materialized_state_dict
from .config import TemplateConfig, format_size, timm_pretrained_cfg
from .errors import NotASweetTemplateError, TemplateNotAvailableError
from .hub import resolve_template_files
from .template import SweetTemplate

__all__ = ["BUNDLED_TEMPLATE", "create_sweet_vit", "sweet_vit", "sweet_vit_base", "sweet_vit_small", "sweet_vit_tiny"]

_logger = logging.getLogger(__name__)

#: the template shipped inside the package (Hub repo layout), default weights of every sweet_* model
BUNDLED_TEMPLATE = Path(__file__).resolve().parent / "fmnist"
_IMPORT_HINT = "(sweet_* models exist in timm only after `import sweet_hub`)"


def _bundled_cfg() -> dict[str, Any]:
    """Registry cfg of the bundled template; without one (a broken install) pretrained=True errors clearly."""
    try:
        cfg = resolve_template_files(BUNDLED_TEMPLATE, tensors=False).template_config
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


def _overlay_replaces_source(overlay: dict[str, Any] | None) -> dict[str, Any] | None:
    """An overlay that names a weight source (hf_hub_id, file) replaces the registry's source
    instead of competing with it (timm would otherwise prefer the registry's ``file``)."""
    if not overlay or not any(overlay.get(k) for k in SOURCE_KEYS):
        return overlay
    return {**{k: None for k in SOURCE_KEYS}, **overlay}


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
    width = kwargs.pop("embed_dim") if width is None and "embed_dim" in kwargs else width

    try:
        files = resolve_template_files(location, cache_dir=cache_dir, tensors=pretrained) if location else None
    except NotASweetTemplateError:
        if not pretrained_model_args:
            raise
        # A plain checkpoint saved from a sweet_vit model (its config.json has full model_args):
        # timm loads it as it is, nothing is materialized.
        size = {k: v for k, v in (("depth", depth), ("embed_dim", width)) if v is not None}
        return build_vit(variant, pretrained, cfg, pretrained_model_args=pretrained_model_args, **{**kwargs, **size})

    tcfg = files.template_config if files else TemplateConfig()
    depth = tcfg.largest_anchor[0] if depth is None else depth
    width = tcfg.largest_anchor[1] if width is None else width
    if not pretrained:
        return build_sweet_vit(tcfg, depth, width, variant=variant, **kwargs)

    def materialize() -> dict[str, torch.Tensor]:
        return SweetTemplate.from_files(files).state_dict_for(depth, width, dtype=torch.float32)

    state, hit = materialized_state_dict(files, depth, width, materialize)
    _logger.info("%s %s from %s (%s)", variant, format_size(depth, width), files.source, "cached" if hit else "materialized")
    provenance = {k: cfg.get(k) for k in SOURCE_KEYS if cfg.get(k) is not None}
    return build_sweet_vit(tcfg, depth, width, state, variant=variant, provenance=provenance, **kwargs)


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
