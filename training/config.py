"""Training config: typed dataclasses, filled from a YAML file and ``key=value`` overrides.

``TrainConfig`` lists every setting once, with its type, default and help text (shown by
``python training/pretrain.py --help``). Unknown keys are errors (a typo must not silently train
with a default), and the message lists the keys that exist. The ``template`` section holds
:class:`sweet_hub.TemplateConfig` fields over that class's defaults; :meth:`TrainConfig.template_config`
is the one place training turns it into a ``TemplateConfig``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweet_hub import TemplateConfig, TemplateConfigError

__all__ = ["ConfigError", "EvalSettings", "PoaSettings", "TrainConfig", "config_help", "load_config", "set_cpu_threads"]


class ConfigError(ValueError):
    """A training config is wrong; the message names the key and the fix."""


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class PoaSettings:
    """The POA baseline: elastic sub-networks of one full ViT (training/poa.py)."""

    elastic_widths: list[int] | None = _opt(None, "widths of the elastic student (None: full/3 .. full, step head_dim)")
    elastic_depths: list[int] | None = _opt(None, "depths of the elastic student (None: full/2 .. full)")
    small_bias: float = _opt(1.0, "sampling weight ~ (depth * width^2)^-small_bias: more steps on small networks")
    intact_weight: float = _opt(0.8, "loss weight teacher -> intact student")
    elastic_weight: float = _opt(0.2, "loss weight teacher -> elastic student")
    distill_weight: float = _opt(1.0, "loss weight intact -> elastic student")


@dataclass
class EvalSettings:
    """k-NN evaluation after pre-training (training/report.py)."""

    sizes: list[list[int]] | None = _opt([], "extra [depth, width] sizes to evaluate (null: no evaluation at all)")
    train_size: int = _opt(5000, "k-NN memory images (train split)")
    test_size: int = _opt(2000, "query images (test split, or held-out train images with holdout)")
    random_init: bool = _opt(True, "also evaluate timm's random init of each size")
    raw_pixels: bool = _opt(True, "also evaluate pixels (raw, centred, linear probe)")
    holdout: bool = _opt(False, "queries from held-out train images: a validation protocol for choosing recipes")
    probe: bool = _opt(False, "also fit a linear probe on the frozen features (of the template and of random init)")


@dataclass
class TrainConfig:
    """Every setting of a pre-training run (SWEET, POA or per-size)."""

    method: str = _opt("sweet", "sweet | poa | single (per-size pre-training)")
    title: str | None = _opt(None, "model card title")
    output_dir: str = _opt("out/fmnist", "checkpoints, logs and the artefact")
    data: str = _opt("fashion_mnist", "fashion_mnist | imagefolder:PATH | a Hub dataset id")
    num_images: int | None = _opt(None, "use a random subset of the training split")
    seed: int = _opt(0, "seed of batches, augmentations and init")
    template: dict[str, Any] = _opt({}, "sweet_hub.TemplateConfig fields over its defaults (also the architecture of poa/single)")
    size: list[int] = _opt([8, 192], "[depth, width] of method=single and of POA's full network")
    initial_template: str | None = _opt(None, "method=sweet: start from this template's weights (folder or Hub id), e.g. to "
                                              "train the bundled one longer or on other data (None: random init)")
    poa: PoaSettings = field(default_factory=PoaSettings, metadata={"help": "POA settings"})
    # optimization
    max_steps: int = _opt(3000, "optimizer steps")
    time_budget_minutes: float | None = _opt(None, "stop after this much training time; schedules then follow elapsed time")
    batch_size: int = _opt(256, "images per optimizer step, over all processes")
    grad_accum: int = _opt(1, "micro-batches per step")
    lr: float = _opt(1.0e-3, "peak AdamW learning rate")
    scaler_lr_scale: float = _opt(1.0, "method=sweet: learning-rate multiplier of the anchors' scalers (X, U, V), which only "
                                       "the steps that draw their anchor update; the cores and the head keep lr")
    min_lr: float = _opt(1.0e-5, "final learning rate of the cosine schedule")
    warmup_steps: int = _opt(200, "linear warmup steps")
    weight_decay: float = _opt(0.05, "AdamW weight decay (not on biases, norms and 1-d parameters)")
    clip_grad: float = _opt(3.0, "gradient norm clipping (0: off)")
    mixed_precision: str | None = _opt(None, "None: the launcher decides; no | bf16 (fp16 is a no-op on CPU)")
    num_threads: int | None = _opt(None, "torch CPU threads per process (None: cores / processes)")
    # self-supervision
    objective: str = _opt("infonce", "loss between views' projections: infonce (SimCLR-style, in-batch negatives) | barlow "
                                     "(Barlow Twins: no negatives, cross-correlation pulled to the identity; wants proj_norm=batch)")
    barlow_lambda: float = _opt(0.005, "objective=barlow: weight of the off-diagonal (redundancy) term")
    temperature: float = _opt(0.2, "InfoNCE temperature")
    teacher: str = _opt("none", "none (SimCLR-style targets) | ema (MoCo-v3-style EMA teacher)")
    ema_momentum: float = _opt(0.996, "initial EMA momentum (cosine to 1)")
    export_ema: bool = _opt(False, "save the EMA teacher instead of the student")
    proj_hidden: int = _opt(512, "projection head hidden width")
    proj_dim: int = _opt(128, "projection head output width")
    proj_norm: str = _opt("none", "none | batch (BatchNorm1d on the projection head's hidden layer, as SimCLR's; per process under DDP)")
    recon_weight: float = _opt(0.0, "weight of the pixel term: a linear decoder reads each global view back from its pooled features (0: off)")
    mask_ratio: float = _opt(0.0, "fraction of each global view's patches the student does not see (set to the mean); 0: off")
    mim_weight: float = _opt(0.0, "weight of masked-patch prediction: a linear decoder reads each hidden patch's pixels back "
                                  "from its final token (needs mask_ratio > 0; 0: off)")
    mim_separate: bool = _opt(False, "masked views get a forward pass of their own and the contrastive loss sees the unmasked "
                                     "ones (one more pass over the global views per step); false: one pass, masked views for both")
    dense_weight: float = _opt(0.0, "weight of the dense contrastive term: each final token of a global view picks the token "
                                    "of the other global view at the same image position among the batch's (0: off)")
    dense_largest_only: bool = _opt(False, "with sandwich and dense_weight: the dense term on the largest anchor's loss only "
                                           "(the term costs the same at every size, so this cuts its cost by the number of anchors)")
    n_global: int = _opt(2, "global crops per image")
    n_local: int = _opt(2, "local crops per image")
    local_size: int = _opt(14, "local crop side (pixels)")
    global_scale: list[float] = _opt([0.35, 1.0], "RandomResizedCrop area range of global crops")
    local_scale: list[float] = _opt([0.1, 0.35], "RandomResizedCrop area range of local crops")
    jitter: float = _opt(0.4, "brightness/contrast jitter")
    batched_augment: bool = _opt(False, "make each step's views for the whole batch at once (sweet_hub.batched_views: the same "
                                        "distributions, other random draws) instead of image by image with torchvision")
    erase_p: float = _opt(0.0, "probability of blanking a random rectangle (2-25% of the area) of each global view (0: off)")
    width_scaling_p: float = _opt(0.5, "width-wise stochastic scaling: probability of a random width per step")
    width_scaling_max: int | None = _opt(None, "largest stochastic width (None: the largest anchor width)")
    depth_scaling_p: float = _opt(0.0, "probability of a random depth between the anchors' per step")
    anchor_weights: list[float] | None = _opt(None, "sampling weight per anchor (None: uniform)")
    sandwich: bool = _opt(False, "method=sweet: every step trains the largest anchor and one sampled smaller one (the "
                                 "sandwich rule of slimmable networks), their losses summed into one update")
    inplace_distill: bool = _opt(False, "with sandwich: the smaller size's targets are the largest anchor's embeddings of "
                                        "the global views in the same step (no gradient), instead of its own")
    sandwich_all: bool = _opt(False, "with sandwich: every smaller anchor (each stochastically scaled) joins the largest "
                                     "in each update, instead of one sampled by anchor_weights")
    anchor_loss_weights: list[float] | None = _opt(None, "with sandwich: the weight of each anchor's loss in the summed "
                                                          "update (a stochastically scaled size counts as its anchor; None: 1 each)")
    # bookkeeping
    save_every: int = _opt(250, "checkpoint every N steps")
    save_total_limit: int = _opt(2, "checkpoints kept")
    log_every: int = _opt(10, "log every N steps (the CSV log is always written)")
    log_with: str = _opt("none", "none | all | an Accelerate tracker (tensorboard, wandb, mlflow, ...)")
    final_eval: EvalSettings = field(default_factory=EvalSettings, metadata={"help": "evaluation after training"})

    def template_config(self, anchors: list[tuple[int, int]] | None = None) -> TemplateConfig:
        """The run's TemplateConfig (``anchors`` replaces the template's, e.g. the single size of a baseline)."""
        fields = dict(self.template)
        if anchors is not None:
            fields["anchors"] = anchors
        try:
            return TemplateConfig.build(fields)
        except TemplateConfigError as e:
            raise ConfigError(f"template: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the losses between views' projections (``objective``; training.selfsup.ProjectionHead implements them)
OBJECTIVES = ("infonce", "barlow")
_CHOICES = {"method": ("sweet", "poa", "single"), "teacher": ("none", "ema"), "proj_norm": ("none", "batch"), "objective": OBJECTIVES,
            "mixed_precision": (None, "no", "bf16", "fp16")}
_POSITIVE_INTS = ("max_steps", "batch_size", "grad_accum", "save_every", "save_total_limit", "log_every", "n_global", "local_size")
_FLOATS = ("lr", "scaler_lr_scale", "min_lr", "weight_decay", "clip_grad", "temperature", "ema_momentum", "jitter", "width_scaling_p", "depth_scaling_p", "recon_weight",
           "mask_ratio", "mim_weight", "dense_weight", "erase_p", "barlow_lambda")
_SECTIONS = {"poa": PoaSettings, "final_eval": EvalSettings}


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if where == "template.":  # TemplateConfig validates its own fields
            if key not in TemplateConfig.field_names():
                raise ConfigError(f"Unknown config key 'template.{key}'. Valid keys here: {', '.join(TemplateConfig.field_names())}.")
            out[key] = value
            continue
        if key not in base:
            raise ConfigError(f"Unknown config key '{where}{key}'. Valid keys here: {', '.join(sorted(base))}.")
        if key == "final_eval" and value is None:  # `final_eval: null`: no evaluation
            out[key] = {**base[key], "sizes": None}
        elif isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _parse_override(text: str) -> dict[str, Any]:
    if "=" not in text:
        raise ConfigError(f"Override '{text}' is not key=value (e.g. max_steps=100, template.ranks=[32,64,64]).")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"Override '{text}': value is not valid YAML ({e}).") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, then validated."""
    data = TrainConfig().to_dict()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist (see training/configs/ for examples).")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file '{path}' is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file '{path}' must hold a mapping of settings.")
        data = _merge(data, loaded, "")
    for text in overrides or []:
        data = _merge(data, _parse_override(text), "")
    for key in ("poa", "final_eval", "template"):
        if not isinstance(data[key], dict):
            raise ConfigError(f"{key} must be a mapping of settings, got {data[key]!r}.")
    cfg = TrainConfig(**{k: v for k, v in data.items() if k not in _SECTIONS},
                      **{k: cls(**data[k]) for k, cls in _SECTIONS.items()})
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    for key in _FLOATS:  # YAML reads 1e-4 (no dot) as a string
        try:
            setattr(cfg, key, float(getattr(cfg, key)))
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {getattr(cfg, key)!r}.") from None
    if cfg.mixed_precision is False:  # YAML 1.1 reads a bare `no` (mixed_precision=no, as accelerate spells it) as false
        cfg.mixed_precision = "no"
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is not one of {choices}.")
    trackers = _tracker_names()
    if cfg.log_with not in ("none", "all", *trackers):
        raise ConfigError(f"log_with={cfg.log_with!r} is not 'none', 'all' or an Accelerate tracker ({', '.join(trackers)}).")
    for key in _POSITIVE_INTS:
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}.")
    if cfg.batch_size % cfg.grad_accum:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by grad_accum={cfg.grad_accum}.")
    if not 0 <= cfg.width_scaling_p <= 1 or not 0 <= cfg.depth_scaling_p <= 1:
        raise ConfigError("width_scaling_p and depth_scaling_p are probabilities in [0, 1].")
    if cfg.scaler_lr_scale <= 0 or (cfg.scaler_lr_scale != 1 and cfg.method != "sweet"):
        raise ConfigError(f"scaler_lr_scale must be > 0 and only applies to method=sweet (the other methods have no scalers), "
                          f"got {cfg.scaler_lr_scale} with method={cfg.method!r}.")
    if cfg.barlow_lambda < 0 or (cfg.objective == "barlow" and cfg.teacher != "none"):
        raise ConfigError(f"objective=barlow compares the student's own views (teacher=none) and barlow_lambda must be >= 0, "
                          f"got teacher={cfg.teacher!r}, barlow_lambda={cfg.barlow_lambda}; set teacher=none or objective=infonce.")
    if cfg.temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {cfg.temperature}.")
    if cfg.recon_weight < 0:
        raise ConfigError(f"recon_weight must be >= 0 (0 turns the pixel term off), got {cfg.recon_weight}.")
    if not isinstance(cfg.batched_augment, bool):
        raise ConfigError(f"batched_augment is true or false, got {cfg.batched_augment!r}.")
    if not 0 <= cfg.erase_p <= 1:
        raise ConfigError(f"erase_p is a probability, in [0, 1], got {cfg.erase_p} (0 turns random erasing off).")
    if not 0 <= cfg.mask_ratio < 1:
        raise ConfigError(f"mask_ratio is the fraction of patches hidden, in [0, 1), got {cfg.mask_ratio}.")
    if cfg.mim_weight < 0 or (cfg.mim_weight > 0 and cfg.mask_ratio == 0):
        raise ConfigError(f"mim_weight={cfg.mim_weight} needs mask_ratio > 0 (patches to predict) and must be >= 0; "
                          f"set e.g. mask_ratio=0.4, or mim_weight=0 to turn masked-patch prediction off.")
    if not isinstance(cfg.mim_separate, bool) or (cfg.mim_separate and cfg.mim_weight == 0):
        raise ConfigError(f"mim_separate is true or false and only applies with mim_weight > 0, got mim_separate="
                          f"{cfg.mim_separate!r} with mim_weight={cfg.mim_weight}.")
    if cfg.dense_weight < 0 or (cfg.dense_weight > 0 and (cfg.n_global < 2 or cfg.mask_ratio > 0)):
        raise ConfigError(f"dense_weight={cfg.dense_weight} matches tokens of two unmasked global views: it must be >= 0 and "
                          f"needs n_global >= 2 and mask_ratio=0 (got n_global={cfg.n_global}, mask_ratio={cfg.mask_ratio}); "
                          f"set dense_weight=0 to turn the dense term off.")
    if not isinstance(cfg.dense_largest_only, bool) or (cfg.dense_largest_only and not (cfg.sandwich and cfg.dense_weight > 0)):
        raise ConfigError(f"dense_largest_only is true or false and only applies with sandwich=true and dense_weight > 0, got "
                          f"dense_largest_only={cfg.dense_largest_only!r} with sandwich={cfg.sandwich}, dense_weight={cfg.dense_weight}.")
    budget = cfg.time_budget_minutes
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ConfigError(f"time_budget_minutes must be a positive number of minutes or null, got {budget!r}.")
    if not (isinstance(cfg.size, list) and len(cfg.size) == 2):
        raise ConfigError(f"size must be [depth, width], got {cfg.size!r}.")
    if cfg.initial_template is not None and (cfg.method != "sweet" or not isinstance(cfg.initial_template, str)):
        raise ConfigError(f"initial_template is a template folder or Hub id for method=sweet, got {cfg.initial_template!r} "
                          f"with method={cfg.method!r}.")
    tcfg = cfg.template_config()
    weights = cfg.anchor_weights
    _check_per_anchor("anchor_weights", weights, len(tcfg.anchors))
    _check_per_anchor("anchor_loss_weights", cfg.anchor_loss_weights, len(tcfg.anchors))
    if cfg.anchor_loss_weights is not None and not cfg.sandwich:
        raise ConfigError("anchor_loss_weights weigh the losses that one update sums, so they need sandwich=true (without it "
                          "an update trains one size; use anchor_weights to sample some anchors more often).")
    if not all(isinstance(v, bool) for v in (cfg.sandwich, cfg.inplace_distill, cfg.sandwich_all)):
        raise ConfigError(f"sandwich, inplace_distill and sandwich_all are true or false, got {cfg.sandwich!r}, "
                          f"{cfg.inplace_distill!r} and {cfg.sandwich_all!r}.")
    if cfg.sandwich_all and (not cfg.sandwich or weights is not None):
        raise ConfigError("sandwich_all trains every anchor in each update: it needs sandwich=true and no anchor_weights (got "
                          f"sandwich={cfg.sandwich}, anchor_weights={weights!r}).")
    if cfg.sandwich and (cfg.method != "sweet" or len(tcfg.anchors) < 2):
        raise ConfigError(f"sandwich pairs the largest anchor with a smaller one, so it needs method=sweet and two or more "
                          f"anchors; got method={cfg.method!r} with {len(tcfg.anchors)} anchor(s).")
    if cfg.inplace_distill and (not cfg.sandwich or cfg.teacher == "ema"):
        raise ConfigError("inplace_distill takes the smaller size's targets from the largest anchor of the same step: it needs "
                          f"sandwich=true and teacher=none (got sandwich={cfg.sandwich}, teacher={cfg.teacher!r}).")
    if cfg.sandwich and weights is not None and not sum(w for a, w in zip(tcfg.anchors, weights) if a != tcfg.largest_anchor):
        raise ConfigError(f"with sandwich the smaller size is drawn from the anchors other than the largest, but "
                          f"anchor_weights={weights!r} gives them no weight.")
    wmax = cfg.width_scaling_max
    if wmax is not None and (not isinstance(wmax, int) or wmax < max(w for _, w in tcfg.anchors)):
        raise ConfigError(f"width_scaling_max must be an integer >= the largest anchor width, got {wmax!r}.")


