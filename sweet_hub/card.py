"""Model cards: the template's and the one of a model exported to stock timm.

Both are Jinja templates in ``model_cards/`` (installed as ``sweet_hub/model_cards``) rendered
with huggingface_hub's ``ModelCard.from_template``, so their YAML header is the Hub's metadata
(library, license, tags, ``base_model`` linking an export to its template).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .config import TemplateConfig, format_size, parse_size_key, scaler_filename, scaler_shapes

__all__ = ["PLACEHOLDER_REPO_ID", "TEMPLATE_TAGS", "export_card", "template_card"]

#: what usage code shows when the repo id is not known (pass model_card_kwargs={"repo_id": ...})
PLACEHOLDER_REPO_ID = "<org>/<template-repo>"
TEMPLATE_TAGS = ["sweet", "weight-template", "vision-transformer", "timm", "image-feature-extraction"]


def _card_source(name: str) -> str:
    try:
        return resources.files("sweet_hub.model_cards").joinpath(name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # source checkout without install
        return (Path(__file__).resolve().parent.parent / "model_cards" / name).read_text(encoding="utf-8")


def template_card(
    cfg: TemplateConfig,
    scaler_info: Mapping[str, Mapping[str, Any]],
    template_params: int,
    info: Mapping[str, Any],
    repo_id: str | None = None,
    **kwargs: Any,
) -> ModelCard:
    """Card of a template: usage, sizes, provenance of each scaler set, and what the training
    run recorded in ``info`` (title, command, data, metrics, limitations)."""
    card_data = ModelCardData(
        library_name="sweet-hub",
        license="apache-2.0",
        tags=list(TEMPLATE_TAGS),
        pipeline_tag="image-feature-extraction",
        datasets=info.get("datasets"),
    )
    sizes = []
    for key, entry in scaler_info.items():
        depth, width = parse_size_key(key)
        sizes.append(dict(
            size=format_size(depth, width), file=scaler_filename(depth, width), source=entry.get("source", "?"),
            scaler_params=sum(math.prod(s) for s in scaler_shapes(cfg, depth, width).values()),
            details=", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("depth", "width", "source")),
        ))
    return ModelCard.from_template(
        card_data,
        template_str=_card_source("sweet_template.md"),
        repo_id=repo_id or info.get("repo_id") or PLACEHOLDER_REPO_ID,
        config=cfg,
        template_params=template_params,
        sizes=sizes,
        example_size=(max(cfg.anchors)[0] + 2, max(w for _, w in cfg.anchors) + cfg.head_dim),
        info=info,
        **kwargs,
    )


def export_card(model_args: Mapping[str, Any], num_classes: int, provenance: Mapping[str, Any], repo_id: str | None = None) -> ModelCard:
    """Card of a materialized model exported as a stock timm repo.

    ``provenance["template"]`` becomes the card's ``base_model`` when it is a Hub repo id, so the
    Hub links the export to the template it came from.
    """
    source = str(provenance.get("template", "a SWEET template"))
    is_repo_id = source.count("/") == 1 and not Path(source).exists() and " " not in source
    card_data = ModelCardData(
        library_name="timm",
        license="apache-2.0",
        tags=["image-classification", "timm", "sweet", "vision-transformer"],
        base_model=source if is_repo_id else None,
    )
    return ModelCard.from_template(
        card_data,
        template_str=_card_source("timm_export.md"),
        size=format_size(model_args["depth"], model_args["embed_dim"]),
        source=source,
        repo_id=repo_id or "<org>/<this-repo>",
        fields={**model_args, "num_classes": num_classes, **provenance},
    )
