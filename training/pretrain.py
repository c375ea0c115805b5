"""Self-supervised pre-training of a SWEET template (and of the baselines) with Accelerate.

    accelerate launch training/pretrain.py --config training/configs/fmnist.yaml
    accelerate launch training/pretrain.py --config training/configs/fmnist.yaml --resume
    accelerate launch --cpu --num_processes 2 training/pretrain.py --config ... max_steps=2000
    python training/pretrain.py --config ... method=single size=[8,192]     # per-size baseline

Settings come from the config file, then from ``key=value`` overrides (values are YAML,
nested keys dotted: ``template.anchors=[[4,64],[8,128]]``). One loop serves every method
(methods.py, poa.py): each step draws a batch (a pure function of seed and step, so ``--resume``
replays it exactly), builds multi-crop views, asks the method for student embeddings (SWEET
materializes the sampled size's weights inside the step), and applies the shared contrastive
loss. Accelerate handles processes (DDP/gloo on CPU), bf16 and checkpoints; checkpoints are
written to a temporary folder, completed with a manifest, synced and renamed, and ``--resume``
skips any that is torn (checkpoints.py).

At the end the method's artefact is written (a SWEET template as a Hub repo folder with its model
card), evaluated by k-NN, and the loss curve is plotted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.optim import param_groups_weight_decay
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweet_hub.config import format_size
from sweet_hub.files import write_text
from training.checkpoints import latest_complete_checkpoint, save_checkpoint
from training.config import ConfigError, TrainConfig, config_help, load_config, set_cpu_threads
from training.data import DataError, MultiCropAugment, StepBatches, load_image_tensors
from training.methods import PretrainMethod
from training.selfsup import EMATeacher, cosine_schedule, random_patch_masks, set_lr, token_matches


class TrainState:
    """Counters saved with every checkpoint (registered with Accelerate)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.step, self.images_seen, self.train_seconds = 0, 0, 0.0
        self.config = config  # TrainConfig.to_dict(): what a resume must match

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
                "config": json.dumps(self.config, sort_keys=True)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = json.loads(state["config"])
        changed = sorted(k for k in set(saved) | set(self.config)
                         if saved.get(k) != self.config.get(k) and k not in _RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(
                f"Cannot resume: the config differs from the checkpoint's in {changed}. Resume with the same config "
                f"(only {sorted(_RESUMABLE_CHANGES)} may change) or use a new output_dir."
            )
        self.step, self.images_seen, self.train_seconds = state["step"], state["images_seen"], state["train_seconds"]


_RESUMABLE_CHANGES = {"max_steps", "save_every", "save_total_limit", "log_every", "final_eval", "output_dir", "log_with", "num_threads"}


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1024 + micro * 16 + rank


def head_options(cfg: TrainConfig) -> dict[str, Any]:
    """The projection head's settings (``ProjectionHead`` keywords), the same for every method: each method forwards
    them unchanged, so a new head setting is added here and in ``ProjectionHead`` only."""
    return dict(hidden_dim=cfg.proj_hidden, out_dim=cfg.proj_dim, norm=cfg.proj_norm, objective=cfg.objective,
                barlow_lambda=cfg.barlow_lambda, recon_weight=cfg.recon_weight, mim_weight=cfg.mim_weight,
                mim_separate=cfg.mim_separate, dense_weight=cfg.dense_weight)


def build_method(cfg: TrainConfig) -> PretrainMethod:
    """The module being trained, from the config's ``method``."""
    method = cfg.method
    head = head_options(cfg)
    if method == "sweet":
        from sweet_hub import SweetTemplate
        from training.methods import SweetMethod

        template = SweetTemplate(cfg.template_config())
        if cfg.initial_template is not None:
            load_initial_template(template, cfg.initial_template)
        return SweetMethod(template, cfg.width_scaling_p, cfg.depth_scaling_p,
                           width_scaling_max=cfg.width_scaling_max, anchor_weights=cfg.anchor_weights, sandwich=cfg.sandwich,
                           inplace_distill=cfg.inplace_distill, sandwich_all=cfg.sandwich_all,
                           anchor_loss_weights=cfg.anchor_loss_weights, dense_largest_only=cfg.dense_largest_only, head=head)
    from sweet_hub.config import timm_pretrained_cfg, vit_args

    tcfg = cfg.template_config(anchors=[tuple(cfg.size)])
    model_kwargs = vit_args(tcfg, *cfg.size)
    data_cfg = timm_pretrained_cfg(tcfg)
    if method == "single":
        from training.methods import SingleMethod

        return SingleMethod("vit_base_patch16_224", model_kwargs, pretrained_cfg=data_cfg, head=head)
    if method == "poa":
        from training.poa import POAMethod

        return POAMethod(model_kwargs, cfg.poa, pretrained_cfg=data_cfg, head=head)
    raise ConfigError(f"method must be 'sweet', 'poa' or 'single', got {method!r}.")


# TemplateConfig fields that shape the weights (or what they mean); mean/std and the derivation rules may differ
_WEIGHT_FIELDS = ("img_size", "patch_size", "in_chans", "num_classes", "head_dim", "ranks", "vector_rank", "anchors", "global_pool")


def load_initial_template(template, source: str) -> None:
    """Copy the cores and anchor scalers of the template at ``source`` into ``template`` (the run's
    fresh one). The configs must agree on every field that shapes the weights; learned scalers of
    other sizes are not copied: they were fitted to the old template and the run changes it."""
    from sweet_hub import SweetTemplate

    try:
        initial = SweetTemplate.from_pretrained(source)
    except Exception as e:  # a missing folder, an unknown repo, a torn file: say which setting to fix
        raise ConfigError(f"initial_template={source!r} could not be loaded: {e}") from None
    differ = {f: (getattr(template.config, f), getattr(initial.config, f)) for f in _WEIGHT_FIELDS
              if getattr(template.config, f) != getattr(initial.config, f)}
    if differ:
        listed = "; ".join(f"template.{f}={mine!r} vs {theirs!r}" for f, (mine, theirs) in differ.items())
        raise ConfigError(f"initial_template={source!r} has another shape than this run's template: {listed}. Set the "
                          f"run's template section to the initial template's values (its config.json).")
    wanted = template.state_dict()
    template.load_state_dict({k: v for k, v in initial.state_dict().items() if k in wanted})


def param_groups(method: nn.Module, weight_decay: float, scaler_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """timm's weight-decay groups (none on biases, norms, 1-d tensors), each split into the template's
    scalers and the rest when the scalers get another learning rate (``lr_scale``, timm's key for it)."""
    groups = param_groups_weight_decay(method, weight_decay)
    if scaler_lr_scale == 1:
        return groups
    scalers = {id(p) for name, p in method.named_parameters() if name.startswith("template.scalers.")}
    split = []
    for group in groups:
        for is_scaler, scale in ((False, 1.0), (True, scaler_lr_scale)):
            params = [p for p in group["params"] if (id(p) in scalers) == is_scaler]
            if params:
                split.append({**group, "params": params, "lr_scale": scale})
    return split


def _progress(step: int, max_steps: int, seconds: float, budget: float | None) -> float:
    """Fraction of the run done: by steps, or by elapsed training time when a time budget is set."""
    fraction = step / max_steps
    return min(1.0, max(fraction, seconds / budget) if budget else fraction)


class CSVLog:
    """Append-only CSV of the training curve; on resume, rows past the resumed step are dropped."""

    #: depth/width: the sampled size; sizes: every size the update trained (with sandwich, the largest anchor first)
    FIELDS = ["step", "loss", "lr", "img_per_s", "depth", "width", "images_seen", "train_seconds", "sizes"]

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        rows = [r for r in self.read(path) if int(r["step"]) <= resume_step] if path.is_file() and resume_step > 0 else []
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        """The rows of a run's ``train_log.csv`` (values as written: strings)."""
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))


