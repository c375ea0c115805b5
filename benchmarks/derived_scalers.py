"""Scalers for sizes that were never trained: derivation rules, and derived vs learned.

    python benchmarks/derived_scalers.py [--template PATH] [--sizes 6x96 8x256 ...]

On one template (default: the bundled one), k-NN of frozen features at unseen sizes for
- derived scalers with each combination of the two corrections of ``derive_scalers``
  (depth_rescale: residual branches shrink by L_src/L; width_rescale: V shrinks by sqrt(D_src/D)),
  and with ``derivation='select'`` (evenly spaced layers, first or duplicated channels: the rule of
  fitted templates),
- learned scalers (template frozen, ``--images`` unlabeled images, ``--steps`` steps; the
  template's own stored learned scalers where it ships them, learned here otherwise),
- timm's random init of the same architecture.
The template's config.json chooses the derivation used by ``create_model``; this is the
measurement behind that choice. Writes benchmarks/results/derived_scalers.json and .png.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import time

from common import RESULTS, add_template_argument, command, grouped_bars, load_template, save_result

DEFAULT_SIZES = ["6x96", "6x160", "8x256", "10x256", "3x192", "12x384", "10x512"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_template_argument(parser)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--images", type=int, default=1000, help="unlabeled images for learned scalers")
    parser.add_argument("--steps", type=int, default=300, help="steps for learned scalers")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--out", default=str(RESULTS / "derived_scalers.json"))
    args = parser.parse_args(argv)

    from sweet_hub.config import size_key
    from training.data import load_image_tensors
    from training.evaluate import EvalProtocol, evaluate_model, raw_pixel_knn
    from training.learn_scalers import learn_scalers
    from training.report import random_vit

    shipped, label = load_template(args.template)
    cfg = shipped.config
    base = copy.deepcopy(shipped)  # every non-anchor size derived again; the shipped learned scalers are the 'learned' column
    for key, info in list(shipped.scaler_info.items()):
        if info["source"] != "anchor":
            base.remove_scalers(info["depth"], info["width"])
    protocol = EvalProtocol("fashion_mnist", cfg.img_size, cfg.in_chans, args.train_size, args.test_size, 1)
    unlabeled = load_image_tensors("fashion_mnist", "train", cfg.img_size, cfg.in_chans).subset(args.images, seed=123)
    rules = list(itertools.product([False, True], repeat=2))
    variants = {}
    for depth_rescale, width_rescale in rules:
        variant = copy.deepcopy(base)
        variant.config = dataclasses.replace(cfg, depth_rescale=depth_rescale, width_rescale=width_rescale)
        variants[f"derived (depth_rescale={depth_rescale}, width_rescale={width_rescale})"] = variant
    if cfg.derivation != "select":  # the rule fitted templates use: layer and channel selection of the nearest anchor
        variant = copy.deepcopy(base)
        variant.config = dataclasses.replace(cfg, derivation="select")
        variants["derived (select)"] = variant
    rows = []
    for spec in args.sizes:
        depth, width = (int(v) for v in spec.split("x"))
        row = {"size": spec, "source": base.scaler_source(depth, width)}
        for name, variant in variants.items():
            row[name] = round(evaluate_model(variant.materialize(depth, width), protocol, cfg.mean, cfg.std)["knn"], 2)
        if shipped.scaler_source(depth, width) == "learned":  # stored with the template: evaluated as shipped
            learner, facts = shipped, shipped.scaler_info[size_key(depth, width)]
            row["learned_from"] = "stored"
        else:
            learner = copy.deepcopy(base)
            start = time.perf_counter()
            facts = learn_scalers(learner, depth, width, unlabeled.images, steps=args.steps, progress=False)
            facts["seconds"] = round(time.perf_counter() - start, 1)
            row["learned_from"] = "this run"
        row["learned"] = round(evaluate_model(learner.materialize(depth, width), protocol, cfg.mean, cfg.std)["knn"], 2)
        row["learn_seconds"] = facts["seconds"]
        row["distill_loss"] = [facts["distill_loss_before"], facts["distill_loss_after"]]
        row["random"] = round(evaluate_model(random_vit(cfg, depth, width), protocol, cfg.mean, cfg.std)["knn"], 2)
        rows.append(row)
        print(" | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    result = {"command": command("derived_scalers.py", argv), "template": label,
              "configured": {"depth_rescale": cfg.depth_rescale, "width_rescale": cfg.width_rescale},
              "protocol": protocol.description, "raw_pixels_knn": round(raw_pixel_knn(protocol), 2),
              "learned": {"images": args.images, "steps": args.steps}, "variants": list(variants) + ["learned", "random"], "sizes": rows}
    result["mean"] = {name: round(sum(r[name] for r in rows) / len(rows), 2) for name in result["variants"]}
    print("\n".join(f"  mean k-NN {v:6.2f}  {k}" for k, v in result["mean"].items()))
    save_result(result, args.out, plot)
    return result


def plot(result: dict, path) -> None:
    rows = result["sizes"]
    grouped_bars(path, [r["size"] for r in rows], {name: [r[name] for r in rows] for name in result["variants"]},
                 hline=("raw pixels", result["raw_pixels_knn"]), xlabel="unseen size (depth x width)", ylabel="k-NN (%)",
                 title="Scalers for unseen sizes: derivation rules vs learned")


if __name__ == "__main__":
    main()
