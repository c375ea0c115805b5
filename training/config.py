"""Training config: defaults, a YAML file, and ``key=value`` overrides, validated in one place.

Unknown keys are errors (a typo must not silently train with a default), and the message lists
the keys that exist.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEFAULTS", "ConfigError", "load_config", "set_cpu_threads"]


class ConfigError(ValueError):
    """A training config is wrong; the message names the key and the fix."""


DEFAULTS: dict[str, Any] = {
    "method": "sweet",                 # sweet | poa | single
    "title": None,                     # model card title
    "output_dir": "out/fmnist",
    "data": "fashion_mnist",           # fashion_mnist | imagefolder:PATH | Hub dataset id
    "num_images": None,                # use a random subset of the training split
    "seed": 0,
    "template": {                      # SweetTemplate arguments (also the architecture of poa/single)
        "img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "head_dim": 32,
        "ranks": [48, 128, 128], "vector_rank": 16,
        "anchors": [[4, 64], [6, 128], [8, 192]],
        "mean": [0.2860], "std": [0.3530], "global_pool": "avg",  # avg measured +2-5 k-NN over token (CHANGELOG)
        "depth_rescale": True, "width_rescale": False,
        "label_names": None,
    },
    "size": [8, 192],                  # [depth, width] of method=single and of POA's full network
    "poa": {"elastic_widths": None, "elastic_depths": None, "small_bias": 1.0,
            "intact_weight": 0.8, "elastic_weight": 0.2, "distill_weight": 1.0},
    # optimization
    "max_steps": 3000,
    "time_budget_minutes": None,       # stop after this much training time; the schedules follow elapsed time
    "batch_size": 256,                 # images per optimizer step, over all processes
    "grad_accum": 1,
    "lr": 1.0e-3,
    "min_lr": 1.0e-5,
    "warmup_steps": 200,
    "weight_decay": 0.05,
    "clip_grad": 3.0,
    "mixed_precision": None,           # None: the launcher decides; "no" | "bf16"
    "num_threads": None,               # torch CPU threads per process; None: cores / processes
                                       # (accelerate launch --cpu otherwise leaves 1 thread per process)
    # self-supervision
    "temperature": 0.2,
    "teacher": "none",                 # none (SimCLR-style) | ema (MoCo-v3-style targets)
    "ema_momentum": 0.996,
    "export_ema": False,
    "proj_hidden": 512,
    "proj_dim": 128,
    "n_global": 2,
    "n_local": 2,
    "local_size": 14,
    "global_scale": [0.35, 1.0],
    "local_scale": [0.1, 0.35],
    "jitter": 0.4,
    "width_scaling_p": 0.5,            # width-wise stochastic scaling
    "width_scaling_max": None,         # largest stochastic width (None: the largest anchor width)
    "anchor_weights": None,            # sampling weight per anchor (None: uniform)
    "depth_scaling_p": 0.0,
    # bookkeeping
    "save_every": 250,
    "save_total_limit": 2,
    "log_every": 10,
    "log_with": "none",                # none | tensorboard (the CSV log is always written)
    # holdout: query images come from the train split (disjoint from the k-NN memory), for choosing a recipe
    # without looking at the test images
    "final_eval": {"sizes": [], "train_size": 5000, "test_size": 2000, "random_init": True, "raw_pixels": True, "holdout": False,
                   "probe": False},
}

_CHOICES = {"method": ("sweet", "poa", "single"), "teacher": ("none", "ema"), "mixed_precision": (None, "no", "bf16", "fp16"),
            "log_with": ("none", "tensorboard")}
_POSITIVE_INTS = ("max_steps", "batch_size", "grad_accum", "save_every", "save_total_limit", "log_every", "n_global", "local_size")


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"Unknown config key '{where}{key}'. Valid keys here: {', '.join(sorted(base))}.")
        if isinstance(base[key], dict) and isinstance(value, dict) and key not in ("final_eval",):
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


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """DEFAULTS <- YAML file <- overrides, then validated."""
    cfg = copy.deepcopy(DEFAULTS)
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
        cfg = _merge(cfg, loaded, "")
    for text in overrides or []:
        cfg = _merge(cfg, _parse_override(text), "")
    _validate(cfg)
    return cfg


_FLOATS = ("lr", "min_lr", "weight_decay", "clip_grad", "temperature", "ema_momentum", "jitter", "width_scaling_p", "depth_scaling_p")


def _validate(cfg: dict[str, Any]) -> None:
    for key in _FLOATS:  # YAML reads 1e-4 (no dot) as a string
        try:
            cfg[key] = float(cfg[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {cfg[key]!r}.") from None
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(f"{key}={cfg[key]!r} is not one of {choices}.")
    for key in _POSITIVE_INTS:
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}.")
    if cfg["batch_size"] % cfg["grad_accum"]:
        raise ConfigError(f"batch_size={cfg['batch_size']} must be divisible by grad_accum={cfg['grad_accum']}.")
    if not 0 <= cfg["width_scaling_p"] <= 1 or not 0 <= cfg["depth_scaling_p"] <= 1:
        raise ConfigError("width_scaling_p and depth_scaling_p are probabilities in [0, 1].")
    if cfg["temperature"] <= 0:
        raise ConfigError(f"temperature must be > 0, got {cfg['temperature']}.")
    budget = cfg["time_budget_minutes"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ConfigError(f"time_budget_minutes must be a positive number of minutes or null, got {budget!r}.")
    anchors = cfg["template"]["anchors"]
    weights = cfg["anchor_weights"]
    if weights is not None and (not isinstance(weights, list) or len(weights) != len(anchors)
                                or not all(isinstance(w, (int, float)) and w >= 0 for w in weights) or not sum(weights)):
        raise ConfigError(f"anchor_weights must list one non-negative weight per anchor ({len(anchors)}), got {weights!r}.")
    wmax = cfg["width_scaling_max"]
    if wmax is not None and (not isinstance(wmax, int) or wmax < max(w for _, w in anchors)):
        raise ConfigError(f"width_scaling_max must be an integer >= the largest anchor width, got {wmax!r}.")
    if not (isinstance(cfg["size"], list) and len(cfg["size"]) == 2):
        raise ConfigError(f"size must be [depth, width], got {cfg['size']!r}.")
    from sweet_hub import TemplateConfig, TemplateConfigError

    try:
        TemplateConfig(**{**cfg["template"], "anchors": [tuple(a) for a in cfg["template"]["anchors"]]})
    except (TemplateConfigError, TypeError) as e:
        raise ConfigError(f"template: {e}") from None


def set_cpu_threads(accelerator, requested: int | None = None) -> int:
    """Give each process its share of the CPU cores: ``accelerate launch --cpu`` leaves one
    thread per process, which halved throughput on a 2-core machine (measured)."""
    import os

    import torch

    if accelerator.device.type == "cpu":
        torch.set_num_threads(requested or max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    return torch.get_num_threads()
