"""Token distillation on unlabeled images: teach a template's tensors to reproduce a teacher ViT.

Used to learn the scalers of a new size (the template frozen, the teacher its largest anchor)
and to fit a template to a checkpoint (the teacher the checkpoint). Student and teacher may have
different widths, so both are compared in the template's r-space (``tokens @ U / sqrt(width)``,
with the U of each side's scalers), the space the pre-training projection head reads. The loss
is the mean (1 - cosine similarity) over all output tokens.

Matching tokens in r-space leaves a wider student's other directions free, and those reach its
pooled features (what k-NN and probes read). ``relation_weight`` adds a relational term on the
pooled features themselves: each image's softmax over its cosine similarities to the rest of the
batch, student against teacher (KL), so the student keeps the teacher's neighbours in its own
feature space, whatever its width.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .config import TemplateConfig, vit_args
from .data import MultiCropAugment, normalize
from .distributed import gather_batches
from .tucker import materialize_state_dict

__all__ = ["TokenDistiller", "TokenSkeleton", "distill", "distillation_loss", "relation_loss"]


class TokenSkeleton(nn.Module):
    """A parameter-free (meta) timm ViT whose forward returns all output tokens (forward_features)
    and the pooled pre-logit features the model's own head reads."""

    def __init__(self, vit_kwargs: dict[str, Any]) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        with torch.device("meta"):
            self.vit = VisionTransformer(**{**vit_kwargs, "num_classes": 0})

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.vit.forward_features(images)
        return tokens, self.vit.forward_head(tokens, pre_logits=True)

    def run(self, state: Mapping[str, Tensor], images: Tensor) -> tuple[Tensor, Tensor]:
        weights = {f"vit.{k}": v for k, v in state.items() if not k.startswith("head.")}
        return functional_call(self, weights, (images,), strict=True, tie_weights=False)


class TokenDistiller(nn.Module):
    """Trainable template tensors of one size, pulled towards a teacher's tokens in r-space.

    ``scalers`` (the student size's X, X_vec, U, V) are always trained; ``cores`` are trained
    only with ``train_cores=True`` (fitting), else they are frozen buffers (learning scalers).
    The teacher is a timm ViT state dict with its ``teacher_kwargs`` (VisionTransformer
    arguments) and ``teacher_to_r`` (D_teacher, r2), the map of its tokens to r-space.
    ``relation_weight`` > 0 adds :func:`relation_loss` on the pooled features.
    """

    def __init__(self, cfg: TemplateConfig, cores: Mapping[str, Tensor], scalers: Mapping[str, Tensor], teacher_state: Mapping[str, Tensor],
                 teacher_kwargs: dict[str, Any], teacher_to_r: Tensor, train_cores: bool = False, relation_weight: float = 0.0) -> None:
        super().__init__()
        if not (isinstance(relation_weight, (int, float)) and not isinstance(relation_weight, bool) and relation_weight >= 0):
            raise ValueError(f"relation_weight must be a number >= 0 (0 turns the relational term off), got {relation_weight!r}")
        self.cfg = cfg
        self.relation_weight = float(relation_weight)
        self.depth, self.width = scalers["X"].shape[0], scalers["U"].shape[0]
        self.scalers = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in scalers.items()})
        if train_cores:
            self.cores = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in cores.items()})
        else:
            self.frozen_cores = {k: v.detach() for k, v in cores.items()}
        # meta-device skeletons live outside the module tree so .to()/accelerate.prepare skip them
        self._nets = {"student": TokenSkeleton(vit_args(cfg, self.depth, self.width)), "teacher": TokenSkeleton(teacher_kwargs)}
        self.teacher_state = {k: v.detach().float() for k, v in teacher_state.items()}
        self.teacher_to_r = teacher_to_r.detach().float()

    def core_tensors(self) -> dict[str, Tensor]:
        return dict(self.cores.items()) if hasattr(self, "cores") else self.frozen_cores

    def forward(self, images: Tensor, gather: bool = False) -> Tensor:
        """Mean (1 - cosine similarity) of student and teacher tokens in r-space (plus the
        weighted relational term on pooled features, over every process's images with ``gather``)."""
        if self.teacher_to_r.device != images.device:
            self.teacher_state = {k: v.to(images.device) for k, v in self.teacher_state.items()}
            self.teacher_to_r = self.teacher_to_r.to(images.device)
        with torch.no_grad():
            target_tokens, target_pooled = self._nets["teacher"].run(self.teacher_state, images)
        state = materialize_state_dict(self.core_tensors(), dict(self.scalers.items()), self.cfg)
        tokens, pooled = self._nets["student"].run(state, images)
        student = tokens @ (self.scalers["U"] / math.sqrt(self.width))
        loss = (1 - F.cosine_similarity(student, target_tokens @ self.teacher_to_r, dim=-1)).mean()
        if self.relation_weight:
            loss = loss + self.relation_weight * relation_loss(pooled, target_pooled, gather=gather)
        return loss


