"""What makes a template good: capacity (ranks), anchor sampling and the SSL recipe, at equal wall-clock.

    python benchmarks/recipe_study.py                     # every variant (about 1 h on 2 CPU cores)
    python benchmarks/recipe_study.py --only base crops   # some variants (cached runs are reused)
    python benchmarks/recipe_study.py --quick             # the same pipeline at toy scale (test suite)

Every variant is one ``training/pretrain.py`` run with ``time_budget_minutes`` (the learning-rate
and EMA schedules follow elapsed time, so a variant with slower steps sees fewer images, not a
truncated schedule). Runs go two at a time with one CPU thread each, so every variant gets the
same share of the machine. Per-size pre-training of the largest anchor gets a third of the
budget: three anchors trained one by one would share the same total time.

Quality is read on a *validation* protocol: k-NN (cosine, k=20) and a linear probe of frozen
features, memory bank = 5000 train images, queries = 2000 other train images. The test images
are never looked at here, so choosing a recipe from this table does not tune on them. Sizes:
the anchors and unseen ones (narrower, wider, deeper than every anchor). For each rank choice,
the materialization time of the largest size is reported beside its quality.

Writes benchmarks/results/recipe_study.json and a plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import ROOT, command, pyplot, save_result

GENTLE = {"global_scale": [0.5, 1.0], "local_scale": [0.2, 0.5]}
R192 = {**GENTLE, "template.ranks": [96, 192, 192]}
ONLY8 = {**R192, "anchor_weights": [0, 0, 1], "width_scaling_p": 0.0}  # the 8x192 anchor alone, no stochastic widths
V3 = {**R192, "sandwich": True, "sandwich_all": True, "lr": 3.0e-3}  # every anchor in each update (v3/v4 bundled recipe)
PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "budget_minutes": 12.0,
        "common": {"template.anchors": [[4, 64], [6, 128], [8, 192]], "batch_size": 256, "warmup_steps": 30,
                   "save_every": 100, "max_steps": 100_000},
        "sizes": [[4, 64], [6, 128], [8, 192], [6, 96], [6, 160], [8, 256], [10, 256], [12, 384]],
        "eval": {"train_size": 5000, "test_size": 2000},
        "variants": {
            "base": {},                                                     # the v1 recipe (bundled template)
            "crops": GENTLE,                                                # gentler crops for 28x28 silhouettes
            "crops_r192": {**GENTLE, "template.ranks": [96, 192, 192]},     # rank = largest anchor width
            "crops_r384": {**GENTLE, "template.ranks": [96, 384, 384]},     # 2x that
            "crops_ema": {**GENTLE, "teacher": "ema", "ema_momentum": 0.99},
            "crops_big": {**GENTLE, "anchor_weights": [1, 1, 2], "width_scaling_max": 256},
            "single_8x192": {**GENTLE, "method": "single", "size": [8, 192], "budget_fraction": 1 / 3},
            # round 2, on the capacity winner that fits the wheel (ranks 96/192/192)
            "r192_nolocal": {**R192, "n_local": 0},
            "r192_lr2e-3": {**R192, "lr": 2.0e-3},
            "r192_t0.1": {**R192, "temperature": 0.1},
            "r192_big": {**R192, "anchor_weights": [1, 1, 2], "width_scaling_max": 256},
            # finer patches (49 tokens instead of 16; local crops 16 px = 4x4 patches): defined, not run yet (3x slower steps)
            "r192_patch4": {**R192, "template.patch_size": 4, "local_size": 16},
            # round 3: a pixel term (linear read-back of each global view from its pooled features)
            "r192_recon1": {**R192, "recon_weight": 1.0},
            "r192_recon4": {**R192, "recon_weight": 4.0},
            # round 4: depth-wise stochastic scaling (random depths between the anchors'), alone and with widths to 256
            "r192_depth": {**R192, "depth_scaling_p": 0.5},
            "r192_depth_wide": {**R192, "depth_scaling_p": 0.5, "width_scaling_max": 256},
            # round 5: the best round-2 change (T=0.1) against its base, both with another seed, run side by side
            "crops_r192_s1": {**R192, "seed": 1},
            "r192_t0.1_s1": {**R192, "temperature": 0.1, "seed": 1},
            # round 7: an objective on the tokens: 40% of each global view's patches hidden, their pixels predicted
            # from the final tokens (SimMIM-style), two seeds against crops_r192 / crops_r192_s1
            "r192_mim": {**R192, "mask_ratio": 0.4, "mim_weight": 1.0},
            "r192_mim_s1": {**R192, "mask_ratio": 0.4, "mim_weight": 1.0, "seed": 1},
            # round 8: which part of round 7 costs: the masking alone (no prediction), next to crops_r192 re-run on the
            # same machine (round 7's machine saw ~45% more images in the budget than round 1's)
            "r192_mask": {**R192, "mask_ratio": 0.4},
            "crops_r192_rerun": R192,
            # round 9: the prediction on a pass of its own (the contrastive loss sees unmasked views), two seeds
            "r192_mim_sep": {**R192, "mask_ratio": 0.4, "mim_weight": 1.0, "mim_separate": True},
            "r192_mim_sep_s1": {**R192, "mask_ratio": 0.4, "mim_weight": 1.0, "mim_separate": True, "seed": 1},
            # round 10: does the Tucker form itself learn slower than plain weights? SWEET trained at the 8x192 anchor only
            # (no other anchor, no stochastic widths) against per-size 8x192 pre-training, both with the whole budget
            "r192_only8": ONLY8,
            "single_8x192_full": {**GENTLE, "method": "single", "size": [8, 192]},
            # round 11: round 10's gap at 8x192 (75.4 vs 77.1) with O(1) factor entries: an Adam step moves the materialized
            # weights by a smaller fraction than plain ones, so a higher learning rate, at the anchor alone and for the recipe
            "r192_only8_lr3e-3": {**ONLY8, "lr": 3.0e-3},
            "r192_lr3e-3": {**R192, "lr": 3.0e-3},
            # round 12: the higher rate only where round 11 suggests it is missing: each anchor's scalers are updated on a third
            # of the steps, the shared cores on all; next to the base re-run in this round
            "r192_scaler_lr3": {**R192, "scaler_lr_scale": 3.0},
            "crops_r192_rerun2": R192,
            # round 13: anchors trained one after another instead of side by side. Phase 1 trains the template at the 8x192
            # anchor alone (round 11's 77.0 at 8x192) for 2/3 of the budget; phase 2 ("initial_from") starts from it and
            # trains all anchors for the last 1/3, either with the recipe as is or with the shared cores at a tenth of the
            # rate (scalers at the usual 1e-3), so the smaller anchors' scalers catch up without pulling the cores away
            "r192_only8_p1": {**ONLY8, "lr": 3.0e-3, "budget_fraction": 2 / 3},
            "r192_two_phase": {**R192, "initial_from": "r192_only8_p1", "budget_fraction": 1 / 3},
            "r192_two_phase_slowcore": {**R192, "initial_from": "r192_only8_p1", "budget_fraction": 1 / 3, "lr": 1.0e-4,
                                        "scaler_lr_scale": 10.0},
            "crops_r192_rerun3": R192,
            # round 14: round 13's two phases again with another seed, and with the budget split 1/2 + 1/2 (phase 2's
            # 4 min gave each smaller anchor ~27 steps)
            "r192_only8_p1_s1": {**ONLY8, "lr": 3.0e-3, "budget_fraction": 2 / 3, "seed": 1},
            "r192_two_phase_s1": {**R192, "initial_from": "r192_only8_p1_s1", "budget_fraction": 1 / 3, "seed": 1},
            "r192_only8_p1_half": {**ONLY8, "lr": 3.0e-3, "budget_fraction": 1 / 2},
            "r192_two_phase_half": {**R192, "initial_from": "r192_only8_p1_half", "budget_fraction": 1 / 2},
            # round 15: the anchors side by side in one update instead of one per step: every step trains the largest
            # anchor and one smaller size (sandwich rule), with the smaller size's targets its own or the largest's
            # (in-place distillation, as slimmable networks and BigNAS train their sub-networks)
            "r192_sandwich": {**R192, "sandwich": True},
            "r192_sandwich_kd": {**R192, "sandwich": True, "inplace_distill": True},
            # round 16: rounds 13-15 read as "8x192's score follows the time spent at it, the other anchors neither help nor
            # hurt it"; width-wise scaling narrows half the steps of every anchor, so fewer (or no) stochastic widths
            "r192_wss0": {**R192, "width_scaling_p": 0.0},
            "r192_wss0.25": {**R192, "width_scaling_p": 0.25},
            # round 17: round 16's lead of width_scaling_p=0 (+0.7 k-NN at the anchors, +1.1 probe) with seed 1, beside the
            # base with seed 1 on the same machine
            "r192_wss0_s1": {**R192, "width_scaling_p": 0.0, "seed": 1},
            "crops_r192_rerun3_s1": {**R192, "seed": 1},
            # round 18: bf16 autocast (this CPU has AVX512-BF16; an 8x192 step ran 13% more images per second, alone on
            # one thread), and per-size 8x192 with the whole budget re-run on the machine of rounds 13-17
            "r192_bf16": {**R192, "mixed_precision": "bf16"},
            "single_8x192_full_rerun": {**GENTLE, "method": "single", "size": [8, 192]},
            # round 19: round 11's lr 3e-3, which the form needs at an anchor, on the shared cores and the head only (the
            # anchors' scalers at 1e-3: scaler_lr_scale=1/3); the whole recipe at 3e-3 lost and 3x on the scalers was noise
            "r192_core_lr3": {**R192, "lr": 3.0e-3, "scaler_lr_scale": 1 / 3},
            "crops_r192_rerun4": R192,
            # round 20: round 19 says the cores cannot take larger steps while anchors take turns; the sandwich rule
            # updates them for the largest and a smaller anchor at once, so it is tried at lr 3e-3
            "r192_sandwich_lr3e-3": {**R192, "sandwich": True, "lr": 3.0e-3},
            "crops_r192_rerun5": R192,
            # round 21: round 20's lead (-0.2 / +1.4 k-NN at anchors / unseen sizes) with seed 1, beside a seed-1 base
            "r192_sandwich_lr3e-3_s1": {**R192, "sandwich": True, "lr": 3.0e-3, "seed": 1},
            "crops_r192_rerun5_s1": {**R192, "seed": 1},
            # round 22: round 21 did not repeat round 20's gain at unseen sizes, but with both seeds the sandwich at lr 3e-3
            # lifted 8x192 and 12x384 and cost 4x64; so every anchor in each update (4x64 trained every step too), two
            # seeds against crops_r192_rerun5 / crops_r192_rerun5_s1
            "r192_sandwich_all_lr3e-3": V3,
            "r192_sandwich_all_lr3e-3_s1": {**V3, "seed": 1},
            # round 23: round 22 gave +0.65 / +1.2 (seed 0) and -0.05 / +0.25 (seed 1), and every sandwich run so far lifted
            # the probe at 8x192 and above; whether the lead grows with the budget, both at 3x it (36 min)
            "long3_crops_r192": {**R192, "budget_fraction": 3},
            "long3_r192_sandwich_all_lr3e-3": {**V3, "budget_fraction": 3},
            # round 24: with every anchor in each update (the bundled v3 recipe), 8x192 stays the best size and the larger
            # ones trail it (they are derived from or distilled from it); a fourth, larger anchor (10x256: one more depth and
            # width, its step 2.2x an 8x192 one) beside the v3 recipe re-run on the same machine, both at 3x the budget
            "long3_v3_rerun": {**V3, "budget_fraction": 3},
            "long3_v3_a10x256": {**V3, "budget_fraction": 3,
                                 "template.anchors": [[4, 64], [6, 128], [8, 192], [10, 256]]},
            # round 25: bf16 autocast (+13% images per second in round 18, no quality cost there) on the v3 recipe, read
            # against round 24's long3_v3_rerun; beside it the v3 recipe with seed 1, the seed noise of the 36-min runs
            "long3_v3_bf16": {**V3, "budget_fraction": 3,
                              "mixed_precision": "bf16"},
            "long3_v3_rerun_s1": {**V3, "budget_fraction": 3, "seed": 1},
            # round 26 (defined, not yet run): the v3 recipe moves quality from the small anchors to 8x192 at equal time
            # (equal_compute: 4x64 -1.35, 6x128 -2.5 under per-size); weigh the smaller anchors' losses twice, or scale widths
            # on a quarter of the steps (the smaller anchors then train at their own width more often), read against a v3 re-run
            "long3_v3_lossw221": {**V3, "budget_fraction": 3,
                                  "anchor_loss_weights": [2, 2, 1]},
            "long3_v3_wss0.25": {**V3, "budget_fraction": 3,
                                 "width_scaling_p": 0.25},
            # round 27: the read-outs lose 3 k-NN points between the final tokens (82-83, flattened) and their mean (the
            # protocol), and the contrastive loss makes the mean invariant to what the crops move; on centred 28x28
            # silhouettes the layout is much of the class. Weaker crops (global 0.8-1 of the area), without local crops
            # (which also frees their time for more images), each change alone, beside the v3 recipe re-run at 12 min
            "v3_rerun12": V3,
            "v3_weak_nolocal": {**V3, "global_scale": [0.8, 1.0], "n_local": 0},
            "v3_nolocal": {**V3, "n_local": 0},
            "v3_weak": {**V3, "global_scale": [0.8, 1.0]},
            # round 28: round 27's lead of no local crops (+1.0 / +0.6 k-NN at anchors / unseen sizes: 36% more images in the
            # budget) with seed 1, beside a seed-1 v3 re-run
            "v3_rerun12_s1": {**V3, "seed": 1},
            "v3_nolocal_s1": {**V3, "n_local": 0, "seed": 1},
            # round 29: no local crops led by +1.0 / +0.6 (seed 0) and +1.1 / +0.85 (seed 1) at 12 min; whether the lead holds at 3x
            # the budget (a longer run gains less from more images), beside the v3 recipe re-run on the same machine
            "long3_v3_nolocal": {**V3, "n_local": 0, "budget_fraction": 3},
            "long3_v3_rerun2": {**V3, "budget_fraction": 3},
            # round 30: the batch size, never varied so far (256). A contrastive loss takes its negatives from the batch, and
            # SimCLR gained most from larger batches at short schedules (the bundled run is ~13 epochs); at equal wall-clock a
            # larger batch sees the same images in fewer steps. The v5 recipe (round 29's long3_v3_nolocal) at 2x and 4x the
            # batch, same lr and warmup steps, both at 3x the budget, read against round 29 on the same machine
            "long3_v5_b512": {**V3, "n_local": 0, "budget_fraction": 3, "batch_size": 512},
            "long3_v5_b1024": {**V3, "n_local": 0, "budget_fraction": 3, "batch_size": 1024},
            # round 31: round 30 went the other way (512: -0.5 / -1.2 k-NN at anchors / unseen sizes, 1024: -2.2 / -2.3): at this
            # budget more optimizer steps beat more negatives per step, so half the batch (128, twice the steps), two seeds
            "long3_v5_b128": {**V3, "n_local": 0, "budget_fraction": 3, "batch_size": 128},
            "long3_v5_b128_s1": {**V3, "n_local": 0, "budget_fraction": 3, "batch_size": 128, "seed": 1},
            # round 32: an objective on the tokens that keeps the pooled one: the final tokens hold ~3 k-NN points more than their
            # mean, and masked-patch prediction (rounds 7-9) cost images without lifting the mean. A dense contrastive term
            # (each token of a global view picks the other view's token at the same image position, DenseCL/VICRegL-style,
            # weight 0.5 beside the pooled loss) on the v5 recipe, beside the v5 recipe re-run on the same machine
            "long3_v5_dense0.5": {**V3, "n_local": 0, "budget_fraction": 3, "dense_weight": 0.5},
            "long3_v5_rerun": {**V3, "n_local": 0, "budget_fraction": 3},
            # round 33: round 32's dense term cost 25% of the images (each of the three sizes in an update pays it in full) and
            # scored lower at 8 of 8 sizes; on the largest anchor's loss only it costs a third, so what is left is the objective
            # itself, at weight 0.5 and 0.2; read against round 32's long3_v5_rerun (the same machine)
            "long3_v5_dense0.5_largest": {**V3, "n_local": 0, "budget_fraction": 3, "dense_weight": 0.5, "dense_largest_only": True},
            "long3_v5_dense0.2_largest": {**V3, "n_local": 0, "budget_fraction": 3, "dense_weight": 0.2, "dense_largest_only": True},
            # round 34: two parts of the SSL recipe never varied: the augmentations beyond crops (crop, flip, brightness/contrast
            # jitter only; SimCLR found augmentation strength the largest lever) and the projection head (SimCLR's has
            # BatchNorm, ours none). Random erasing of each global view (p=0.5, 2-25% of the area, set to the black
            # background: an occlusion the features must see past) and BatchNorm on the projector's hidden layer, each on
            # the v5 recipe, read against round 32's long3_v5_rerun (the same machine)
            "long3_v5_erase0.5": {**V3, "n_local": 0, "budget_fraction": 3, "erase_p": 0.5},
            "long3_v5_projbn": {**V3, "n_local": 0, "budget_fraction": 3, "proj_norm": "batch"},
            # round 35: BatchNorm in the projector led at 8 of 8 sizes (+0.8 / +0.9 k-NN at the anchors / unseen sizes, probe
            # +0.5 / +0.65), erasing did not (+0.45 / -0.15); but this machine ran 11.6% more images in the 36 min than in round
            # 32. Both again with seed 1, side by side in one round: the v5 recipe and the BatchNorm projector
            "long3_v5_rerun_s1": {**V3, "n_local": 0, "budget_fraction": 3, "seed": 1},
            "long3_v5_projbn_s1": {**V3, "n_local": 0, "budget_fraction": 3, "proj_norm": "batch", "seed": 1},
            # round 36: the BatchNorm projector led at 8 of 8 sizes with each seed (+0.8 / +0.9 and +1.0 / +0.85 k-NN at the
            # anchors / unseen sizes). SimCLR's projector is also wider (2048 hidden); the BatchNorm projector at 2048 hidden
            # and 256 out, seeds 0 and 1, read against rounds 34-35's long3_v5_projbn / long3_v5_projbn_s1 (the same machine)
            "long3_v5_projbn_wide": {**V3, "n_local": 0, "budget_fraction": 3, "proj_norm": "batch", "proj_hidden": 2048,
                                     "proj_dim": 256},
            "long3_v5_projbn_wide_s1": {**V3, "n_local": 0, "budget_fraction": 3, "proj_norm": "batch", "proj_hidden": 2048,
                                        "proj_dim": 256, "seed": 1},
            # round 37: the objective itself. InfoNCE asks every image to differ from every other, same class or not;
            # Barlow Twins (no negatives, decorrelated dimensions) has no such term and relies on a BatchNorm projector, which
            # just led. On the v7 recipe (the v5 recipe with the BatchNorm projector), at the projector width of round 36
            # (Barlow Twins wants a wide output) and at the default one, read against long3_v5_projbn (the same round's machine
            # re-runs it if it is not cached there)
            "long3_v7_barlow": {**V3, "n_local": 0, "budget_fraction": 3, "proj_norm": "batch", "objective": "barlow"},
            "long3_v7_barlow_wide": {**V3, "n_local": 0, "budget_fraction": 3, "proj_norm": "batch", "objective": "barlow",
                                     "proj_hidden": 2048, "proj_dim": 1024},
            # round 37 read: Barlow Twins scores lower k-NN at 7 of 8 sizes (mean -1.25, probe -0.5), wide at 8 of 8 (-1.6,
            # probe -1.5): not a lever at this budget; InfoNCE stays
            # round 38: every recipe knob measured leaves the 110-min anchors at 80.5-81.5; the lever named next is more tokens
            # per image. Patch 4 (49 tokens) at 3x the budget, beside the v5 recipe re-run at the same time (equal time) and
            # at a third of it (12 min: about the images patch 4 sees in 36 min), all on the same machine: is a token worth
            # its cost per image, and how far is it from paying at equal time?
            "long3_v5_patch4": {**V3, "n_local": 0, "budget_fraction": 3, "template.patch_size": 4},
            "v3_nolocal_rerun": {**V3, "n_local": 0},
            "long3_v5_rerun2": {**V3, "n_local": 0, "budget_fraction": 3},
            # round 38 read: patch 4 saw 38,912 images (3.2x fewer) and scores -8.9 / -11.0 k-NN at equal time and -6.3 / -8.5
            # at equal images, lower at 8 of 8 sizes: more tokens per image are not the lever here, not even per image
        },
    },
    "quick": {
        "budget_minutes": 0.05,
        "common": {"template.anchors": [[2, 32], [3, 48]], "template.ranks": [8, 16, 16], "template.vector_rank": 4,
                   "template.head_dim": 16, "batch_size": 32, "warmup_steps": 1, "save_every": 100, "max_steps": 3,
                   "num_images": 256, "n_local": 1},
        "sizes": [[2, 32], [3, 48], [4, 64]],
        "eval": {"train_size": 300, "test_size": 200},
        "variants": {"base": {}, "crops": GENTLE, "single": {"method": "single", "size": [3, 48], "budget_fraction": 0.5},
                     "base_then_crops": {**GENTLE, "initial_from": "base", "budget_fraction": 0.5}},
    },
}


def run_variant(name: str, changes: dict[str, Any], plan: dict[str, Any], run_dir: Path, threads: int, force: bool) -> dict[str, Any]:
    """Pre-train one variant in its own process (cached: reused when its summary exists)."""
    out = run_dir / name
    summary = out / "summary.json"
    if summary.is_file() and not force:
        return json.loads(summary.read_text())
    changes = dict(changes)
    budget = plan["budget_minutes"] * changes.pop("budget_fraction", 1.0)
    if "initial_from" in changes:  # a later phase: starts from the template another variant saved
        changes["initial_template"] = str(run_dir / changes.pop("initial_from") / "template")
    final_eval = {"sizes": plan["sizes"], **plan["eval"], "holdout": True, "probe": True, "random_init": False, "raw_pixels": False}
    settings = {**plan["common"], **changes, "output_dir": str(out), "num_threads": threads, "time_budget_minutes": budget,
                "final_eval": final_eval}
    cmd = [sys.executable, str(ROOT / "training" / "pretrain.py"), *[f"{k}={json.dumps(v)}" for k, v in settings.items()]]
    if (out / "checkpoints").is_dir() and not force:
        cmd.insert(2, "--resume")
    out.mkdir(parents=True, exist_ok=True)
    print(f"[recipe] {name}: budget {budget:.1f} min", flush=True)
    with (out / "stdout.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(summary.read_text())


def materialize_ms(template_dir: Path, depth: int, width: int, repeats: int = 5) -> float:
    """Median wall time of materializing (depth, width) from a saved template (2 threads)."""
    import statistics

    import torch

    from sweet_hub import SweetTemplate

    torch.set_num_threads(2)
    template = SweetTemplate.from_pretrained(str(template_dir))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        template.state_dict_for(depth, width)
        times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 1)


def baselines(plan: dict[str, Any]) -> dict[str, Any]:
    """Pixel and random-init references on the same validation protocol."""
    from sweet_hub.config import TemplateConfig
    from training.evaluate import EvalProtocol, evaluate_model, pixel_baselines
    from training.report import random_vit

    protocol = EvalProtocol(train_size=plan["eval"]["train_size"], test_size=plan["eval"]["test_size"], holdout=True)
    out: dict[str, Any] = {k: round(v, 2) for k, v in pixel_baselines(protocol).items()}
    head_dim = plan["common"].get("template.head_dim", 32)
    tcfg = TemplateConfig(head_dim=head_dim, anchors=tuple(tuple(a) for a in plan["common"]["template.anchors"]))
    out["random_init"] = {}
    for depth, width in plan["sizes"]:
        metrics = evaluate_model(random_vit(tcfg, depth, width), protocol, tcfg.mean, tcfg.std, probe=True)
        out["random_init"][f"{depth}x{width}"] = {"knn": round(metrics["knn"], 2), "linear_probe": round(metrics["linear_probe"], 2)}
    return out


def phases(name: str, variants: dict[str, dict[str, Any]]) -> list[str]:
    """The variant and the variants it starts from (``initial_from``), earliest first."""
    chain = [name]
    while (parent := variants[chain[0]].get("initial_from")) is not None:
        if parent not in variants or parent in chain:
            raise ValueError(f"variant {chain[0]!r}: initial_from={parent!r} must name another variant, without cycles")
        chain.insert(0, parent)
    return chain


def summarize(name: str, variants: dict[str, dict[str, Any]], summaries: dict[str, dict[str, Any]], run_dir: Path,
              anchors: list[list[int]]) -> dict[str, Any]:
    """One variant's row. A later phase counts the images, seconds and steps of the phases before it, so chained
    variants are read at the budget they used in all."""
    changes, summary = variants[name], summaries[name]
    rows = {f"{r['depth']}x{r['width']}": {"knn": r["knn"], "linear_probe": r.get("linear_probe"), "init": r["init"]}
            for r in summary["metrics"]["sizes"] if r.get("available", True)}
    anchor_keys = {f"{d}x{w}" for d, w in anchors}
    mean = lambda keys, m: round(sum(rows[k][m] for k in keys) / len(keys), 2) if keys else None
    seen = [k for k in rows if k in anchor_keys]
    unseen = [k for k in rows if k not in anchor_keys]
    total = lambda key: sum(summaries[n][key] for n in phases(name, variants))
    out = {"changes": changes, "images_seen": total("images_seen"), "train_seconds": round(total("train_seconds"), 1),
           "steps": total("steps"), "sizes": rows,
           "mean_knn_anchors": mean(seen, "knn"), "mean_knn_unseen": mean(unseen, "knn"),
           "mean_probe_anchors": mean(seen, "linear_probe"), "mean_probe_unseen": mean(unseen, "linear_probe")}
    template_dir = run_dir / name / "template"
    if template_dir.is_dir():
        largest = max((tuple(map(int, k.split("x"))) for k in rows), key=lambda s: s[0] * s[1] ** 2)
        out["materialize_ms"] = {"size": f"{largest[0]}x{largest[1]}", "ms": materialize_ms(template_dir, *largest)}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """One row per variant (run order), mean k-NN at the anchors and at unseen sizes: readable with many variants,
    where bars per size are not (the per-size numbers are in the JSON and the README table)."""
    plt = pyplot()
    names = list(result["variants"])
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(names) + 1.6))
    ys = range(len(names))[::-1]
    for key, marker, label in (("mean_knn_anchors", "o", "anchors"), ("mean_knn_unseen", "s", "unseen sizes")):
        points = [(result["variants"][n][key], y) for n, y in zip(names, ys) if result["variants"][n][key] is not None]
        ax.scatter([x for x, _ in points], [y for _, y in points], marker=marker, label=f"k-NN, {label}", zorder=3)
    ax.axvline(result["baselines"]["centred_pixels_knn"], color="k", ls="--", lw=1, label="centred pixels")
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.set(xlabel="validation k-NN (%), mean over sizes", title=f"recipe study, {result['budget_minutes']} min per variant")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy scale (seconds), for the test suite")
    parser.add_argument("--only", nargs="+", help="run these variants only (the JSON keeps earlier results of the others)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (each gets cores / parallel threads)")
    parser.add_argument("--force", action="store_true", help="re-run variants whose results are cached")
    parser.add_argument("--run-dir", default=None, help="where runs are kept (default benchmarks/runs/recipe[_quick])")
    parser.add_argument("--out", default=None)
    parser.add_argument("--note", help="a sentence about this invocation, appended to the notes the JSON (and README) keep")
    args = parser.parse_args(argv)
    import os

    plan = PLANS["quick" if args.quick else "full"]
    suffix = "_quick" if args.quick else ""
    run_dir = Path(args.run_dir or ROOT / "benchmarks" / "runs" / f"recipe{suffix}")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"recipe_study{suffix}.json")
    names = args.only or list(plan["variants"])
    unknown = sorted(set(names) - set(plan["variants"]))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(plan['variants'])}")
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    # what this invocation measures: a variant whose summary exists is reused (an invocation of cached variants only
    # adds its --note, and no row to the invocations table)
    measured = [n for n in names if args.force or not (run_dir / n / "summary.json").is_file()]
    # every variant with the phases it starts from; by chain length, so no worker waits on a phase queued behind it
    needed = sorted(dict.fromkeys(n for name in names for n in phases(name, plan["variants"])),
                    key=lambda n: len(phases(n, plan["variants"])))

    def run_after_parent(name: str) -> dict[str, Any]:
        parent = plan["variants"][name].get("initial_from")
        if parent is not None:
            futures[parent].result()  # submitted before this one, so it is running or done
        return run_variant(name, plan["variants"][name], plan, run_dir, threads, args.force and name in names)

    with ThreadPoolExecutor(args.parallel) as pool:
        futures: dict[str, Any] = {}
        for name in needed:
            futures[name] = pool.submit(run_after_parent, name)
        summaries = {n: f.result() for n, f in futures.items()}

    previous = json.loads(out.read_text()) if out.is_file() and args.only else {}
    variants = dict(previous.get("variants", {}))
    anchors = plan["common"]["template.anchors"]
    for name in needed:
        variants[name] = summarize(name, plan["variants"], summaries, run_dir, anchors)
    result = {
        "command": command("recipe_study.py", argv), "budget_minutes": plan["budget_minutes"], "threads_per_run": threads,
        "parallel_runs": args.parallel, "protocol": "validation: k-NN (cosine, k=20, T=0.07) and linear probe; "
        f"{plan['eval']['train_size']} train images as memory, {plan['eval']['test_size']} other train images as queries",
        "anchors": anchors, "baselines": previous.get("baselines") or baselines(plan), "variants": variants,
        "notes": " ".join(n for n in (previous.get("notes"), args.note) if n) or None,
        # one entry per invocation, so a table assembled from several rounds says which command measured what
        "invocations": [*previous.get("invocations", []),
                        *([{"command": command("recipe_study.py", argv), "variants": measured}] if measured else [])],
    }
    for name in needed:
        v = variants[name]
        print(f"{name:14s} anchors k-NN {v['mean_knn_anchors']}  unseen k-NN {v['mean_knn_unseen']}  "
              f"probe {v['mean_probe_anchors']}/{v['mean_probe_unseen']}  images {v['images_seen']:,}")
    save_result(result, out, plot)
    return result


if __name__ == "__main__":
    main()
