"""How the few-label fine-tuning protocol answers to the scale of the pooled features.

    python benchmarks/finetune_scale.py [--sizes 4x64 8x192 10x512] [--scales 1 2 3 4] [--random-scales 1 3]

The fine-tuning protocol (600 labels, 100 AdamW steps at lr 5e-4, a fresh linear head; the
README's fine-tuning column) starts every model from a new head. Under AdamW a head's logits move
in proportion to the scale of the features it reads, so that scale sets how fast the head learns
against how far the backbone drifts while the head is still random. Self-supervised pre-training
leaves the scale free (the projection head reads the features and absorbs any factor), so a
template may ship any of them. This multiplies the final LayerNorm's weight and bias (every
pooled feature) by each factor and fine-tunes, for the template and for timm's random init,
on the validation protocol: the labelled images are drawn from the memory images and the queries
are other train images, never the test split. k-NN (cosine) and the linear probe (standardized
features) do not change with the factor. Writes benchmarks/results/finetune_scale.json and a plot.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    add_template_argument,
    add_validation_arguments,
    command,
    finish,
    load_template,
    pyplot,
    save_result,
    validation_protocol,
)


def scaled(model, factor: float):
    """A copy of ``model`` whose pooled features are ``factor`` times larger (final norm weight and bias)."""
    import torch

    model = copy.deepcopy(model)
    with torch.no_grad():
        model.norm.weight.mul_(factor)
        model.norm.bias.mul_(factor)
    return model


def finetune_scores(model, factor: float, protocol, cfg, steps: int, seeds: list[int]) -> dict[str, Any]:
    from training.evaluate import finetune_seed_scores

    scores = finetune_seed_scores(scaled(model, factor), protocol, cfg.mean, cfg.std, steps, seeds)
    return {"mean": round(statistics.mean(scores), 2), "std": round(statistics.stdev(scores), 2) if len(scores) > 1 else 0.0,
            "scores": [round(s, 2) for s in scores]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_template_argument(parser)
    parser.add_argument("--sizes", nargs="+", default=["4x64", "8x192", "10x512"], help="DEPTHxWIDTH")
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 3.0, 4.0], help="factors for the template")
    parser.add_argument("--random-scales", nargs="+", type=float, default=[1.0, 3.0], help="factors for random init")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps (the README's protocol: 100)")
    parser.add_argument("--labels", type=int, default=600, help="labelled images (the README's protocol: 600)")
    add_validation_arguments(parser)  # the labelled images are drawn from the memory bank
    parser.add_argument("--out", default=str(RESULTS / "finetune_scale.json"))
    args = parser.parse_args(argv)
    if any(f <= 0 for f in [*args.scales, *args.random_scales]):
        parser.error("--scales and --random-scales must be positive factors")

    import torch

    from sweet_hub.config import parse_size
    from training.report import random_vit

    template, label = load_template(args.template)
    cfg = template.config
    protocol = validation_protocol(cfg, args, finetune_labels=args.labels)
    rows = []
    for spec in args.sizes:
        depth, width = parse_size(spec)
        for init, model, factors in (("template", template.materialize(depth, width), args.scales),
                                     ("random init", random_vit(cfg, depth, width), args.random_scales)):
            for factor in factors:
                row = {"size": spec, "init": init, "scalers": template.scaler_source(depth, width) if init == "template" else "-",
                       "scale": factor,
                       **finetune_scores(model, factor, protocol, cfg, args.steps, args.seeds)}
                print(f"{spec:>7} {init:<12} x{factor:<4g} fine-tuned {row['mean']:5.2f} +- {row['std']:.2f}", flush=True)
                rows.append(row)
    result = {"command": command("finetune_scale.py", argv), "template": label, "protocol": protocol.description,
              "steps": args.steps, "seeds": args.seeds, "torch_threads": torch.get_num_threads(), "rows": rows}
    save_result(result, args.out, plot)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, spec in enumerate(dict.fromkeys(r["size"] for r in result["rows"])):
        for init, style in (("template", "-o"), ("random init", "--s")):  # one colour per size, dashed: random init
            rows = [r for r in result["rows"] if r["size"] == spec and r["init"] == init]
            if rows:
                ax.errorbar([r["scale"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows], fmt=style,
                            color=f"C{i}", capsize=3, label=f"{spec} {init}")
    ax.set_xticks(sorted({r["scale"] for r in result["rows"]}))
    finish(fig, ax, path, legend_loc="lower right", xlabel="pooled-feature scale (final norm weight and bias x factor)",
           ylabel="fine-tuned accuracy (%), validation", title=f"few-label fine-tuning ({result['protocol']['finetune_labels']} "
           f"labels, {result['steps']} steps) vs feature scale")


if __name__ == "__main__":
    main()
