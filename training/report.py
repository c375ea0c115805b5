"""k-NN evaluation of a trained method at several sizes, and its Markdown table for model cards."""

from __future__ import annotations

from typing import Any

import timm
import torch

from sweet_hub.config import TemplateConfig, format_size, vit_args
from training.config import TrainConfig
from training.evaluate import EvalProtocol, evaluate_model, pixel_baselines
from training.methods import PretrainMethod

__all__ = ["evaluate_sizes", "metrics_markdown", "random_vit"]


def random_vit(tcfg: TemplateConfig, depth: int, width: int, seed: int = 0) -> torch.nn.Module:
    """timm's default random init of the architecture a template materializes at (depth, width)."""
    torch.manual_seed(seed)
    return timm.create_model("vit_base_patch16_224", pretrained=False, **vit_args(tcfg, depth, width))


def evaluate_sizes(cfg: TrainConfig, method: PretrainMethod) -> dict[str, Any]:
    """k-NN of the method's models at its own sizes plus ``cfg.final_eval.sizes``, with random init
    of the same sizes and pixels as references."""
    eval_cfg = cfg.final_eval
    tcfg = cfg.template_config()
    protocol = EvalProtocol(cfg.data, tcfg.img_size, tcfg.in_chans, eval_cfg.train_size, eval_cfg.test_size, 1, cfg.seed,
                            holdout=eval_cfg.holdout)
    sizes = list(dict.fromkeys([tuple(s) for s in method.sizes] + [tuple(s) for s in eval_cfg.sizes or []]))
    rows = []
    for depth, width in sizes:
        model = method.model_for(depth, width)
        if model is None:
            rows.append(dict(depth=depth, width=width, available=False))
            continue
        row = dict(depth=depth, width=width, available=True, params=sum(p.numel() for p in model.parameters()),
                   init=method.describe_size(depth, width))
        metrics = evaluate_model(model, protocol, tcfg.mean, tcfg.std, probe=eval_cfg.probe)
        row["knn"] = round(metrics["knn"], 2)
        if eval_cfg.probe:
            row["linear_probe"] = round(metrics["linear_probe"], 2)
        if eval_cfg.random_init:
            row["knn_random"] = round(evaluate_model(random_vit(tcfg, depth, width), protocol, tcfg.mean, tcfg.std)["knn"], 2)
        rows.append(row)
    out: dict[str, Any] = {"protocol": {**protocol.description, "metric": "k-NN (cosine, k=20, T=0.07) top-1 %"}, "sizes": rows}
    if eval_cfg.raw_pixels:
        out.update({k: round(v, 2) for k, v in pixel_baselines(protocol).items()})
    return out


def metrics_markdown(results: dict[str, Any]) -> str:
    p = results["protocol"]
    lines = [
        f"k-NN accuracy (cosine, k=20, T=0.07) of frozen features; {p['data']}: {p['train']} train / {p['test']} test images.",
        "",
        "| size (depth x width) | params | scalers | k-NN | k-NN random init |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results["sizes"]:
        if not r.get("available", True):
            lines.append(f"| {format_size(r['depth'], r['width'])} | - | not available | - | - |")
            continue
        lines.append(f"| {format_size(r['depth'], r['width'])} | {r['params'] / 1e6:.2f}M | {r['init']} | {r['knn']:.1f} | "
                     f"{r.get('knn_random', float('nan')):.1f} |")
    if "raw_pixels_knn" in results:
        lines += ["", f"Raw pixels, same protocol: {results['raw_pixels_knn']:.1f}%."]
    return "\n".join(lines)
