"""SWEET at equal pre-training *time*: given what pre-training each anchor separately costs.

    python benchmarks/equal_compute.py            # after (or during) benchmarks/init_quality.py (full plan)
    python benchmarks/equal_compute.py --quick    # toy scale
    python benchmarks/equal_compute.py --recipe width_scaling_p=0.25   # SWEET's recipe with other settings
    python benchmarks/equal_compute.py --seed 1  # after init_quality.py --seed 1: every run with pre-training seed 1

init_quality.py gives every method the same images seen, so the methods spend different wall time on
them: a SWEET step of the bundled recipe trains every anchor (smaller ones at sampled widths), a
per-size run one size, POA the full network plus an elastic student. Here SWEET
gets the summed wall time of the per-size runs at its anchors instead (steps scaled by the measured
time ratio, read from the runs' summaries), and is evaluated at the same sizes with the same
protocol.

``--recipe KEY=VALUE ...`` gives SWEET's run other pretrain.py settings (e.g. every anchor in each
update). A step of such a recipe costs other time than the recipe the runs were recorded with, so
steps no longer carry the budget: the run gets a wall-clock budget instead, the recorded time of
the per-size runs converted to this machine's clock by timing a few steps of the per-size run at
the largest anchor here (one fixed size, so the clock is not blurred by sampled sizes) against its
recorded step time; the clock is kept beside the run, so running the script again reuses the run and its budget. The rows of init_quality.json (per-size, weight selection from the per-size run at the
largest anchor, POA, SWEET at equal images, random init) are set beside it when that file exists; run this
script again after init_quality.py finishes to join them (the pre-training is cached). Writes
benchmarks/results/equal_compute.json and a plot.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, command, grouped_bars, save_result
from init_quality import (
    METRICS,
    PLANS,
    SWEET_RECIPE,
    add_seed_argument,
    eval_protocols,
    evaluate_init,
    pretrain,
    pretrain_overrides,
    seed_suffix,
)

from training.pretrain import CSVLog


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy scale (reads init_quality_quick.json)")
    parser.add_argument("--quality", help="init_quality JSON to compare with (default: benchmarks/results/init_quality[_quick][_seedN].json)")
    parser.add_argument("--runs", help="pre-training run cache (default: benchmarks/runs/<plan>[_seedN])")
    parser.add_argument("--out", help="JSON output (default: benchmarks/results/equal_compute[_quick][_seedN].json)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads for the pre-training and the evaluation (default: all "
                        "cores); the step budget comes from the recorded runs, so this changes the run's clock, not its steps")
    parser.add_argument("--recipe", nargs="+", default=[], metavar="KEY=VALUE",
                        help="pretrain.py settings of SWEET's run on top of init_quality's recipe (e.g. n_local=2); the run then gets "
                             "the per-size runs' time converted to this machine's clock, not a step count")
    parser.add_argument("--calibration-steps", type=int, default=12,
                        help="steps of the per-size run timed to convert the recorded time to this machine's clock (with --recipe)")
    add_seed_argument(parser)
    args = parser.parse_args(argv)
    if args.num_threads is not None and args.num_threads < 1:
        parser.error(f"--num-threads must be >= 1, got {args.num_threads}")
    if args.calibration_steps < 4:
        parser.error(f"--calibration-steps must be >= 4 (the first two steps are not timed), got {args.calibration_steps}")
    bad = [item for item in args.recipe if "=" not in item]
    if bad:
        parser.error(f"--recipe takes pretrain.py settings as KEY=VALUE, got {bad}; e.g. --recipe sandwich=true lr=3e-3")

    import torch

    from sweet_hub import SweetTemplate
    from sweet_hub.files import write_text
    from training.evaluate import pixel_baselines

    if args.num_threads:
        torch.set_num_threads(args.num_threads)

    plan_name = "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    suffix = ("_quick" if args.quick else "") + seed_suffix(args.seed)
    source = Path(args.quality) if args.quality else RESULTS / f"init_quality{suffix}.json"
    run_dir = Path(args.runs) if args.runs else ROOT / "benchmarks" / "runs" / (plan_name + seed_suffix(args.seed))
    anchors = [f"{d}x{w}" for d, w in plan["template"]["anchors"]]
    needed = ["sweet", "poa", *(f"single_{a}" for a in anchors if list(map(int, a.split("x"))) in plan["per_size"])]
    # run times: from the runs' summaries (available while init_quality.py still evaluates), else from its JSON
    recorded = json.loads(source.read_text())["pretraining"] if source.is_file() else {}
    pre = {}
    for name in needed:
        path = run_dir / name / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else recorded.get(name)
        if summary is None:
            raise SystemExit(f"equal_compute: run '{name}' not found in {run_dir} nor in {source}; run "
                             f"`{init_quality_command(args)}` first (its pre-training is enough)")
        pre[name] = {k: summary[k] for k in ("steps", "images_seen", "train_seconds")}

    per_size_seconds = sum(v["train_seconds"] for n, v in pre.items() if n.startswith("single_"))
    budget = per_size_seconds or pre["poa"]["train_seconds"]  # no per-size anchor runs in the plan: POA's time
    ratio = budget / pre["sweet"]["train_seconds"]
    threads = [f"num_threads={args.num_threads}"] if args.num_threads else []
    clock = None
    if args.recipe:
        run_name = "sweet_equal_time_" + hashlib.sha1(" ".join(args.recipe).encode()).hexdigest()[:8]
        # kept beside the run: a cached or resumed run keeps the budget it was given, and is not timed again
        clock_file = run_dir / f"{run_name}.clock.json"
        if clock_file.is_file():
            clock = json.loads(clock_file.read_text())
        else:
            clock = calibrate_clock(plan, pre, threads, args.calibration_steps)
            write_text(clock_file, json.dumps(clock, indent=2) + "\n")
        minutes = budget * clock["here_over_recorded"] / 60
        overrides = ["method=sweet", *SWEET_RECIPE, *pretrain_overrides(plan, args.seed, max_steps=1_000_000), *args.recipe,
                     f"time_budget_minutes={minutes:.4g}", *threads]
    else:
        steps = round(plan["pretrain"]["max_steps"] * ratio)
        overrides = ["method=sweet", *SWEET_RECIPE,
                     *pretrain_overrides(plan, args.seed, max_steps=steps, warmup_steps=max(1, steps // 10)), *threads]
        run_name = "sweet_equal_time"
    summary = pretrain(run_name, overrides, run_dir, force=False)

    template = SweetTemplate.from_pretrained(run_dir / run_name / "template")
    protocol, transfer = eval_protocols(template.config, plan["eval"])
    quality = json.loads(source.read_text()) if source.is_file() else None
    if quality and any(quality["pretraining"].get(n, {}).get("train_seconds") != v["train_seconds"] for n, v in pre.items()):
        raise SystemExit(f"equal_compute: {source} was measured on other pre-training runs than those in {run_dir}; run "
                         f"`{init_quality_command(args)}` (its runs are cached) and then "
                         f"this script again (its own pre-training is cached too)")
    sizes = ([r["size"] for r in quality["rows"]] if quality else
             [f"{d}x{w}" for d, w in plan["template"]["anchors"] + plan["unseen"]])
    by_key = {(r["size"], r["init"]): r for r in quality["rows"] if r["available"]} if quality else {}
    rows = []
    for size in dict.fromkeys(sizes):
        depth, width = map(int, size.split("x"))
        row = {"size": size, "kind": "anchor" if size in anchors else "unseen", "scalers": template.scaler_source(depth, width),
               **evaluate_init(template.materialize(depth, width), protocol, transfer, template.config, plan["eval"])}
        for init in COMPARED:
            if (size, init) in by_key:
                row[init] = {k: by_key[(size, init)][k] for k in METRICS}
        rows.append(row)
        print(f"[eval] {size:>7} SWEET at the per-size anchors' time: k-NN {row['knn']:5.1f} "
              f"(per-size {row.get('per_size', {}).get('knn', float('nan')):5.1f}, "
              f"weight selection {row.get('weight_selection', {}).get('knn', float('nan')):5.1f})", flush=True)

    result = {
        "command": command("equal_compute.py", argv),
        "pretrain_command": "python training/pretrain.py " + " ".join(overrides),
        "budget": "summed wall time of the per-size runs at the anchors" if per_size_seconds else "POA's wall time",
        "budget_seconds": round(budget, 1), "time_ratio_budget_over_sweet": round(ratio, 3),
        "recipe": args.recipe, "clock": clock, "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        # "threads" only where the run recorded it (a cached older run may have used other threads than this invocation)
        "pretraining": {"sweet_equal_time": {k: summary[k] for k in ("steps", "images_seen", "train_seconds", "threads") if k in summary},
                        "sweet_equal_images": pre["sweet"], **{n: v for n, v in pre.items() if n != "sweet"}},
        "protocol": protocol.description, "reference": {k: round(v, 2) for k, v in pixel_baselines(protocol).items()},
        "compared_from": str(source.relative_to(ROOT)) if quality and source.is_relative_to(ROOT) else (str(source) if quality else None),
        "rows": rows,
    }
    save_result(result, args.out or RESULTS / f"equal_compute{suffix}.json", plot)
    return result


def init_quality_command(args: argparse.Namespace) -> str:
    """The init_quality.py invocation whose runs and results this one reads."""
    return "python benchmarks/init_quality.py" + (" --quick" if args.quick else "") + (f" --seed {args.seed}" if args.seed else "")


def calibrate_clock(plan: dict[str, Any], pre: dict[str, dict[str, Any]], threads: list[str], steps: int) -> dict[str, Any]:
    """How much slower (> 1) or faster this machine runs the recorded per-size run at the largest anchor.

    Times ``steps`` steps of that run here (its own settings, these threads) and divides by its
    recorded seconds per step; the first two steps (allocations, thread pools) are not timed.
    """
    depth, width = max(plan["template"]["anchors"], key=lambda a: a[0] * a[1] ** 2)
    name = f"single_{depth}x{width}"
    if name not in pre:
        raise SystemExit(f"equal_compute --recipe: the clock is read off the per-size run at the largest anchor ({name}), "
                         f"which this plan did not record; run `python benchmarks/init_quality.py` first")
    overrides = ["method=single", f"size=[{depth},{width}]", *pretrain_overrides(plan, max_steps=steps, save_every=steps),
                 "log_every=1", *threads]
    with tempfile.TemporaryDirectory(prefix="sweet-clock-") as tmp:
        pretrain(f"clock_{name}", overrides, Path(tmp), force=True)
        seconds = [float(row["train_seconds"]) for row in CSVLog.read(Path(tmp) / f"clock_{name}" / "train_log.csv")]
    here = (seconds[-1] - seconds[1]) / (len(seconds) - 2)
    recorded = pre[name]["train_seconds"] / pre[name]["steps"]
    return {"reference_run": name, "steps_timed": len(seconds) - 2, "step_seconds_here": round(here, 4),
            "step_seconds_recorded": round(recorded, 4), "here_over_recorded": round(here / recorded, 4)}


COMPARED = {"per_size": "per-size (its own run)", "weight_selection": "weight selection", "poa": "POA (equal images)",
            "sweet": "SWEET (equal images)", "random": "random init"}


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    series = {label: [r.get(init, {}).get("knn", float("nan")) for r in rows] for init, label in COMPARED.items()
              if any(init in r for r in rows)}
    series["SWEET (equal time)"] = [r["knn"] for r in rows]
    grouped_bars(path, [f"{r['size']}\n({r['kind']})" for r in rows], series,
                 hline=("centred pixels", result["reference"]["centred_pixels_knn"]), legend_loc="upper right",
                 xlabel="depth x width (missing bar: the method cannot produce that size)", ylabel="k-NN (%)",
                 title="SWEET given the time of per-size pre-training at its anchors")


if __name__ == "__main__":
    main()
