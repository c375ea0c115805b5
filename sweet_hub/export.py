"""Export a materialized model as a stock timm ViT repo (config.json + model.safetensors + card).

The exported folder names a stock timm architecture with the full ``model_args``, so it loads
with plain timm (``timm.create_model("hf-hub:org/name", pretrained=True)``) and with transformers
(``AutoModelForImageClassification``, through TimmWrapper) on a machine without sweet-hub.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from .card import export_card
from .files import save_safetensors, staged_folder, write_text

__all__ = ["EXPORT_ARCHITECTURE", "export_timm", "vit_model_args"]

#: any registered timm ViT works: model_args override its size, patch and input; this one is
#: present in every timm release since 0.4 and in transformers' TimmWrapper tests.
EXPORT_ARCHITECTURE = "vit_base_patch16_224"


def vit_model_args(model: nn.Module) -> dict[str, Any]:
    """The VisionTransformer arguments that rebuild ``model`` through a stock timm entrypoint,
    read from the module itself (so they hold whatever was changed after construction)."""
    args = {
        "img_size": tuple(model.patch_embed.img_size),
        "patch_size": tuple(model.patch_embed.patch_size),
        "in_chans": model.patch_embed.proj.in_channels,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": model.blocks[0].attn.num_heads,
        "mlp_ratio": model.blocks[0].mlp.fc1.out_features / model.embed_dim,
        "qkv_bias": model.blocks[0].attn.qkv.bias is not None,
        "class_token": model.cls_token is not None,
        "global_pool": model.global_pool,
        "fc_norm": not isinstance(model.fc_norm, nn.Identity),
    }
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def export_timm(model: nn.Module, save_directory: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a timm VisionTransformer) as a stock timm repo folder.

    ``num_classes`` is kept at the config root only: timm's ``save_for_hf`` also puts it in
    ``model_args``, which makes transformers' TimmWrapper fail with "got multiple values for
    keyword argument 'num_classes'".
    """
    from timm.models import save_for_hf
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"export_timm expects a timm VisionTransformer (e.g. from SweetTemplate.materialize), got {type(model).__name__}.")
    save_directory = Path(save_directory)
    with tempfile.TemporaryDirectory() as tmp:
        # timm writes the config (data config, labels, pretrained_cfg) exactly as it reads it back
        save_for_hf(model, tmp, model_config={"architecture": EXPORT_ARCHITECTURE}, safe_serialization=True,
                    model_args=vit_model_args(model))
        config = json.loads((Path(tmp) / "config.json").read_text())
    # only arguments a stock VisionTransformer accepts ('width' is a sweet_vit alias of embed_dim)
    config["model_args"] = vit_model_args(model)
    config["pretrained_cfg"].pop("architecture", None)
    if provenance:
        config["sweet_provenance"] = provenance
    with staged_folder(save_directory) as staging:  # all files or none; config.json last
        save_safetensors(model.state_dict(), staging / "model.safetensors", {"format": "pt"})
        write_text(staging / "README.md", str(export_card(config["model_args"], config["num_classes"], provenance or {})))
        write_text(staging / "config.json", json.dumps(config, indent=2) + "\n")
    return save_directory
