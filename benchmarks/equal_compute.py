"""SWEET vs POA at equal pre-training *time* instead of equal images seen.

    python benchmarks/equal_compute.py            # after benchmarks/init_quality.py (full plan)
    python benchmarks/equal_compute.py --quick    # toy scale

init_quality.py gives every method the same images seen. A SWEET step runs one sampled anchor,
a POA step runs the full network plus an elastic student, so SWEET finishes the same images in
a fraction of POA's wall time. This script gives SWEET POA's wall time instead (steps scaled by
the measured time ratio of the two init_quality runs), evaluates it at the same sizes with the
same protocol, and sets it beside the POA and equal-images SWEET rows. Writes
benchmarks/results/equal_compute.json and a plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, command, grouped_bars, save_result
from init_quality import METRICS, PLANS, eval_protocols, evaluate_init, pretrain, pretrain_overrides


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy scale (reads init_quality_quick.json)")
    parser.add_argument("--quality", help="init_quality JSON to compare with (default: benchmarks/results/init_quality[_quick].json)")
    parser.add_argument("--runs", help="pre-training run cache (default: benchmarks/runs/<plan>)")
    parser.add_argument("--out", help="JSON output (default: benchmarks/results/equal_compute[_quick].json)")
    args = parser.parse_args(argv)

    from sweet_hub import SweetTemplate

    plan_name = "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    source = Path(args.quality) if args.quality else RESULTS / f"init_quality{'_quick' if args.quick else ''}.json"
    if not source.is_file():
        raise SystemExit(f"equal_compute: {source} not found; run `python benchmarks/init_quality.py{' --quick' if args.quick else ''}` first")
    quality = json.loads(source.read_text())
    run_dir = Path(args.runs) if args.runs else ROOT / "benchmarks" / "runs" / plan_name

    pre = quality["pretraining"]
    ratio = pre["poa"]["train_seconds"] / pre["sweet"]["train_seconds"]
    steps = round(plan["pretrain"]["max_steps"] * ratio)
    overrides = ["method=sweet", *pretrain_overrides(plan, max_steps=steps, warmup_steps=max(1, steps // 10))]
    summary = pretrain("sweet_equal_time", overrides, run_dir, force=False)

    template = SweetTemplate.from_pretrained(run_dir / "sweet_equal_time" / "template")
    protocol, transfer = eval_protocols(template.config, plan["eval"])
    by_key = {(r["size"], r["init"]): r for r in quality["rows"] if r["available"]}
    rows = []
    for size in dict.fromkeys(r["size"] for r in quality["rows"]):
        depth, width = map(int, size.split("x"))
        row = {"size": size, "scalers": template.scaler_source(depth, width),
               **evaluate_init(template.materialize(depth, width), protocol, transfer, template.config, plan["eval"])}
        for init in ("sweet", "poa"):
            if (size, init) in by_key:
                row[f"{init}_equal_images"] = {k: by_key[(size, init)][k] for k in METRICS}
        rows.append(row)
        print(f"[eval] {size:>7} SWEET at POA's time: k-NN {row['knn']:5.1f} (equal images {row['sweet_equal_images']['knn']:5.1f}, "
              f"POA {row.get('poa_equal_images', {}).get('knn', float('nan')):5.1f})", flush=True)

    result = {
        "command": command("equal_compute.py", argv),
        "pretrain_command": "python training/pretrain.py " + " ".join(overrides),
        "time_ratio_poa_over_sweet": round(ratio, 3),
        "pretraining": {"sweet_equal_time": {k: summary[k] for k in ("steps", "images_seen", "train_seconds")},
                        "poa": pre["poa"], "sweet_equal_images": pre["sweet"]},
        "protocol": quality["protocol"], "raw_pixels_knn": quality["reference"]["raw_pixels_knn"], "rows": rows,
    }
    save_result(result, args.out or RESULTS / f"equal_compute{'_quick' if args.quick else ''}.json", plot)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    grouped_bars(path, [r["size"] for r in rows], {
        "POA (equal images)": [r.get("poa_equal_images", {}).get("knn", float("nan")) for r in rows],
        "SWEET (equal images)": [r["sweet_equal_images"]["knn"] for r in rows],
        "SWEET (POA's wall time)": [r["knn"] for r in rows],
    }, hline=("raw pixels", result["raw_pixels_knn"]), legend_loc="upper right", xlabel="depth x width (no POA bar: larger than its full network)",
        ylabel="k-NN (%)", title="SWEET vs POA at equal pre-training time")


if __name__ == "__main__":
    main()
