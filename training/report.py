"""k-NN evaluation of a trained method at several sizes, and its Markdown table for model cards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch

from sweet_hub.config import TemplateConfig, format_size, vit_args
from training.config import TrainConfig
from training.evaluate import EvalProtocol, evaluate_model, finetune_over_seeds, pixel_baselines
from training.methods import PretrainMethod

__all__ = ["evaluate_models", "evaluate_sizes", "metrics_markdown", "random_vit"]


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
    return evaluate_models(sizes, method.model_for, method.describe_size, tcfg, protocol, probe=eval_cfg.probe,
                           random_init=eval_cfg.random_init, pixels=eval_cfg.raw_pixels)


def evaluate_models(sizes: list[tuple[int, int]], model_for: Callable[[int, int], torch.nn.Module | None],
                    describe: Callable[[int, int], str], tcfg: TemplateConfig, protocol: EvalProtocol, probe: bool = False,
                    random_init: bool = True, pixels: bool = True, finetune_steps: int = 0, seeds: list[int] | None = None,
                    progress: bool = False, known_random: dict[tuple[int, int], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Rows of metrics of ``model_for(depth, width)`` at each size (None: not available), each
    beside timm's random init of the same size read the same way, and the pixel baselines.

    ``finetune_steps`` > 0 adds few-label fine-tuning on ``protocol.finetune_train`` (mean/std over
    ``seeds``) of the model and of its random init. ``known_random`` maps a size to its random-init
    columns (keys ending in ``_random``) measured earlier with the same protocol: random init does not
    depend on the template, and reading it costs as much as reading the template's model."""
    from tqdm.auto import tqdm

    seeds = list(seeds or [0])
    known_random = known_random or {}
    rows = []
    for depth, width in tqdm(sizes, desc="evaluate sizes", disable=not progress):
        model = model_for(depth, width)
        if model is None:
            rows.append(dict(depth=depth, width=width, available=False))
            continue
        row = dict(depth=depth, width=width, available=True, params=sum(p.numel() for p in model.parameters()),
                   init=describe(depth, width))
        measure_random = random_init and (depth, width) not in known_random
        references = [("", model)] + ([("_random", random_vit(tcfg, depth, width))] if measure_random else [])
        if random_init and not measure_random:
            row.update(known_random[(depth, width)])
        for suffix, net in references:
            metrics = evaluate_model(net, protocol, tcfg.mean, tcfg.std, probe=probe)
            row[f"knn{suffix}"] = round(metrics["knn"], 2)
            if probe:
                row[f"linear_probe{suffix}"] = round(metrics["linear_probe"], 2)
            if finetune_steps:
                tuned = finetune_over_seeds(net, protocol, tcfg.mean, tcfg.std, finetune_steps, seeds)
                row.update({f"{k}{suffix}": v for k, v in tuned.items()})
        rows.append(row)
    out: dict[str, Any] = {"protocol": {**protocol.description, "metric": "k-NN (cosine, k=20, T=0.07) top-1 %"}, "sizes": rows}
    if finetune_steps:
        out["protocol"]["finetune"] = {"labels": protocol.description["finetune_labels"], "steps": finetune_steps, "seeds": seeds}
    if pixels:
        out.update({k: round(v, 2) for k, v in pixel_baselines(protocol).items()})
    return out


def metrics_markdown(results: dict[str, Any]) -> str:
    """The model card's Evaluation section: one row per size, with the linear probe and
    fine-tuning columns when they were measured, and the pixel baselines under the table."""
    p = results["protocol"]
    rows = [r for r in results["sizes"] if r.get("available", True)]
    probe = any("linear_probe" in r for r in rows)
    tuned = any("finetune_mean" in r for r in rows)
    lines = [f"k-NN accuracy (cosine, k=20, T=0.07) of frozen features; {p['data']}: {p['train']} train / {p['test']} test images."]
    if probe:
        lines[0] += " Linear probe: logistic regression on the same frozen features."
    if tuned:
        f = p["finetune"]
        lines[0] += (f" Fine-tune: the whole model with a new head, {f['labels']} labelled images, {f['steps']} steps "
                     f"(mean ± std over {len(f['seeds'])} seeds).")
    if results.get("scope"):
        lines[0] = f"{results['scope']} {lines[0]}"
    header = ["size (depth x width)", "params", "scalers", "k-NN", *(["linear probe"] if probe else []),
              *(["fine-tune"] if tuned else []), "k-NN random init", *(["probe random init"] if probe else []),
              *(["fine-tune random init"] if tuned else [])]
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results["sizes"]:
        if not r.get("available", True):
            lines.append(f"| {format_size(r['depth'], r['width'])} | - | not available |" + " - |" * (len(header) - 3))
            continue
        cells = [format_size(r["depth"], r["width"]), f"{r['params'] / 1e6:.2f}M", r["init"], _pct(r.get("knn"))]
        cells += [_pct(r.get("linear_probe"))] if probe else []
        cells += [_spread(r, "finetune")] if tuned else []
        cells += [_pct(r.get("knn_random"))]
        cells += [_pct(r.get("linear_probe_random"))] if probe else []
        cells += [_spread(r, "finetune", "_random")] if tuned else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _pixels_line(results)] if "raw_pixels_knn" in results else []
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _spread(row: dict[str, Any], metric: str, suffix: str = "") -> str:
    mean = row.get(f"{metric}_mean{suffix}")
    return "-" if mean is None else f"{mean:.1f} ± {row.get(f'{metric}_std{suffix}', 0.0):.1f}"


def _pixels_line(results: dict[str, Any]) -> str:
    """Pixels read the same way: the bar a feature extractor has to clear on this data."""
    parts = [f"k-NN {results['raw_pixels_knn']:.1f}% raw"]
    if "centred_pixels_knn" in results:
        parts.append(f"{results['centred_pixels_knn']:.1f}% mean-centred")
    line = "Pixels, same protocol: " + ", ".join(parts)
    if "pixels_linear_probe" in results:
        line += f"; linear probe {results['pixels_linear_probe']:.1f}%"
    return line + "."
