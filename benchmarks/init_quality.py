"""Initialization quality, side by side: SWEET vs POA, weight selection, per-size pre-training, random.

    python benchmarks/init_quality.py            # full harness (~90 min on 2 CPU cores)
    python benchmarks/init_quality.py --quick    # the same pipeline at toy scale (a few minutes; in the test suite)
    python benchmarks/init_quality.py --seed 1   # every pre-training again with another seed (runs/full_seed1, *_seed1.json)

1. Pre-training, every method on the same data (Fashion-MNIST train, no labels), the same
   contrastive loss and augmentations, and the same number of images seen:
   SWEET (width-wise stochastic scaling on), SWEET without it (ablation), POA (elastic
   sub-networks of one full ViT), and per-size pre-training of some target sizes (the expensive
   upper bound, also the source of weight selection). Runs are cached under benchmarks/runs/
   and resumed if interrupted.
2. Learned scalers for the unseen sizes (template frozen, 1000 unlabeled images).
3. For every size (anchors and unseen: other depths, other widths, wider than every anchor) and
   every initialization: k-NN and linear probe of frozen features, fine-tuning with 1% of the
   labels for a fixed number of steps (mean and std over seeds), and k-NN / linear probe on a
   transfer set (scikit-learn digits, resized). A size a method cannot produce is "n/a".

Writes benchmarks/results/init_quality.json (or init_quality_quick.json) and a plot.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, command, pyplot, save_result

# The bundled template's recipe (training/configs/fmnist.yaml) at a shorter schedule: ranks 96/192/192, gentle crops,
# no local crops (for every method: the same augmentations), and for SWEET every anchor in each update at lr 3e-3.
TEMPLATE = {"ranks": [96, 192, 192], "vector_rank": 16, "head_dim": 32, "anchors": [[4, 64], [6, 128], [8, 192]]}
SWEET_RECIPE = ["sandwich=true", "sandwich_all=true", "lr=3e-3"]
PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "pretrain": {"max_steps": 300, "batch_size": 256, "warmup_steps": 30, "save_every": 100,
                     "global_scale": [0.5, 1.0], "local_scale": [0.2, 0.5], "n_local": 0},
        "template": TEMPLATE,
        "poa_full": [8, 192],
        "per_size": [[8, 192], [6, 160], [6, 128], [4, 64]],  # every anchor, and one unseen size
        "unseen": [[6, 96], [6, 160], [10, 256]],
        "learned": {"images": 1000, "steps": 300},
        "eval": {"train_size": 5000, "test_size": 2000, "finetune_labels": 600, "finetune_steps": 100, "seeds": [0, 1, 2]},
    },
    "quick": {
        "pretrain": {"max_steps": 4, "batch_size": 32, "warmup_steps": 1, "save_every": 4, "num_images": 256, "n_local": 1},
        "template": {"ranks": [8, 16, 16], "vector_rank": 4, "head_dim": 16, "anchors": [[2, 32], [3, 48]]},
        "poa_full": [3, 48],
        "per_size": [[3, 48]],
        "unseen": [[2, 16], [4, 64]],
        "learned": {"images": 64, "steps": 3},
        "eval": {"train_size": 300, "test_size": 200, "finetune_labels": 100, "finetune_steps": 3, "seeds": [0]},
    },
}
METRICS = ("knn", "linear_probe", "finetune_mean", "transfer_knn")  # the headline metrics of evaluate_init
INITS = ["sweet", "sweet_learned", "sweet_no_wss", "poa", "weight_selection", "per_size", "random"]


def pretrain(name: str, overrides: list[str], run_dir: Path, force: bool) -> dict[str, Any]:
    """Run training/pretrain.py in its own process (cached: skipped when its summary exists)."""
    out = run_dir / name
    summary = out / "summary.json"
    if summary.is_file() and not force:
        return json.loads(summary.read_text())
    cmd = [sys.executable, str(ROOT / "training" / "pretrain.py"), f"output_dir={out}", "final_eval={sizes: null}", *overrides]
    if (out / "checkpoints").is_dir() and not force:
        cmd.insert(2, "--resume")
    print(f"[pretrain] {name}: {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd).returncode != 0:  # pretrain.py printed why; no traceback of this wrapper on top of it
        raise SystemExit(f"pre-training run '{name}' failed (its error is printed above); fix that and run this script "
                         f"again: finished runs are cached under {run_dir}")
    return json.loads(summary.read_text())


def add_seed_argument(parser: argparse.ArgumentParser) -> None:
    """``--seed``: the pre-training seed (batches, augmentations, init); evaluation seeds stay fixed."""
    parser.add_argument("--seed", type=int, default=0,
                        help="pre-training seed (default 0); another seed gets its own run cache and result file (suffix _seedN), "
                             "so a gap can be read against the seed noise")


def seed_suffix(seed: int) -> str:
    """Run-cache and result-file suffix of a pre-training seed: none for seed 0, the recorded default."""
    return f"_seed{seed}" if seed else ""


def pretrain_overrides(plan: dict[str, Any], seed: int = 0, **changes: Any) -> list[str]:
    """pretrain.py overrides shared by every method of a plan (``changes`` replace pretrain keys; seed 0 is pretrain.py's
    default and is left out, so the recorded commands stay as they were)."""
    t = plan["template"]
    return ([f"{k}={json.dumps(v)}" for k, v in {**plan["pretrain"], **changes, **({"seed": seed} if seed else {})}.items()]
            + [f"template.ranks={t['ranks']}", f"template.vector_rank={t['vector_rank']}", f"template.head_dim={t['head_dim']}",
               f"template.anchors={t['anchors']}"])


def evaluate_init(model, protocol, transfer, cfg, eval_plan: dict[str, Any]) -> dict[str, Any]:
    """Every metric of one initialized model: frozen k-NN / probe, transfer k-NN / probe, few-label fine-tuning."""
    from training.evaluate import evaluate_model, finetune_over_seeds

    row: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    feats = evaluate_model(model, protocol, cfg.mean, cfg.std, knn=True, probe=True)
    row.update(knn=round(feats["knn"], 2), linear_probe=round(feats["linear_probe"], 2))
    tr = evaluate_model(model, transfer, cfg.mean, cfg.std, knn=True, probe=True)
    row.update(transfer_knn=round(tr["knn"], 2), transfer_linear_probe=round(tr["linear_probe"], 2))
    row.update(finetune_over_seeds(model, protocol, cfg.mean, cfg.std, eval_plan["finetune_steps"], eval_plan["seeds"]))
    return row


def eval_protocols(cfg, eval_plan: dict[str, Any]):
    """The Fashion-MNIST protocol and the scikit-learn digits transfer protocol of a plan."""
    from training.evaluate import EvalProtocol

    protocol = EvalProtocol("fashion_mnist", cfg.img_size, cfg.in_chans, eval_plan["train_size"], eval_plan["test_size"],
                            eval_plan["finetune_labels"])
    return protocol, EvalProtocol("sklearn_digits", cfg.img_size, cfg.in_chans, 1000, 797, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy scale, a few minutes (smoke test)")
    parser.add_argument("--runs", help="where pre-training runs are cached (default: benchmarks/runs/<plan>)")
    parser.add_argument("--force", action="store_true", help="re-run cached pre-trainings")
    parser.add_argument("--out", help="JSON output (default: benchmarks/results/init_quality[_quick][_seedN].json)")
    add_seed_argument(parser)
    args = parser.parse_args(argv)

    import timm
    import torch

    from sweet_hub import SweetTemplate
    from sweet_hub.config import TemplateConfig
    from training.evaluate import pixel_baselines, raw_pixel_knn
    from training.learn_scalers import learn_scalers
    from training.poa import extract_vit
    from training.report import random_vit

    plan_name = "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    run_dir = Path(args.runs) if args.runs else ROOT / "benchmarks" / "runs" / (plan_name + seed_suffix(args.seed))
    started = time.perf_counter()

    # 1. pre-training: same data, loss and images seen for every method --------------------------
    common = pretrain_overrides(plan, seed=args.seed)
    runs: dict[str, list[str]] = {}
    for d, w in plan["per_size"]:  # first: they are also the sources of benchmarks/fit_vs_selection.py
        runs[f"single_{d}x{w}"] = ["method=single", f"size=[{d},{w}]", *common]
    runs.update({
        "sweet": ["method=sweet", *SWEET_RECIPE, *common],
        "sweet_no_wss": ["method=sweet", "width_scaling_p=0.0", *SWEET_RECIPE, *common],
        "poa": ["method=poa", f"size={plan['poa_full']}", "teacher=ema", *common],
    })
    summaries = {name: pretrain(name, overrides, run_dir, args.force) for name, overrides in runs.items()}
    commands = {name: "python training/pretrain.py " + " ".join(o) for name, o in runs.items()}

    # 2. artefacts and learned scalers ----------------------------------------------------------------
    sweet = SweetTemplate.from_pretrained(run_dir / "sweet" / "template")
    no_wss = SweetTemplate.from_pretrained(run_dir / "sweet_no_wss" / "template")
    cfg: TemplateConfig = sweet.config
    poa_full = timm.create_model(f"local-dir:{run_dir / 'poa' / 'poa'}", pretrained=True)
    singles = {tuple(s): timm.create_model(f"local-dir:{run_dir / f'single_{s[0]}x{s[1]}' / 'model'}", pretrained=True)
               for s in plan["per_size"]}
    ws_source_size = max(singles, key=lambda s: s[0] * s[1] ** 2)
    from training.data import load_image_tensors

    unlabeled = load_image_tensors("fashion_mnist", "train", cfg.img_size, cfg.in_chans).subset(plan["learned"]["images"], seed=123)
    learned = copy.deepcopy(sweet)
    learned_facts = {}
    for d, w in plan["unseen"]:
        learned_facts[f"{d}x{w}"] = learn_scalers(learned, d, w, unlabeled.images, steps=plan["learned"]["steps"], progress=False)
        print(f"[learned scalers] {d}x{w}: {learned_facts[f'{d}x{w}']}", flush=True)

    def build(init: str, d: int, w: int):
        if init == "sweet":
            return sweet.materialize(d, w)
        if init == "sweet_learned":
            return learned.materialize(d, w) if [d, w] in plan["unseen"] else None
        if init == "sweet_no_wss":
            return no_wss.materialize(d, w)
        if init == "poa":
            return extract_vit(poa_full, d, w, cfg.head_dim)
        if init == "weight_selection":
            return extract_vit(singles[ws_source_size], d, w, cfg.head_dim, rescale=False)
        if init == "per_size":
            return copy.deepcopy(singles[(d, w)]) if (d, w) in singles else None
        return random_vit(cfg, d, w)

    # 3. evaluation -------------------------------------------------------------------------------------
    eval_started = time.perf_counter()
    e = plan["eval"]
    protocol, transfer = eval_protocols(cfg, e)
    reference = {**{k: round(v, 2) for k, v in pixel_baselines(protocol).items()},
                 "transfer_raw_pixels_knn": round(raw_pixel_knn(transfer), 2)}
    sizes = [tuple(a) for a in cfg.anchors] + [tuple(s) for s in plan["unseen"]]
    rows = []
    for d, w in sizes:
        for init in INITS:
            model = build(init, d, w)
            row: dict[str, Any] = {"size": f"{d}x{w}", "depth": d, "width": w, "init": init,
                                   "kind": "anchor" if cfg.is_anchor(d, w) else "unseen"}
            if model is None:
                rows.append({**row, "available": False})
                continue
            row["available"] = True
            if init == "sweet":
                row["scalers"] = sweet.scaler_source(d, w)
            row.update(evaluate_init(model, protocol, transfer, cfg, e))
            rows.append(row)
            print(f"[eval] {row['size']:>7} {init:<17} k-NN {row['knn']:5.1f}  probe {row['linear_probe']:5.1f}  "
                  f"fine-tune {row['finetune_mean']:5.1f}±{row['finetune_std']:.1f}  digits k-NN {row['transfer_knn']:5.1f}", flush=True)

    result = {
        "command": command("init_quality.py", argv),
        "plan": plan_name, "seed": args.seed, "plan_config": plan, "pretrain_commands": commands,
        "pretraining": {name: {k: s[k] for k in ("steps", "images_seen", "train_seconds")} for name, s in summaries.items()},
        "learned_scalers": learned_facts, "protocol": protocol.description, "transfer_protocol": transfer.description,
        "finetune": {"labels": e["finetune_labels"], "steps": e["finetune_steps"], "seeds": e["seeds"]},
        "reference": reference, "rows": rows, "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "eval_minutes": round((time.perf_counter() - eval_started) / 60, 1),
        "torch_threads": torch.get_num_threads(),
    }
    save_result(result, args.out or RESULTS / f"init_quality{'_quick' if args.quick else ''}{seed_suffix(args.seed)}.json", plot)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = [r for r in result["rows"] if r["available"]]
    sizes = list(dict.fromkeys(r["size"] for r in result["rows"]))
    inits = [i for i in INITS if any(r["init"] == i for r in rows)]
    metrics = [("knn", "k-NN (%)"), ("linear_probe", "linear probe (%)"), ("finetune_mean", "fine-tune, 1% labels (%)"),
               ("transfer_knn", "digits k-NN (%)")]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(11, 3.2 * len(metrics)), sharex=True)
    width = 0.8 / len(inits)
    for ax, (key, label) in zip(axes, metrics):
        for j, init in enumerate(inits):
            xs, ys, errs = [], [], []
            for i, size in enumerate(sizes):
                match = [r for r in rows if r["size"] == size and r["init"] == init]
                if match:
                    xs.append(i + (j - len(inits) / 2 + 0.5) * width)
                    ys.append(match[0][key])
                    errs.append(match[0].get("finetune_std", 0) if key == "finetune_mean" else 0)
            ax.bar(xs, ys, width=width, yerr=errs, label=init, capsize=2)
        if key == "knn":
            ax.axhline(result["reference"]["raw_pixels_knn"], color="gray", ls=":", label="raw pixels")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        low = min(r[key] for r in rows)
        ax.set_ylim(max(0, low - 10), None)
    axes[0].legend(ncol=4, fontsize=8, loc="lower left")
    axes[-1].set_xticks(range(len(sizes)), [f"{s}\n({'anchor' if any(r['size'] == s and r['kind'] == 'anchor' for r in rows) else 'unseen'})"
                                            for s in sizes])
    fig.suptitle("Initialization quality on Fashion-MNIST (same pre-training data, loss and images seen)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
