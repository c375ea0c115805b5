"""How the few-label fine-tuning protocol answers to the scale of the pooled features.

    python benchmarks/finetune_scale.py [--sizes 4x64 8x192 10x512] [--scales 1 2 3 4] [--random-scales 1 3]
    python benchmarks/finetune_scale.py --head probe --scales 1 --random-scales 1 --merge   # add warm-started heads

The fine-tuning protocol (600 labels, 100 AdamW steps at lr 5e-4, a fresh linear head; the
README's fine-tuning column) starts every model from a new head. Under AdamW a head's logits move
in proportion to the scale of the features it reads, so that scale sets how fast the head learns
against how far the backbone drifts while the head is still random. Self-supervised pre-training
leaves the scale free (the projection head reads the features and absorbs any factor), so a
template may ship any of them. This multiplies the final LayerNorm's weight and bias (every
pooled feature) by each factor and fine-tunes, for the template and for timm's random init,
on the validation protocol: the labelled images are drawn from the memory images and the queries
are other train images, never the test split. k-NN (cosine) and the linear probe (standardized
features) do not change with the factor. ``--head probe`` starts the head at the linear probe of
the frozen features on the same labelled images instead (linear probing, then fine-tuning), which
takes the head's speed out of the comparison; ``--merge`` keeps the other rows of ``--out``.
Writes benchmarks/results/finetune_scale.json and a plot.
"""

from __future__ import annotations

import argparse
import copy
import json
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


def finetune_scores(model, factor: float, protocol, cfg, steps: int, seeds: list[int], head: str = "fresh") -> dict[str, Any]:
    from training.evaluate import finetune_seed_scores

    scores = finetune_seed_scores(scaled(model, factor), protocol, cfg.mean, cfg.std, steps, seeds, head_init=head)
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
    parser.add_argument("--head", choices=["fresh", "probe"], default="fresh",
                        help="the new head at timm's init (the README's protocol) or at the frozen features' linear probe")
    add_validation_arguments(parser)  # the labelled images are drawn from the memory bank
    parser.add_argument("--out", default=str(RESULTS / "finetune_scale.json"))
    parser.add_argument("--merge", action="store_true", help="keep the rows of --out this run does not measure")
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
                       "scale": factor, "head": args.head,
                       **finetune_scores(model, factor, protocol, cfg, args.steps, args.seeds, args.head)}
                print(f"{spec:>7} {init:<12} x{factor:<4g} {args.head} head: fine-tuned {row['mean']:5.2f} +- {row['std']:.2f}",
                      flush=True)
                rows.append(row)
    result = {"command": command("finetune_scale.py", argv), "template": label, "protocol": protocol.description,
              "steps": args.steps, "seeds": args.seeds, "torch_threads": torch.get_num_threads(), "rows": rows}
    if args.merge:
        result = merged(result, Path(args.out))
    save_result(result, args.out, plot)
    return result


def row_key(row: dict[str, Any]) -> tuple:
    return row["size"], row["init"], row["scale"], row.get("head", "fresh")


def merged(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """``result`` with the rows of an earlier output it does not measure again; refused across protocols or seeds,
    whose numbers would not compare."""
    if not path.is_file():
        return result
    earlier = json.loads(path.read_text())
    for key in ("protocol", "steps", "seeds", "template"):
        if earlier.get(key) != result[key]:
            raise SystemExit(f"--merge: {path} was measured with another {key} ({earlier.get(key)!r}, now {result[key]!r}); "
                             f"use the same settings or another --out")
    measured = {row_key(r) for r in result["rows"]}
    commands = earlier.get("commands", [earlier["command"]])
    return {**result, "commands": [*commands, result["command"]],
            "rows": [r for r in earlier["rows"] if row_key(r) not in measured] + result["rows"]}


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.6))
    for i, spec in enumerate(dict.fromkeys(r["size"] for r in result["rows"])):
        for init, style in (("template", "-o"), ("random init", "--s")):  # one colour per size, dashed: random init
            rows = [r for r in result["rows"] if r["size"] == spec and r["init"] == init and r.get("head", "fresh") == "fresh"]
            if rows:
                ax.errorbar([r["scale"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows], fmt=style,
                            color=f"C{i}", capsize=3, label=f"{spec} {init}")
            warm = [r for r in result["rows"] if r["size"] == spec and r["init"] == init and r.get("head") == "probe"]
            if warm:  # a warm-started head: hollow markers just left of its scale
                ax.errorbar([r["scale"] - 0.12 for r in warm], [r["mean"] for r in warm], yerr=[r["std"] for r in warm],
                            fmt="o" if init == "template" else "s", mfc="none", color=f"C{i}", capsize=3,
                            label=f"{spec} {init}, probe head")
    ax.set_xticks(sorted({r["scale"] for r in result["rows"]}))
    finish(fig, ax, path, legend_loc="outside", xlabel="pooled-feature scale (final norm weight and bias x factor)",
           ylabel="fine-tuned accuracy (%), validation", title=f"few-label fine-tuning ({result['protocol']['finetune_labels']} "
           f"labels, {result['steps']} steps) vs feature scale")


if __name__ == "__main__":
    main()