def plot_loss(log_path: Path, out_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = CSVLog.read(log_path)
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=1)
    window = max(1, len(losses) // 30)
    if window > 1:
        smooth = [sum(losses[max(0, i - window):i + 1]) / len(losses[max(0, i - window):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=2, label=f"moving mean ({window})")
        ax.legend()
    ax.set(xlabel="step", ylabel="contrastive loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def _command() -> str:
    launched = any(k.startswith("ACCELERATE_") for k in os.environ) or "LOCAL_RANK" in os.environ
    launcher = "accelerate launch " if launched else "python "
    return launcher + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir '{path}' is not writable ({e.strerror}); choose another with output_dir=PATH.") from None


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    output_dir = Path(cfg.output_dir)
    _check_writable(output_dir)
    accel_kwargs: dict[str, Any] = {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)]}
    if cfg.mixed_precision is not None:  # otherwise the launcher's --mixed_precision decides
        accel_kwargs["mixed_precision"] = cfg.mixed_precision
    if cfg.log_with != "none":
        accel_kwargs.update(log_with=cfg.log_with, project_dir=str(output_dir / "logs"))
    accelerator = Accelerator(**accel_kwargs)
    set_seed(cfg.seed)
    set_cpu_threads(accelerator, cfg.num_threads)

    tcfg = cfg.template_config()
    data = load_image_tensors(cfg.data, "train", tcfg.img_size, tcfg.in_chans)
    if cfg.num_images:
        data = data.subset(cfg.num_images, cfg.seed)
    method = build_method(cfg)
    teacher = EMATeacher(method, cfg.ema_momentum) if cfg.teacher == "ema" else None
    optimizer = torch.optim.AdamW(param_groups(method, cfg.weight_decay, cfg.scaler_lr_scale), lr=cfg.lr, betas=(0.9, 0.95))
    method, optimizer = accelerator.prepare(method, optimizer)
    state = TrainState(cfg.to_dict())
    accelerator.register_for_checkpointing(state)
    if teacher is not None:
        accelerator.register_for_checkpointing(teacher)

    if resume:
        checkpoint = latest_complete_checkpoint(output_dir, report=accelerator.print)
        if checkpoint is None:
            raise ConfigError(f"--resume: no complete checkpoint in {output_dir / 'checkpoints'}; start without --resume.")
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"Resumed from {checkpoint} at step {state.step}")
    if accelerator.is_main_process:
        write_text(output_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log = CSVLog(output_dir / "train_log.csv", state.step) if accelerator.is_main_process else None
    if cfg.log_with != "none":
        accelerator.init_trackers("pretrain", config={k: str(v) for k, v in cfg.to_dict().items()})

    raw = accelerator.unwrap_model(method)
    batches = StepBatches(len(data), cfg.batch_size // cfg.grad_accum, cfg.seed, accelerator.process_index, accelerator.num_processes)
    augment = MultiCropAugment(tcfg.img_size, tuple(tcfg.mean), tuple(tcfg.std), cfg.n_global, cfg.n_local,
                               cfg.local_size, tuple(cfg.global_scale), tuple(cfg.local_scale), cfg.jitter,
                               erase_p=cfg.erase_p, batched=cfg.batched_augment)
    max_steps, ga = cfg.max_steps, cfg.grad_accum
    num_patches = (tcfg.img_size // tcfg.patch_size) ** 2
    budget = cfg.time_budget_minutes * 60 if cfg.time_budget_minutes else None
    # a time-budgeted run counts training seconds, a step-budgeted one counts steps
    bar = tqdm(total=round(budget) if budget else max_steps, initial=round(state.train_seconds) if budget else state.step,
               unit="s" if budget else "it", disable=not accelerator.is_local_main_process, desc=f"pretrain {cfg.method}",
               dynamic_ncols=True)
    last_log = time.perf_counter()
    images_since_log = 0
    done = state.step >= max_steps or (budget is not None and state.train_seconds >= budget)
    while not done:
        t0 = time.perf_counter()
        step = state.step
        progress = _progress(step, max_steps, state.train_seconds, budget)
        lr = cosine_schedule(step, max_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr,
                             progress=progress if budget else None)
        set_lr(optimizer, lr)
        size = raw.sample_size(random.Random(step_seed(cfg.seed, step, 0, 0)))
        loss_sum = 0.0
        for micro in range(ga):
            index = batches(step * ga + micro)
            seed = step_seed(cfg.seed, step, micro, accelerator.process_index)
            global_views, local_views, boxes = augment.crops_with_boxes(data.images[index], seed)
            matches = token_matches(boxes, tcfg.img_size // tcfg.patch_size) if cfg.dense_weight > 0 else None
            masks = (random_patch_masks(cfg.n_global * len(index), num_patches, cfg.mask_ratio, torch.Generator().manual_seed(seed))
                     if cfg.mask_ratio > 0 else None)
            sync = accelerator.no_sync(method) if micro < ga - 1 else contextlib.nullcontext()
            with sync, accelerator.autocast():
                targets = teacher.module.embed_targets(global_views) if teacher is not None else None
                loss = method(global_views, local_views, size, targets, cfg.temperature, masks, matches)
                accelerator.backward(loss / ga)
            loss_sum += loss.item() / ga
        if cfg.clip_grad:
            accelerator.clip_grad_norm_(method.parameters(), cfg.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if teacher is not None:
            teacher.update(raw, _progress(step + 1, max_steps, state.train_seconds, budget))
        state.step += 1
        state.images_seen += cfg.batch_size
        # the elapsed time decides when a time-budgeted run stops: agree on it across processes
        elapsed = accelerator.reduce(torch.tensor(time.perf_counter() - t0), reduction="mean").item() if budget else time.perf_counter() - t0
        state.train_seconds += elapsed
        done = state.step >= max_steps or (budget is not None and state.train_seconds >= budget)
        images_since_log += cfg.batch_size
        bar.update(round(state.train_seconds) - bar.n if budget else 1)  # whole seconds on a time budget
        if state.step % cfg.log_every == 0 or done:
            loss_sum = accelerator.reduce(torch.tensor(loss_sum), reduction="mean").item()  # mean over processes
            now = time.perf_counter()
            rate = images_since_log / (now - last_log)
            last_log, images_since_log = now, 0
            sizes = f"{format_size(*raw.teacher_size)}+{size.label}" if cfg.sandwich else size.label
            row = dict(step=state.step, loss=round(loss_sum, 5), lr=f"{lr:.3g}", img_per_s=round(rate, 1), depth=size.depth,
                       width=size.width, images_seen=state.images_seen, train_seconds=round(state.train_seconds, 3), sizes=sizes)
            bar.set_postfix(loss=f"{loss_sum:.3f}", img_s=f"{rate:.0f}", size=sizes)
            if log is not None:
                log.write(row)
            accelerator.log({"loss": loss_sum, "lr": lr, "img_per_s": rate}, step=state.step)
        if state.step % cfg.save_every == 0 or done:
            save_checkpoint(accelerator, output_dir, state.step, cfg.save_total_limit)
    bar.close()
    accelerator.end_training()

    summary: dict[str, Any] = {"steps": state.step, "images_seen": state.images_seen, "train_seconds": round(state.train_seconds, 1),
                               "threads": torch.get_num_threads()}
    if accelerator.is_main_process:
        plot_loss(output_dir / "train_log.csv", output_dir / "loss.png", f"{cfg.method} pre-training")
        final = teacher.module if (teacher is not None and cfg.export_ema) else raw
        summary.update(finish(cfg, final, state, output_dir))
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        accelerator.print(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary


def objective_description(cfg: TrainConfig) -> str:
    """The loss between views as the model card names it."""
    if cfg.objective == "barlow":
        return f"Barlow Twins loss (lambda={cfg.barlow_lambda})"
    return f"contrastive loss (T={cfg.temperature})"


def finish(cfg: TrainConfig, method: PretrainMethod, state: TrainState, output_dir: Path) -> dict[str, Any]:
    """Write the artefact of the method and evaluate it (k-NN) as configured in ``final_eval``."""
    from training.report import evaluate_sizes, metrics_markdown

    training_facts = {
        "command": f"`{_command()}`",
        "data": f"{cfg.data} train split, {cfg.num_images or 'all'} images, no labels",
        "method": f"{cfg.method}, {objective_description(cfg)}, {cfg.n_global} global + {cfg.n_local} local crops"
                  + (f", {cfg.mask_ratio:.0%} of global-view patches masked" if cfg.mask_ratio else "")
                  + (f", masked-patch prediction (weight {cfg.mim_weight}{', own forward pass' if cfg.mim_separate else ''})"
                     if cfg.mim_weight else "")
                  + (f", width-wise stochastic scaling p={cfg.width_scaling_p}" if cfg.method == "sweet" else ""),
        **({"initial weights": f"{cfg.initial_template} (images seen and steps count this run only)"}
           if cfg.initial_template else {}),
        "steps": state.step,
        "images seen": f"{state.images_seen:,}",
        "wall time (training)": f"{state.train_seconds / 60:.1f} min on {torch.get_num_threads()} CPU threads",
    }
    results: dict[str, Any] = {}
    if cfg.final_eval.sizes is not None:
        results = evaluate_sizes(cfg, method)
    card_info = {
        "title": cfg.title or cfg.data,
        "datasets": [cfg.data] if "/" in cfg.data else None,
        "training": training_facts,
        # raw numbers for programs (benchmarks read these, not the prose above)
        "stats": {"steps": state.step, "images_seen": state.images_seen, "train_seconds": round(state.train_seconds, 1),
                  "threads": torch.get_num_threads()},
        "metrics": results,
        "metrics_table": metrics_markdown(results) if results else "",
    }
    path = method.save_artefact(output_dir, card_info)
    return {"metrics": results, "artefact": str(path)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see training/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("overrides", nargs="*", help="key=value settings, e.g. max_steps=100 template.ranks=[32,64,64]")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        return train(cfg, resume=args.resume)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
