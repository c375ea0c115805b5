"""Learn the scalers of a new size from a few unlabeled images; the template stays frozen.

    accelerate launch training/learn_scalers.py --template out/fmnist/template --depth 7 --width 160 \\
        --num-images 1000

The new size's X, X_vec, U, V start from the derived scalers (the zero-cost initialization used
for any size without a scaler file) and are trained to reproduce, token by token, the features
of the template's largest anchor. Student and teacher have different widths, so both are
compared in the template's r-space (``tokens @ U / sqrt(width)``), the space the pre-training
projection head reads. Only the scaler file, config.json and the model card of the template
folder are rewritten; template.safetensors is never touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweet_hub import SweetHubError, SweetTemplate
from sweet_hub.config import size_key
from training.config import set_cpu_threads
from training.data import DataError, load_image_tensors

__all__ = ["learn_scalers", "main"]


def learn_scalers(template: SweetTemplate, depth: int, width: int, images: Tensor, steps: int = 300, batch_size: int = 128,
                  lr: float = 1e-3, seed: int = 0, accelerator=None, progress: bool = True) -> dict[str, Any]:
    """:meth:`SweetTemplate.learn_scalers` (kept as a function for scripts written against 0.1)."""
    return template.learn_scalers(depth, width, images, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  accelerator=accelerator, progress=progress)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", required=True, help="template folder (the learned scalers are added to it)")
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--data", default="fashion_mnist", help="fashion_mnist | imagefolder:PATH | Hub dataset id")
    parser.add_argument("--num-images", type=int, default=1000, help="unlabeled images to learn from")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from accelerate import Accelerator

    try:
        folder = Path(args.template)
        if not folder.is_dir():
            raise DataError(f"--template must be a local template folder (the learned scalers are written into it); "
                            f"download a Hub template first with `hf download {args.template} --local-dir DIR`.")
        template = SweetTemplate.from_pretrained(folder)
        template.config.check_size(args.depth, args.width)
        cfg = template.config
        data = load_image_tensors(args.data, "train", cfg.img_size, cfg.in_chans).subset(args.num_images, args.seed)
    except (SweetHubError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    accelerator = Accelerator()
    set_cpu_threads(accelerator)
    facts = learn_scalers(template, args.depth, args.width, data.images, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, accelerator=accelerator, progress=accelerator.is_local_main_process)
    facts["data"] = f"{args.data} train, {len(data)} images, no labels"
    template.scaler_info[size_key(args.depth, args.width)]["data"] = facts["data"]
    if accelerator.is_main_process:
        path = template.save_scalers(folder, args.depth, args.width)
        print(json.dumps({"scaler_file": str(path), **facts}, indent=2))
    return facts


if __name__ == "__main__":
    main()
