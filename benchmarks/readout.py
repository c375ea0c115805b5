"""Where the k-NN of a template is lost: pooled features vs the final tokens they are pooled from.

    python benchmarks/readout.py [--template PATH_OR_REPO] [--sizes 4x64 8x192 12x384]

The k-NN protocol of every other table reads the *pooled* pre-logit features (what timm's
``forward_head(pre_logits=True)`` returns, what a classifier head sees). This script reads the
same models six ways, on the validation protocol (memory = 5000 train images, queries = 2000
other train images; the test split is never read):

- ``pooled``: the protocol's features,
- ``pooled_centred``: the same minus their mean over the memory bank,
- ``tokens``: the final patch tokens after the last norm, flattened (N x tokens*width),
- ``tokens_centred``: the same, centred,
- ``tokens_max``: the final tokens (after the last norm) max-pooled, width numbers like the protocol's,
- ``regions``: the final tokens averaged over each quarter of the token grid (2x2 regions, 4 x width),
  the coarsest read-out that keeps where things are,

beside raw and mean-centred pixels and timm's random init read the same ways. If tokens beat
pixels and pooled features do not, the backbone holds the information and pooling discards it:
the lever is the pre-training objective or the read-out, not capacity; ``tokens_max`` and ``regions``
say whether another pooling of the same tokens (a different ``global_pool``, or a coarse layout)
would recover it. Writes
benchmarks/results/readout.json and a plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    add_template_argument,
    add_validation_arguments,
    command,
    grouped_bars,
    load_template,
    save_result,
    validation_protocol,
)

READOUTS = ("pooled", "pooled_centred", "tokens", "tokens_centred", "tokens_max", "regions")


def readouts(model, images, mean, std, batch_size: int = 500) -> dict[str, Any]:
    """The pooled features, the flattened final patch tokens, their max and their 2x2-region means, of uint8 ``images``."""
    import torch
    import torch.nn.functional as F

    from sweet_hub.data import normalize

    model.eval()
    out: dict[str, list] = {"pooled": [], "tokens": [], "tokens_max": [], "regions": []}
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = model.forward_features(normalize(images[i:i + batch_size], mean, std))
            patches = x[:, model.num_prefix_tokens:]
            side = int(patches.shape[1] ** 0.5)
            grid = patches.transpose(1, 2).reshape(len(patches), -1, side, side)  # B, width, rows, cols (row-major tokens)
            out["pooled"].append(model.forward_head(x, pre_logits=True))
            out["tokens"].append(patches.flatten(1))
            out["tokens_max"].append(patches.amax(1))
            out["regions"].append(F.adaptive_avg_pool2d(grid, 2).flatten(2).transpose(1, 2).flatten(1))  # region-major
    return {k: torch.cat(v) for k, v in out.items()}


def scores(memory: dict[str, Any], queries: dict[str, Any], memory_labels, query_labels) -> dict[str, float]:
    """k-NN (the protocol's: cosine, k=20, T=0.07) of each read-out; pooled features and tokens also centred on the memory bank."""
    from sweet_hub.knn import knn_accuracy

    out = {}
    for name in ("pooled", "tokens"):
        m, q = memory[name].float(), queries[name].float()
        mu = m.mean(0)
        out[name] = round(knn_accuracy(m, memory_labels, q, query_labels), 2)
        out[f"{name}_centred"] = round(knn_accuracy(m - mu, memory_labels, q - mu, query_labels), 2)
    for name in ("tokens_max", "regions"):
        out[name] = round(knn_accuracy(memory[name].float(), memory_labels, queries[name].float(), query_labels), 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_template_argument(parser)
    parser.add_argument("--sizes", nargs="+", default=["4x64", "8x192", "12x384"], help="DEPTHxWIDTH")
    add_validation_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS / "readout.json"))
    args = parser.parse_args(argv)

    import torch

    from sweet_hub.config import parse_size
    from training.evaluate import pixel_baselines
    from training.report import random_vit

    template, label = load_template(args.template)
    cfg = template.config
    protocol = validation_protocol(cfg, args)
    memory, queries = protocol.train, protocol.test
    rows = []
    for spec in args.sizes:
        depth, width = parse_size(spec)
        for init, model in (("template", template.materialize(depth, width)), ("random init", random_vit(cfg, depth, width))):
            row = {"size": spec, "init": init, "scalers": template.scaler_source(depth, width) if init == "template" else "-",
                   **scores(readouts(model, memory.images, cfg.mean, cfg.std), readouts(model, queries.images, cfg.mean, cfg.std),
                            memory.labels, queries.labels)}
            rows.append(row)
            print(f"{spec:>7} {init:<12} " + "  ".join(f"{k} {row[k]:5.1f}" for k in READOUTS), flush=True)
    result = {"command": command("readout.py", argv), "template": label,
              "protocol": protocol.description, "pixels": {k: round(v, 2) for k, v in pixel_baselines(protocol).items()},
              "torch_threads": torch.get_num_threads(), "rows": rows}
    save_result(result, args.out, plot)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    rows = [r for r in result["rows"] if r["init"] == "template"]
    grouped_bars(path, [r["size"] for r in rows], {k: [r[k] for r in rows] for k in READOUTS},
                 hline=("mean-centred pixels", result["pixels"]["centred_pixels_knn"]), legend_loc="lower right",
                 xlabel="size", ylabel="k-NN accuracy (%)", title="Template features: pooled vs final tokens (validation)")


if __name__ == "__main__":
    main()