def _check_per_anchor(name: str, weights: Any, anchors: int) -> None:
    """None, or one non-negative number per anchor with a positive sum."""
    if weights is not None and (not isinstance(weights, list) or len(weights) != anchors
                                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
                                or not sum(weights)):
        raise ConfigError(f"{name} must list one non-negative weight per anchor ({anchors}), got {weights!r}.")


def _tracker_names() -> list[str]:
    from accelerate.utils import LoggerType

    return sorted(t.value for t in LoggerType if t.value != "all")


def config_help() -> str:
    """Every setting with its type, default and help (the epilog of ``pretrain.py --help``)."""
    lines = ["settings (key=value; nested keys dotted, e.g. template.ranks=[96,192,192] final_eval.probe=true):"]
    for cls, prefix in ((TrainConfig, ""), (PoaSettings, "poa."), (EvalSettings, "final_eval.")):
        defaults = cls()
        for f in dataclasses.fields(cls):
            if f.name in _SECTIONS:
                continue
            default = getattr(defaults, f.name)
            lines.append(f"  {prefix + f.name:<24} {f.metadata.get('help', '')} [default: {default!r}]")
    lines.append(f"  template.<field>         one of: {', '.join(TemplateConfig.field_names())} (defaults: sweet_hub.TemplateConfig)")
    return "\n".join(lines)


def set_cpu_threads(accelerator, requested: int | None = None) -> int:
    """Give each process its share of the CPU cores: ``accelerate launch --cpu`` leaves one
    thread per process, which halved throughput on a 2-core machine (measured)."""
    import torch

    if accelerator.device.type == "cpu":
        torch.set_num_threads(requested or max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    return torch.get_num_threads()
