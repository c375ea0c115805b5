"""How much of a pre-training step the views cost: torchvision image by image vs the batched views.

    python benchmarks/augment_time.py [--repeats 10] [--threads 2]

``pretrain.py`` makes each step's views in the training process, between two optimizer steps, so
their time is time the model does not train. For the bundled recipe (``training/configs/fmnist.yaml``, or ``--config``:
2 global crops, no local crops) and for pretrain.py's default of 2 local crops more, this times the
views of one step of real Fashion-MNIST images made by ``MultiCropAugment`` one image at a time
(torchvision, the default) and batched (``batched_augment=true``, :mod:`sweet_hub.batched_views`),
beside one optimizer step of the bundled recipe's model on those views (every anchor in the update).
Medians over ``--repeats``. Writes benchmarks/results/augment_time.json and .png.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, command, grouped_bars, save_result, timed_steps

RECIPES = {"bundled (2 global views)": ["n_local=0"], "2 global + 2 local views": ["n_local=2"]}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_recipe(label: str, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The views of one step made both ways, and one optimizer step on them, for one recipe."""
    import random

    import torch

    from training.config import load_config
    from training.data import MultiCropAugment, load_image_tensors
    from training.pretrain import build_method

    cfg = load_config(args.config, [*overrides, *([f"batch_size={args.batch_size}"] if args.batch_size else [])])
    tcfg = cfg.template_config()
    images = load_image_tensors(cfg.data, "train", tcfg.img_size, tcfg.in_chans).images[: cfg.batch_size]
    loop, batched = (MultiCropAugment(tcfg.img_size, tuple(tcfg.mean), tuple(tcfg.std), cfg.n_global, cfg.n_local, cfg.local_size,
                                      tuple(cfg.global_scale), tuple(cfg.local_scale), cfg.jitter, erase_p=cfg.erase_p, batched=b)
                     for b in (False, True))
    loop_s = median_seconds(lambda: loop.crops_with_boxes(images, 0), args.repeats)
    batched_s = median_seconds(lambda: batched.crops_with_boxes(images, 0), args.repeats)
    torch.manual_seed(0)
    method = build_method(cfg)
    global_views, local_views = loop(images, 0)
    size = method.sample_size(random.Random(0))
    step_s = statistics.median(timed_steps(lambda: method(global_views, local_views, size, temperature=cfg.temperature),
                                           method.parameters(), args.step_repeats, warmup=1))
    row = {"recipe": label, "overrides": overrides, "batch_size": cfg.batch_size, "views": cfg.n_global + cfg.n_local,
           "loop_ms": round(loop_s * 1000, 1), "batched_ms": round(batched_s * 1000, 1), "step_ms": round(step_s * 1000, 1),
           "loop_share": round(loop_s / (loop_s + step_s), 3), "batched_share": round(batched_s / (batched_s + step_s), 3),
           "images_per_minute_gain": round((loop_s + step_s) / (batched_s + step_s) - 1, 3)}
    print(f"{label}: views {row['loop_ms']:.0f} ms image by image, {row['batched_ms']:.0f} ms batched; step "
          f"{row['step_ms']:.0f} ms; share of a step {row['loop_share']:.0%} -> {row['batched_share']:.0%}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats of each measurement (median)")
    parser.add_argument("--step-repeats", type=int, default=4, help="timed optimizer steps per recipe (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the bundled run used 2)")
    parser.add_argument("--config", default=str(ROOT / "training" / "configs" / "fmnist.yaml"),
                        help="the pre-training config whose views and model are timed")
    parser.add_argument("--batch-size", type=int, help="images a step (default: the config's)")
    parser.add_argument("--out", default=str(RESULTS / "augment_time.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = [time_recipe(label, overrides, args) for label, overrides in RECIPES.items()]
    result = {"command": command("augment_time.py", argv), "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
              "step_repeats": args.step_repeats, "rows": rows}
    save_result(result, args.out, plot)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    grouped_bars(path, [r["recipe"] for r in rows],
                 {"views, image by image (torchvision)": [r["loop_ms"] for r in rows],
                  "views, batched": [r["batched_ms"] for r in rows],
                  "optimizer step (every anchor)": [r["step_ms"] for r in rows]},
                 ylabel="ms per pre-training step", title=f"Views vs training, one step of {rows[0]['batch_size']} images")


if __name__ == "__main__":
    main()
