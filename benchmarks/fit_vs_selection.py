"""A template fitted to an existing checkpoint (sweet-hub fit) vs weight selection from it, at
smaller and larger sizes.

    python benchmarks/fit_vs_selection.py            # sources: init_quality.py's per-size runs (pre-trained here if missing)
    python benchmarks/fit_vs_selection.py --quick    # toy scale

Sources: the per-size pre-trained ViTs of init_quality.py (8x192 and 6x160, plain timm
checkpoints trained by self-supervision on Fashion-MNIST; sweet-hub's fit sees only their
weights). For every target size and source:

- ``fit_derived``: SweetTemplate.fit at full ranks, scalers derived by selection (no data),
- ``fit_learned``: the same template, the target's scalers distilled from the source's tokens
  on 1000 unlabeled train images (template frozen),
- ``weight_selection``: evenly spaced layers, first channels of the source (smaller sizes only),
- ``random``: timm's init.

Metrics (the init_quality.py protocol): k-NN and linear probe on frozen features, fine-tuning
with 1% of the labels (mean and std over 3 seeds). Also k-NN of the source vs the fitted
template at the source's own size. Writes benchmarks/results/fit_vs_selection.json and a plot.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, command, pyplot, save_result
from init_quality import PLANS, pretrain, pretrain_overrides

PLAN = {
    "full": {"sources": [[8, 192], [6, 160]], "smaller": [[4, 64], [6, 96], [6, 128], [6, 160]], "larger": [[10, 256], [12, 384]],
             "learned": {"images": 1000, "steps": 200}},
    "quick": {"sources": [[3, 48]], "smaller": [[2, 16], [2, 32]], "larger": [[4, 64]], "learned": {"images": 64, "steps": 3}},
}
INITS = ["fit_derived", "fit_learned", "weight_selection", "random"]


def evaluate(model, protocol, cfg, eval_plan: dict[str, Any]) -> dict[str, Any]:
    """k-NN, linear probe and few-label fine-tuning (mean/std over seeds) of one initialized model."""
    from training.evaluate import evaluate_model, finetune_over_seeds

    feats = evaluate_model(model, protocol, cfg.mean, cfg.std, knn=True, probe=True)
    return {"knn": round(feats["knn"], 2), "linear_probe": round(feats["linear_probe"], 2),
            **finetune_over_seeds(model, protocol, cfg.mean, cfg.std, eval_plan["finetune_steps"], eval_plan["seeds"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy scale (sources from init_quality.py --quick)")
    parser.add_argument("--runs", help="init_quality run cache holding the sources (default: benchmarks/runs/<plan>)")
    parser.add_argument("--out", help="JSON output (default: benchmarks/results/fit_vs_selection[_quick].json)")
    args = parser.parse_args(argv)

    from sweet_hub.fit import load_source
    from training.evaluate import EvalProtocol, pixel_baselines

    plan_name = "quick" if args.quick else "full"
    plan, eval_plan = PLAN[plan_name], PLANS[plan_name]["eval"]
    run_dir = Path(args.runs) if args.runs else ROOT / "benchmarks" / "runs" / plan_name
    cache = run_dir / "fit_vs_selection"
    out = args.out or RESULTS / f"fit_vs_selection{'_quick' if args.quick else ''}.json"
    rows: list[dict[str, Any]] = []
    fits: dict[str, Any] = {}
    protocol = reference = None
    earlier_json = json.loads(Path(out).read_text()) if Path(out).is_file() else {}
    earlier = _earlier_sources(earlier_json, plan, eval_plan)
    for src_depth, src_width in plan["sources"]:
        name = f"{src_depth}x{src_width}"
        if name in earlier:  # measured by an earlier invocation (its JSON), e.g. on another machine: no need for the source
            source_rows, fits[name] = earlier[name]
            print(f"[resume] source {name} from {out}", flush=True)
        else:
            folder = run_dir / f"single_{name}" / "model"
            if not folder.is_dir():  # pre-train it exactly as init_quality.py does (same cache, so init_quality reuses it)
                pretrain(f"single_{name}", ["method=single", f"size=[{src_depth},{src_width}]", *pretrain_overrides(PLANS[plan_name])],
                         run_dir, force=False)
            source = load_source(str(folder))
            if protocol is None:
                protocol = EvalProtocol("fashion_mnist", source.patch_embed.img_size[0], source.patch_embed.proj.in_channels,
                                        eval_plan["train_size"], eval_plan["test_size"], eval_plan["finetune_labels"])
                reference = {k: round(v, 2) for k, v in pixel_baselines(protocol).items()}
            _seed_random_cache(cache, earlier)
            source_rows, fits[name] = _cached(cache / f"source_{name}.json", _run_source, source, name, plan, eval_plan, protocol, cache)
        rows += source_rows
        import torch

        result = {
            "command": command("fit_vs_selection.py", argv), "plan": plan, "eval": eval_plan,
            "protocol": protocol.description if protocol else earlier_json["protocol"],
            "reference": reference or earlier_json["reference"], "fits": fits, "rows": rows,
            "complete": len(fits) == len(plan["sources"]),
            "wall_minutes": round(sum(f.get("seconds", 0) for f in fits.values()) / 60, 1), "torch_threads": torch.get_num_threads(),
        }
        save_result(result, out, plot)  # after every source, so an interrupted run still reports what it measured
    return result


def _earlier_sources(earlier: dict[str, Any], plan: dict[str, Any], eval_plan: dict[str, Any]) -> dict[str, Any]:
    """Sources already measured in an earlier invocation's JSON (``earlier``) with the same plan and protocol."""
    if not earlier or earlier.get("plan") != json.loads(json.dumps(plan)) or earlier.get("eval") != json.loads(json.dumps(eval_plan)):
        return {}
    if len(earlier["fits"]) == 1:  # written before sources recorded their own time
        next(iter(earlier["fits"].values())).setdefault("seconds", earlier["wall_minutes"] * 60)
    for fit in earlier["fits"].values():  # written before sources recorded their own thread count
        fit.setdefault("torch_threads", earlier["torch_threads"])
    return {name: ([r for r in earlier["rows"] if r["source"] == name], fit) for name, fit in earlier["fits"].items()}