def relation_loss(student: Tensor, teacher: Tensor, temperature: float = 0.1, gather: bool = False) -> Tensor:
    """KL(teacher || student) between each image's softmax over its cosine similarities to the
    other images of the batch (its own similarity left out); features (N, D_student), (N, D_teacher).

    With ``gather`` (training under ``accelerate launch``) the other images are those of every
    process (:func:`~sweet_hub.distributed.gather_batches`), so the mean of the per-process losses
    equals the single-process loss of the whole global batch, however it is split.
    """
    offset = 0
    candidates, teacher_candidates = student, teacher
    if gather:
        candidates, offset = gather_batches(student)
        teacher_candidates, _ = gather_batches(teacher.detach())
    n, total = len(student), len(candidates)
    if total < 3:
        return student.new_zeros(())
    others = torch.ones(n, total, dtype=torch.bool, device=student.device)
    others[torch.arange(n, device=student.device), torch.arange(n, device=student.device) + offset] = False

    def log_neighbours(queries: Tensor, keys: Tensor) -> Tensor:
        sims = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T
        return F.log_softmax(sims[others].view(n, total - 1) / temperature, dim=-1)

    return F.kl_div(log_neighbours(student, candidates), log_neighbours(teacher, teacher_candidates), log_target=True,
                    reduction="batchmean")


@torch.no_grad()
def distillation_loss(student: TokenDistiller, images: Tensor, batch_size: int = 256) -> float:
    """Mean distillation loss over ``images`` (normalized float), without augmentation."""
    losses = [student(images[i:i + batch_size]).item() * len(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return sum(losses) / len(images)


def distill(student: TokenDistiller, images: Tensor, steps: int = 300, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
            accelerator: Any = None, progress: bool = True, desc: str = "distill") -> dict[str, Any]:
    """Train ``student`` on random crops of ``images`` (uint8 (N, C, H, W)); returns the facts
    (images, steps, seconds, loss before and after on the un-augmented images).

    Warmup then cosine decay (timm's ``CosineLRScheduler``). Under ``accelerate launch`` every
    process draws its own share of the batch (rank 0 alone draws what a single process draws), and
    the relational term ranks each image among the whole global batch (gathered).
    """
    from timm.scheduler import CosineLRScheduler
    from tqdm.auto import tqdm

    cfg = student.cfg
    augment = MultiCropAugment(cfg.img_size, cfg.mean, cfg.std, n_global=1, n_local=0, global_scale=(0.5, 1.0), jitter=0.2)
    clean = normalize(images, cfg.mean, cfg.std)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    scheduler = CosineLRScheduler(optimizer, t_initial=steps, lr_min=lr * 0.01, warmup_t=max(1, steps // 10), warmup_lr_init=lr * 0.01)
    raw = student
    if accelerator is not None:
        student, optimizer = accelerator.prepare(student, optimizer)
        raw = accelerator.unwrap_model(student)
    before = distillation_loss(raw, clean)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    per_process = max(1, min(batch_size, len(images)) // world)
    generator = torch.Generator().manual_seed(seed + 1_000_003 * rank)
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        scheduler.step(step)
        index = torch.randint(len(images), (per_process,), generator=generator)
        (views,), _ = augment(images[index], seed * 1_000_003 + step + 7_919 * rank)
        loss = student(views, gather=world > 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward() if accelerator is None else accelerator.backward(loss)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - start
    return {"images": len(images), "steps": steps, "batch_size": batch_size, "seconds": round(seconds, 1),
            "distill_loss_before": round(before, 5), "distill_loss_after": round(distillation_loss(raw, clean), 5)}
