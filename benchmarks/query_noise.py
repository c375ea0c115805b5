"""How much of one k-NN number is the draw of its queries, and how much held-out train queries flatter a template.

    python benchmarks/query_noise.py [--template PATH_OR_REPO] [--sizes 4x64 8x192 12x384] [--blocks 5]

Every table scores k-NN with 2000 queries. Two questions that decide how to read them:

- **Query draw.** The test protocol's 2000 test images are one draw. The same memory bank (the
  protocol's 5000 train images) is read against ``--blocks`` disjoint 2000-image blocks of the
  test split: their spread is the noise of one number, their mean what the whole split says.
- **Validation bias.** The validation protocol's queries are train images that self-supervised
  pre-training has seen (without labels); pixels and random init never saw anything. The same
  models against ``--blocks`` blocks of held-out train images: held-out minus test is how much
  the validation protocol flatters a pre-trained model over what it does on unseen images.

Nothing here chooses a recipe or a template (the test split is only measured, as in every
table). Writes benchmarks/results/query_noise.json and a plot.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import RESULTS, add_template_argument, command, finish, load_template, pyplot, save_result

QUERY_SETS = ("test", "held_out_train")


def query_blocks(images, labels, blocks: int, size: int, seed: int, exclude=None) -> list[tuple[Any, Any]]:
    """``blocks`` disjoint random blocks of ``size`` images, none of them in ``exclude`` (indices, or None)."""
    import torch

    keep = torch.ones(len(images), dtype=torch.bool)
    if exclude is not None:
        keep[exclude] = False
    pool = keep.nonzero().squeeze(1)
    if blocks * size > len(pool):
        raise SystemExit(f"--blocks {blocks} x --test-size {size} needs {blocks * size} images; only {len(pool)} are free.")
    order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    return [(images[i], labels[i]) for i in order[:blocks * size].split(size)]


def block_scores(features: Callable, memory, memory_labels, protocol_queries, sets: dict[str, list]) -> dict[str, Any]:
    """k-NN of one feature extractor on the protocol's queries and on every block of every query set."""
    from sweet_hub.knn import knn_accuracy

    bank = features(memory)
    out: dict[str, Any] = {"protocol": round(knn_accuracy(bank, memory_labels, features(protocol_queries[0]), protocol_queries[1]), 2)}
    for name, blocks in sets.items():
        accs = [knn_accuracy(bank, memory_labels, features(x), y) for x, y in blocks]
        out[name] = {"blocks": [round(a, 2) for a in accs], "mean": round(statistics.mean(accs), 2),
                     "std": round(statistics.stdev(accs), 2) if len(accs) > 1 else 0.0}
    out["validation_bias"] = round(out["held_out_train"]["mean"] - out["test"]["mean"], 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_template_argument(parser)
    parser.add_argument("--sizes", nargs="+", default=["4x64", "8x192", "12x384"], help="DEPTHxWIDTH")
    parser.add_argument("--blocks", type=int, default=5, help="disjoint query blocks per set (5 x 2000 = the whole test split)")
    parser.add_argument("--train-size", type=int, default=5000, help="memory bank: the test protocol's train images")
    parser.add_argument("--test-size", type=int, default=2000, help="queries per block, as in the test protocol")
    parser.add_argument("--seed", type=int, default=0, help="seed of the blocks (the protocol's own subsets stay fixed)")
    parser.add_argument("--out", default=str(RESULTS / "query_noise.json"))
    args = parser.parse_args(argv)

    import torch

    from sweet_hub.config import parse_size
    from sweet_hub.data import load_image_tensors
    from training.evaluate import EvalProtocol, extract_features, pixel_vectors
    from training.report import random_vit

    template, label = load_template(args.template)
    cfg = template.config
    protocol = EvalProtocol("fashion_mnist", cfg.img_size, cfg.in_chans, args.train_size, args.test_size, 1)  # the test protocol
    full_train = load_image_tensors("fashion_mnist", "train", cfg.img_size, cfg.in_chans)
    full_test = load_image_tensors("fashion_mnist", "test", cfg.img_size, cfg.in_chans)
    memory_index = full_train.subset_index(args.train_size, seed=0)  # the images EvalProtocol's memory bank took
    sets = {"test": query_blocks(full_test.images, full_test.labels, args.blocks, args.test_size, args.seed),
            "held_out_train": query_blocks(full_train.images, full_train.labels, args.blocks, args.test_size, args.seed,
                                           exclude=memory_index)}
    memory, memory_labels = protocol.train.images, protocol.train.labels
    protocol_queries = (protocol.test.images, protocol.test.labels)
    pixel_mean = pixel_vectors(memory).mean(0)
    extractors: list[tuple[str, str, Callable]] = [
        ("pixels", "raw", pixel_vectors),
        ("pixels", "mean-centred", lambda x: pixel_vectors(x) - pixel_mean),
    ]
    for spec in args.sizes:
        depth, width = parse_size(spec)
        for init, model in (("template", template.materialize(depth, width)), ("random init", random_vit(cfg, depth, width))):
            model.eval()
            extractors.append((spec, init, lambda x, m=model: extract_features(m, x, cfg.mean, cfg.std)))
    rows = []
    for size, init, features in extractors:
        row = {"size": size, "init": init, **block_scores(features, memory, memory_labels, protocol_queries, sets)}
        rows.append(row)
        print(f"{size:>7} {init:<12} protocol {row['protocol']:5.1f}  test {row['test']['mean']:5.2f} ± {row['test']['std']:.2f}  "
              f"held-out train {row['held_out_train']['mean']:5.2f} ± {row['held_out_train']['std']:.2f}  "
              f"bias {row['validation_bias']:+.2f}", flush=True)
    result = {"command": command("query_noise.py", argv), "template": label, "protocol": protocol.description,
              "blocks": args.blocks, "block_size": args.test_size, "torch_threads": torch.get_num_threads(), "rows": rows}
    save_result(result, args.out, plot)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Per model: mean ± std over the blocks of each query set, and the protocol's one draw."""
    plt = pyplot()
    rows = [r for r in result["rows"] if r["init"] != "random init"]  # ~15 points lower: they would flatten the rest
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(rows)), 4.5))
    xs = range(len(rows))
    for offset, name, label in ((-0.15, "test", "test blocks"), (0.15, "held_out_train", "held-out train blocks")):
        ax.errorbar([x + offset for x in xs], [r[name]["mean"] for r in rows], yerr=[r[name]["std"] for r in rows],
                    fmt="o", capsize=4, label=f"{label} (mean ± std)")
    ax.scatter([x - 0.15 for x in xs], [r["protocol"] for r in rows], marker="x", color="black", zorder=3,
               label="the protocol's 2000 test images")
    ax.set_xticks(list(xs), [f"{r['size']}\n{r['init']}" for r in rows], fontsize=8)
    finish(fig, ax, path, legend_loc="lower right", grid_axis="y", ylabel="k-NN accuracy (%)",
           title=f"One k-NN number: {result['blocks']} query draws of {result['block_size']}")


if __name__ == "__main__":
    main()
