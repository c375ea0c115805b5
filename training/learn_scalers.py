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
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweet_hub import SweetHubError, SweetTemplate, materialize_state_dict
from sweet_hub.config import format_size, size_key, vit_args
from training.config import set_cpu_threads
from training.data import DataError, MultiCropAugment, load_image_tensors, normalize
from training.selfsup import cosine_schedule

__all__ = ["ScalerStudent", "learn_scalers", "main"]


class TokenSkeleton(nn.Module):
    """A parameter-free (meta) timm ViT whose forward returns all output tokens (forward_features)."""

    def __init__(self, vit_kwargs: dict[str, Any]) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        with torch.device("meta"):
            self.vit = VisionTransformer(**{**vit_kwargs, "num_classes": 0})

    def forward(self, images: Tensor) -> Tensor:
        return self.vit.forward_features(images)

    def run(self, state: dict[str, Tensor], images: Tensor) -> Tensor:
        weights = {f"vit.{k}": v for k, v in state.items() if not k.startswith("head.")}
        return functional_call(self, weights, (images,), strict=True, tie_weights=False)


class ScalerStudent(nn.Module):
    """Trainable scalers of one size on a frozen template, distilled from its largest anchor."""

    def __init__(self, template: SweetTemplate, depth: int, width: int) -> None:
        super().__init__()
        self.template = template.requires_grad_(False)
        self.depth, self.width = depth, width
        self.scalers = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in template.scalers_for(depth, width).items()})
        cfg = template.config
        self.teacher_size = cfg.largest_anchor
        # meta-device skeletons live outside the module tree so .to()/accelerate.prepare skip them
        self._nets = {"student": TokenSkeleton(vit_args(cfg, depth, width)), "teacher": TokenSkeleton(vit_args(cfg, *self.teacher_size))}
        with torch.no_grad():
            self.teacher_state = template.state_dict_for(*self.teacher_size)
            self.teacher_to_r = template.scalers_for(*self.teacher_size)["U"] / math.sqrt(self.teacher_size[1])

    def forward(self, images: Tensor) -> Tensor:
        """Mean (1 - cosine similarity) of student and teacher tokens in r-space."""
        if self.teacher_to_r.device != images.device:
            self.teacher_state = {k: v.to(images.device) for k, v in self.teacher_state.items()}
            self.teacher_to_r = self.teacher_to_r.to(images.device)
        with torch.no_grad():
            target = self._nets["teacher"].run(self.teacher_state, images) @ self.teacher_to_r
        state = materialize_state_dict(dict(self.template.cores.items()), dict(self.scalers.items()), self.template.config)
        student = self._nets["student"].run(state, images) @ (self.scalers["U"] / math.sqrt(self.width))
        return (1 - F.cosine_similarity(student, target, dim=-1)).mean()


@torch.no_grad()
def distillation_loss(student: ScalerStudent, images: Tensor, batch_size: int = 256) -> float:
    """Mean distillation loss over ``images`` (normalized float), without augmentation."""
    losses = [student(images[i:i + batch_size]).item() * len(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return sum(losses) / len(images)


def learn_scalers(template: SweetTemplate, depth: int, width: int, images: Tensor, steps: int = 300, batch_size: int = 128,
                  lr: float = 1e-3, seed: int = 0, accelerator=None, progress: bool = True) -> dict[str, Any]:
    """Train the scalers of (depth, width); store them in ``template`` (source 'learned').

    ``images`` are uint8 (N, C, H, W). Returns the facts stored with the scalers (images, steps,
    seconds, distillation loss before and after on the un-augmented images).
    """
    from tqdm.auto import tqdm

    cfg = template.config
    cfg.check_size(depth, width)
    student = ScalerStudent(template, depth, width)
    augment = MultiCropAugment(cfg.img_size, cfg.mean, cfg.std, n_global=1, n_local=0, global_scale=(0.5, 1.0), jitter=0.2)
    clean = normalize(images, cfg.mean, cfg.std)
    optimizer = torch.optim.AdamW(student.scalers.parameters(), lr=lr, weight_decay=0.0)
    if accelerator is not None:
        student, optimizer = accelerator.prepare(student, optimizer)
    raw = student if accelerator is None else accelerator.unwrap_model(student)
    before = distillation_loss(raw, clean)
    # under `accelerate launch` every process draws its own share of the batch (rank 0 alone
    # draws exactly what a single process draws)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    per_process = max(1, min(batch_size, len(images)) // world)
    generator = torch.Generator().manual_seed(seed + 1_000_003 * rank)
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"learn scalers {format_size(depth, width)}", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_schedule(step, steps, max(1, steps // 10), lr, lr * 0.01)
        index = torch.randint(len(images), (per_process,), generator=generator)
        (views,), _ = augment(images[index], seed * 1_000_003 + step + 7_919 * rank)
        loss = student(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward() if accelerator is None else accelerator.backward(loss)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - start
    after = distillation_loss(raw, clean)
    facts = {"images": len(images), "steps": steps, "batch_size": batch_size, "seconds": round(seconds, 1),
             "teacher": format_size(*raw.teacher_size),
             "distill_loss_before": round(before, 5), "distill_loss_after": round(after, 5)}
    template.add_scalers(depth, width, {k: v.detach() for k, v in raw.scalers.items()}, source="learned", **facts)
    return facts


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