def _seed_random_cache(cache: Path, earlier: dict[str, Any]) -> None:
    """Random init does not depend on the source (same architecture, seed and protocol), so the random rows
    an earlier invocation measured fill the cache instead of being evaluated again."""
    from sweet_hub.files import write_text

    for source_rows, _ in earlier.values():
        for row in source_rows:
            path = cache / f"random_{row['size']}.json"
            if row["init"] == "random" and row.get("available") and not path.is_file():
                keep = {k: row[k] for k in ("knn", "linear_probe", "finetune_mean", "finetune_std")}
                write_text(path, json.dumps(keep, indent=2) + "\n")


def _cached(path: Path, compute, *args):
    """``compute(*args)``'s JSON-able result, stored at ``path`` so an interrupted benchmark resumes where it stopped."""
    from sweet_hub.files import write_text

    if path.is_file():
        print(f"[cache] {path}", flush=True)
        return json.loads(path.read_text())
    value = compute(*args)
    write_text(path, json.dumps(value, indent=2) + "\n")
    return value


def _evaluate_random(cfg, depth: int, width: int, protocol, eval_plan: dict[str, Any]) -> dict[str, Any]:
    from training.report import random_vit

    return evaluate(random_vit(cfg, depth, width), protocol, cfg, eval_plan)


