"""Training overhead: a SWEET pre-training step vs the same ViT in a plain timm loop, same loss.

    python benchmarks/train_overhead.py [--steps 8] [--batch-size 128]

For each anchor size, times (median over steps, after warm-up) one optimizer step of
constraint-based pre-training (weights materialized from the template inside the step) and one of
an ordinary timm ViT of that size with the same multi-crop contrastive loss and optimizer. Then
times learning the scalers of a new size (template frozen) and reports its cost, in images and
seconds, as a fraction of the pre-training that produced the bundled template.
Writes benchmarks/results/train_overhead.json and .png.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import RESULTS, command, grouped_bars, save_result, timed_steps


def step_times(method: torch.nn.Module, size, views, steps: int) -> list[float]:
    return timed_steps(lambda: method(views[0], views[1], size), method.parameters(), steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--scaler-size", default="7x160", help="DEPTHxWIDTH whose scalers are learned")
    parser.add_argument("--scaler-steps", type=int, default=300)
    parser.add_argument("--scaler-images", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS / "train_overhead.json"))
    args = parser.parse_args(argv)

    import sweet_hub
    from sweet_hub.config import vit_args
    from training.data import MultiCropAugment, load_image_tensors
    from training.learn_scalers import learn_scalers
    from training.methods import SingleMethod, SizeChoice, SweetMethod

    template = sweet_hub.SweetTemplate.from_pretrained(sweet_hub.BUNDLED_TEMPLATE)
    cfg = template.config
    data = load_image_tensors("fashion_mnist", "train", cfg.img_size, cfg.in_chans)
    augment = MultiCropAugment(cfg.img_size, cfg.mean, cfg.std, n_global=2, n_local=2)
    views = augment(data.images[: args.batch_size], seed=0)
    sweet = SweetMethod(template)
    rows = []
    for depth, width in cfg.anchors:
        single = SingleMethod("vit_base_patch16_224", vit_args(cfg, depth, width))
        t_sweet = statistics.median(step_times(sweet, SizeChoice((depth, width), depth, width), views, args.steps))
        t_plain = statistics.median(step_times(single, None, views, args.steps))
        rows.append(dict(size=f"{depth}x{width}", sweet_step_s=round(t_sweet, 4), plain_timm_step_s=round(t_plain, 4),
                         overhead=round(t_sweet / t_plain - 1, 4), images_per_step=args.batch_size))
        print(f"{depth}x{width}: SWEET step {t_sweet * 1000:.0f} ms, plain timm step {t_plain * 1000:.0f} ms "
              f"({(t_sweet / t_plain - 1) * 100:+.1f}%)", flush=True)

    depth, width = (int(v) for v in args.scaler_size.split("x"))
    images = data.subset(args.scaler_images, seed=0).images
    facts = learn_scalers(sweet_hub.SweetTemplate.from_pretrained(sweet_hub.BUNDLED_TEMPLATE), depth, width, images,
                          steps=args.scaler_steps, progress=False)
    stats = template.card_info.get("stats") or {}
    pre_images = stats.get("images_seen")
    pre_minutes = round(stats["train_seconds"] / 60, 1) if stats else None
    scaler = dict(size=args.scaler_size, images=facts["images"], steps=facts["steps"],
                  images_processed=facts["steps"] * facts["batch_size"], seconds=facts["seconds"],
                  distill_loss_before=facts["distill_loss_before"], distill_loss_after=facts["distill_loss_after"],
                  pretraining_images_seen=pre_images, pretraining_minutes=pre_minutes)
    if pre_images and pre_minutes:
        scaler["fraction_of_pretraining_images"] = round(scaler["images_processed"] / pre_images, 5)
        scaler["fraction_of_pretraining_time"] = round(facts["seconds"] / (pre_minutes * 60), 5)
    print(f"learn scalers {args.scaler_size}: {facts['seconds']} s, {scaler['images_processed']:,} image passes over "
          f"{facts['images']} images; loss {facts['distill_loss_before']} -> {facts['distill_loss_after']}")
    result = {"command": command("train_overhead.py", argv),
              "torch_threads": torch.get_num_threads(), "loss": "multi-crop contrastive (2 global + 2 local crops)",
              "steps": rows, "scaler_learning": scaler}
    save_result(result, args.out, plot)
    return result


def plot(result: dict, path: Path) -> None:
    rows = result["steps"]
    grouped_bars(path, [r["size"] for r in rows], {
        "SWEET (materialize in step)": [r["sweet_step_s"] * 1000 for r in rows],
        "plain timm ViT": [r["plain_timm_step_s"] * 1000 for r in rows],
    }, xlabel="depth x width", ylabel="ms per optimizer step", title=f"pre-training step time ({rows[0]['images_per_step']} images)")


if __name__ == "__main__":
    main()
