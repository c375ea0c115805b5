"""``sweet-hub fit``: a template from a ViT checkpoint someone already has, saved as a folder.

The checkpoint is anything timm can build with pretrained weights:

- a timm model name (``vit_small_patch16_224``; weights from the Hub or the HF cache),
- an ``hf-hub:org/name`` id or a ``local-dir:PATH`` folder (a timm repo layout),
- a plain ``.safetensors`` file of a timm ``VisionTransformer``, built by ``--model NAME``
  (timm's ``pretrained_cfg_overlay=dict(file=...)``), or read as a bare state dict with
  ``--num-heads`` when no model name is given.

:meth:`SweetTemplate.fit <sweet_hub.SweetTemplate.fit>` does the fitting; this module resolves
the source, loads the unlabeled images, measures k-NN of the source and of the fitted template
at the source's size, and writes the folder with the report in config.json and the card.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .config import TEMPLATE_NAME, scaler_filename
from .errors import FitError
from .template import SweetTemplate

__all__ = ["fit_folder", "format_report", "knn_report", "load_source", "parse_anchors", "parse_model_args"]


def load_source(spec: str, model: str | None = None, model_args: dict[str, Any] | None = None,
                num_heads: int | None = None) -> nn.Module | dict[str, Tensor]:
    """The checkpoint named by ``spec`` as a timm model (or a state dict for a bare file)."""
    import timm

    path = Path(spec)
    kwargs = dict(model_args or {})
    if spec.endswith(".safetensors"):
        if not path.is_file():
            raise FitError(f"'{spec}' does not exist; give an existing .safetensors file of a timm VisionTransformer.")
        if model is None:
            if num_heads is None:
                raise FitError(f"'{spec}' is a bare state dict: give its architecture with --model NAME (a timm model name, with "
                               f"--model-args for a custom size) or at least --num-heads.")
            from safetensors.torch import load_file

            return load_file(str(path))
        # timm drops a checkpoint's classifier when num_classes differs from the pretrained_cfg's
        # (1000 for ImageNet names), so the overlay states what the file holds
        overlay: dict[str, Any] = dict(file=str(path))
        if "num_classes" in kwargs:
            overlay["num_classes"] = kwargs["num_classes"]
        if "img_size" in kwargs or "in_chans" in kwargs:
            size = kwargs.get("img_size", 224)
            overlay["input_size"] = (kwargs.get("in_chans", 3), *((size, size) if isinstance(size, int) else size))
        return _create(timm, model, pretrained_cfg_overlay=overlay, **kwargs)
    if path.is_dir():
        return _create(timm, f"local-dir:{path}", **kwargs)
    return _create(timm, spec, **kwargs)


def _create(timm: Any, name: str, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    except RuntimeError as e:  # state dict does not match the architecture
        first = str(e).strip().splitlines()[0]
        raise FitError(f"timm could not load '{name}' with these weights ({first}); check --model and --model-args "
                       f"(depth, embed_dim, num_heads, img_size, patch_size, in_chans, num_classes).") from None
    except (OSError, ValueError) as e:  # unknown model, no weights offline, bad overlay
        raise FitError(f"timm could not create '{name}' with pretrained weights: {e}") from None


def knn_report(source: nn.Module | None, template: SweetTemplate, data: Any, train: int = 5000, test: int = 2000) -> dict[str, Any]:
    """k-NN (cosine, k=20) of the source and of the fitted template at the source's size, on
    ``train``/``test`` images of the train and test splits of ``data`` (a dataset spec)."""
    from .data import load_image_tensors
    from .knn import extract_features, knn_accuracy

    cfg = template.config
    fit = template.card_info["fit"]
    depth, width = (int(v) for v in fit["source_size"].split("x"))
    splits = [load_image_tensors(data, split, cfg.img_size, cfg.in_chans).subset(n, seed) for split, n, seed in
              (("train", train, 0), ("test", test, 1))]
    if any(s.labels is None for s in splits):
        return {"skipped": f"'{data}' has no labels"}

    def score(model: nn.Module) -> float:
        feats = [extract_features(model, s.images, cfg.mean, cfg.std) for s in splits]
        return round(knn_accuracy(feats[0], splits[0].labels, feats[1], splits[1].labels), 2)

    out = {"protocol": f"{data}, {len(splits[0])} train / {len(splits[1])} test images, cosine k=20"}
    if source is not None:
        out["source"] = score(source)
    out["fitted"] = score(template.materialize(depth, width))
    return out


def fit_folder(source_spec: str, out: Path, *, model: str | None = None, model_args: dict[str, Any] | None = None,
               num_heads: int | None = None, ranks: list[int] | None = None, anchors: list[tuple[int, int]] | None = None,
               images: int | None = None, data: str | None = "fashion_mnist", steps: int = 300, distill_steps: int = 300,
               patch_size: int | None = None, knn: bool = True, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit, measure, save to ``out``; returns the report (also in config.json's card_info)."""
    source = load_source(source_spec, model, model_args, num_heads)
    unlabeled = None
    if images:
        if data is None:
            raise FitError("--images needs --data (a dataset spec: fashion_mnist, imagefolder:PATH or a Hub dataset id).")
        from .data import load_image_tensors
        from .decompose import read_source

        geometry = read_source(source, num_heads=num_heads)  # the input resolution to decode the images at
        unlabeled = load_image_tensors(data, "train", geometry.img_size, geometry.in_chans).subset(images, seed=seed + 123).images
    template = SweetTemplate.fit(source, ranks=tuple(ranks) if ranks else None, anchors=anchors, images=unlabeled, steps=steps,
                                 distill_steps=distill_steps, num_heads=num_heads, patch_size=patch_size, seed=seed, progress=progress)
    report = template.card_info["fit"]
    report["source"] = source_spec
    if images:
        report["images"] = {"data": data, "count": images}
    if knn and data is not None:
        report["knn"] = knn_report(source if isinstance(source, nn.Module) else None, template, data)
    template.card_info.setdefault("title", f"fitted to {source_spec}")
    template.save_pretrained(out)
    names = [TEMPLATE_NAME, *(scaler_filename(d, w) for d, w in template.sizes)]
    report["file_bytes"] = {name: (out / name).stat().st_size for name in names}
    template.save_pretrained(out)  # again, with the file sizes in config.json and the card (same tensor files)
    return copy.deepcopy(report)