def _run_source(source, name: str, plan: dict[str, Any], eval_plan: dict[str, Any], protocol, cache: Path):
    """Fit one source (derived and learned scalers) and evaluate every init at every target size."""
    from sweet_hub import SweetTemplate
    from training.data import load_image_tensors
    from training.poa import extract_vit

    started = time.perf_counter()
    src_depth, src_width = (int(v) for v in name.split("x"))
    targets = [tuple(s) for s in plan["smaller"] + plan["larger"] if tuple(s) != (src_depth, src_width)]
    derived = SweetTemplate.fit(source, progress=False)
    cfg = derived.config
    unlabeled = load_image_tensors("fashion_mnist", "train", cfg.img_size, cfg.in_chans).subset(plan["learned"]["images"], seed=123)
    t0 = time.perf_counter()
    learned = SweetTemplate.fit(source, anchors=targets, images=unlabeled.images, distill_steps=plan["learned"]["steps"],
                                progress=False)
    fit = {"fit_seconds": derived.card_info["fit"]["seconds"], "learned_seconds": round(time.perf_counter() - t0, 1),
           "errors": derived.card_info["fit"]["errors"],
           "learned": {f"{d}x{w}": {k: learned.scaler_info[f"d{d}_w{w}"][k] for k in ("distill_loss_before", "distill_loss_after")}
                       for d, w in targets},
           "source": evaluate(source, protocol, cfg, eval_plan),
           "fitted_at_source": evaluate(derived.materialize(src_depth, src_width), protocol, cfg, eval_plan)}
    print(f"[fit] source {name}: k-NN {fit['source']['knn']:.2f}, fitted {fit['fitted_at_source']['knn']:.2f}", flush=True)
    rows = []
    for depth, width in targets:
        kind = "smaller" if [depth, width] in plan["smaller"] else "larger"
        for init in INITS:
            row = {"source": name, "size": f"{depth}x{width}", "kind": kind, "init": init}
            if init == "random":  # the same for every source: evaluated once
                row.update(_cached(cache / f"random_{depth}x{width}.json", _evaluate_random, cfg, depth, width, protocol, eval_plan))
                row["available"] = True
            else:
                if init == "fit_derived":
                    model = derived.materialize(depth, width)
                elif init == "fit_learned":
                    model = learned.materialize(depth, width)
                else:
                    model = extract_vit(source, depth, width, cfg.head_dim, rescale=False)
                row["available"] = model is not None
                if model is not None:
                    row.update(evaluate(model, protocol, cfg, eval_plan))
            if row["available"]:
                print(f"[eval] {name} -> {row['size']:>7} {init:<17} k-NN {row['knn']:5.1f}  probe {row['linear_probe']:5.1f}  "
                      f"fine-tune {row['finetune_mean']:5.1f}±{row['finetune_std']:.1f}", flush=True)
            rows.append(row)
    import torch

    fit["seconds"] = round(time.perf_counter() - started, 1)
    fit["torch_threads"] = torch.get_num_threads()
    return rows, fit


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    sources = list(result["fits"])
    fig, axes = plt.subplots(len(sources), 2, figsize=(13, 3.8 * len(sources)), squeeze=False)
    for row_axes, source in zip(axes, sources):
        rows = [r for r in result["rows"] if r["source"] == source]
        sizes = list(dict.fromkeys(r["size"] for r in rows))
        for ax, (key, label) in zip(row_axes, [("knn", "k-NN (%)"), ("finetune_mean", "fine-tune, 1% labels (%)")]):
            width = 0.8 / len(INITS)
            for j, init in enumerate(INITS):
                xs, ys, errs = [], [], []
                for i, size in enumerate(sizes):
                    match = [r for r in rows if r["size"] == size and r["init"] == init and r["available"]]
                    if match:
                        xs.append(i + (j - len(INITS) / 2 + 0.5) * width)
                        ys.append(match[0][key])
                        errs.append(match[0]["finetune_std"] if key == "finetune_mean" else 0)
                ax.bar(xs, ys, width=width, yerr=errs, capsize=2, label=init.replace("_", " "))
            ax.axhline(result["fits"][source]["source"][key], color="black", ls="--", lw=1, label=f"source {source}")
            if key == "knn":
                ax.axhline(result["reference"]["centred_pixels_knn"], color="gray", ls=":", label="centred pixels")
            ax.set_xticks(range(len(sizes)), [f"{s}\n({next(r['kind'] for r in rows if r['size'] == s)})" for s in sizes])
            ax.set_ylabel(label)
            ax.set_title(f"source {source}")
            ax.grid(axis="y", alpha=0.3)
            ax.set_ylim(max(0, min(r[key] for r in rows if r["available"]) - 10), None)
        row_axes[0].legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle("Template fitted to a checkpoint vs weight selection from it (Fashion-MNIST)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
