"""Would a learned attention pool be a better read-out than the mean of the tokens? Measured on frozen backbones.

    python benchmarks/attention_pool.py [--template PATH_OR_REPO] [--sizes 4x64 8x192] [--steps 300]

Flattened, a template's final tokens score above centred pixels on k-NN while their mean (the
protocol's pooled features, ``global_pool='avg'``) does not (``readout.py``); max-pooling and 2x2
region means do not close the gap. The read-out left is a *learned* pool: timm's
``AttentionPoolLatent`` (``global_pool='map'``, a latent query attending over the tokens, then an
MLP), which would put new factors in the template. Before changing the artefact format this
script asks whether it can pay: on each materialized model, frozen, it trains

- ``map``: an attention pool over the final tokens, and
- ``avg_mlp``: the control, a residual MLP (same hidden width) on the mean of the tokens, so a gain
  of ``map`` is the pooling's and not any trained layer's,

each under a fresh projection head with the recipe's self-supervised objective (two global crops of
0.5-1 of the area, flip and jitter, InfoNCE at T=0.2, AdamW with warmup and cosine decay; the train
split's images, no labels), then reads their outputs with the protocol's k-NN beside the mean-pooled
features. Validation protocol (memory = 5000 train images, queries = 2000 other train images); the
test split is never read. If ``map`` does not beat ``pooled`` by more than the control does, a learned
pool trained with this objective is not the lever. Writes benchmarks/results/attention_pool.json and a plot.
"""

from __future__ import annotations

import argparse
import time
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

READOUTS = ("pooled", "avg_mlp", "map")


def build_pool(kind: str, width: int, num_heads: int):
    """The trainable read-out of final tokens (B, N, width) -> (B, width)."""
    import torch
    from timm.layers import AttentionPoolLatent, Mlp
    from torch import nn

    if kind == "map":
        return AttentionPoolLatent(width, num_heads=num_heads, mlp_ratio=4.0, norm_layer=nn.LayerNorm)

    class AvgMlp(nn.Module):
        """Mean of the tokens plus a residual MLP of it (the control of ``map``)."""

        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.mlp = Mlp(width, 4 * width)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = tokens.mean(1)
            return x + self.mlp(self.norm(x))

    return AvgMlp()


def final_tokens(model, images):
    """The final patch tokens (after the last norm) of normalized ``images``, without gradient."""
    import torch

    with torch.no_grad():
        return model.forward_features(images)[:, model.num_prefix_tokens:]


def train_pool(model, kind: str, images, cfg, steps: int, batch_size: int, lr: float, seed: int):
    """A pool of ``kind`` trained on the frozen ``model``'s tokens with the recipe's contrastive objective."""
    import torch
    from timm.scheduler import CosineLRScheduler
    from tqdm.auto import tqdm

    from sweet_hub.data import MultiCropAugment
    from training.selfsup import ProjectionHead, contrastive_loss

    torch.manual_seed(seed)
    pool = build_pool(kind, model.embed_dim, model.embed_dim // cfg.head_dim)
    head = ProjectionHead(model.embed_dim)
    params = [*pool.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    scheduler = CosineLRScheduler(optimizer, t_initial=steps, lr_min=lr * 0.01, warmup_t=max(1, steps // 10), warmup_lr_init=lr * 0.01)
    augment = MultiCropAugment(cfg.img_size, cfg.mean, cfg.std, n_global=2, n_local=0, global_scale=(0.5, 1.0))
    generator = torch.Generator().manual_seed(seed)
    pool.train(), head.train()
    for step in (bar := tqdm(range(steps), desc=f"{kind} {len(model.blocks)}x{model.embed_dim}", dynamic_ncols=True)):
        scheduler.step(step)
        views, _ = augment(images[torch.randint(len(images), (batch_size,), generator=generator)], seed * 1_000_003 + step)
        embeddings = [head(pool(final_tokens(model, v))) for v in views]
        loss = contrastive_loss(embeddings, embeddings, temperature=0.2, same_views=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return pool.eval()


def pooled_readouts(model, pools: dict[str, Any], images, mean, std, batch_size: int = 500) -> dict[str, Any]:
    """The protocol's pooled features and each trained pool's output, of uint8 ``images``."""
    import torch

    from sweet_hub.data import normalize

    model.eval()
    out: dict[str, list] = {"pooled": [], **{k: [] for k in pools}}
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = model.forward_features(normalize(images[i:i + batch_size], mean, std))
            out["pooled"].append(model.forward_head(x, pre_logits=True))
            for kind, pool in pools.items():
                out[kind].append(pool(x[:, model.num_prefix_tokens:]))
    return {k: torch.cat(v).float() for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_template_argument(parser)
    parser.add_argument("--sizes", nargs="+", default=["4x64", "8x192"], help="DEPTHxWIDTH")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each pool")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    add_validation_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS / "attention_pool.json"))
    args = parser.parse_args(argv)

    import torch

    from sweet_hub.config import parse_size
    from sweet_hub.data import load_image_tensors
    from sweet_hub.knn import knn_accuracy
    from training.evaluate import pixel_baselines

    template, label = load_template(args.template)
    cfg = template.config
    protocol = validation_protocol(cfg, args)
    train_images = load_image_tensors("fashion_mnist", "train", cfg.img_size, cfg.in_chans).images
    rows = []
    for spec in args.sizes:
        depth, width = parse_size(spec)
        model = template.materialize(depth, width).requires_grad_(False).eval()
        start = time.perf_counter()
        pools = {kind: train_pool(model, kind, train_images, cfg, args.steps, args.batch_size, args.lr, args.seed)
                 for kind in READOUTS[1:]}
        seconds = time.perf_counter() - start
        memory, queries = (pooled_readouts(model, pools, p.images, cfg.mean, cfg.std) for p in (protocol.train, protocol.test))
        row = {"size": spec, "scalers": template.scaler_source(depth, width), "train_seconds": round(seconds, 1),
               "pool_params": {k: sum(p.numel() for p in pool.parameters()) for k, pool in pools.items()},
               **{k: round(knn_accuracy(memory[k], protocol.train.labels, queries[k], protocol.test.labels), 2) for k in READOUTS}}
        rows.append(row)
        print(f"{spec:>7} " + "  ".join(f"{k} {row[k]:5.1f}" for k in READOUTS), flush=True)
    result = {"command": command("attention_pool.py", argv), "template": label, "protocol": protocol.description,
              "objective": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "temperature": 0.2,
                            "global_scale": [0.5, 1.0], "seed": args.seed},
              "pixels": {k: round(v, 2) for k, v in pixel_baselines(protocol).items()},
              "torch_threads": torch.get_num_threads(), "rows": rows}
    save_result(result, args.out, plot)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    grouped_bars(path, [r["size"] for r in rows], {k: [r[k] for r in rows] for k in READOUTS},
                 hline=("mean-centred pixels", result["pixels"]["centred_pixels_knn"]), legend_loc="lower right",
                 xlabel="size", ylabel="k-NN accuracy (%)", title="Frozen template: mean pool vs learned pools (validation)")


if __name__ == "__main__":
    main()