def format_report(report: dict[str, Any], out: Path) -> str:
    """The report as the lines ``sweet-hub fit`` prints."""
    lines = [f"Fitted {report['source']} ({report['source_size']}, {report['source_params']:,} parameters) in {report['seconds']} s "
             f"at ranks {report['ranks']} -> {out}"]
    lines.append("relative reconstruction error: " + ", ".join(f"{k} {v:.2e}" for k, v in report["errors"].items()))
    if "knn" in report and "fitted" in report["knn"]:
        k = report["knn"]
        lines.append(f"k-NN ({k['protocol']}): source {k.get('source', float('nan')):.2f}%, fitted {k['fitted']:.2f}%")
    lines.append("files: " + ", ".join(f"{n} {b / 2**20:.1f} MB" for n, b in report["file_bytes"].items()))
    lines.append(f"load any size: timm.create_model('sweet_vit', depth=L, width=D, pretrained=True, "
                 f"pretrained_cfg_overlay=dict(file='{out}'))")
    return "\n".join(lines)


def parse_anchors(text: str | None) -> list[tuple[int, int]]:
    from .config import parse_size

    return [parse_size(part) for part in text.split(",") if part.strip()] if text else []


def parse_model_args(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they can be: numbers, true, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FitError(f"--model-args takes key=value pairs (e.g. depth=8 embed_dim=192), got '{pair}'.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out

