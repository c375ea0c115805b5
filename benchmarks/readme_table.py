"""Regenerate the results sections of README.md and benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/readme_table.py          # rewrites both files between their results markers
    python benchmarks/readme_table.py --print  # only print the sections

Every number in a section comes from a JSON file written by a benchmark script, with the
command that produced it; missing files are skipped (and said so). The top-level README gets
the headline results a user reads first; benchmarks/README.md the studies behind them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from common import RESULTS, ROOT
from compare_templates import derived_knn

from sweet_hub.config import format_size, parse_size_key
from sweet_hub.files import write_text

START, END = "<!-- results:start -->", "<!-- results:end -->"
INIT_NAMES = {
    "sweet": "SWEET", "sweet_learned": "SWEET, learned scalers", "sweet_no_wss": "SWEET without width-wise scaling",
    "poa": "POA extraction", "weight_selection": "weight selection", "per_size": "per-size pre-training", "random": "random init",
}


def user_sizes(text: str) -> str:
    """Size names of older result files ('derived from d8_w192') in the spelling users read ('8x192')."""
    return re.sub(r"\bd\d+_w\d+\b", lambda m: format_size(*parse_size_key(m.group(0))), text)


def md_row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_header(*columns: str) -> list[str]:
    """A markdown table's header row and its separator."""
    return [md_row(*columns), md_row(*["---"] * len(columns))]


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def demo_section(r: dict[str, Any]) -> list[str]:
    p = r["protocol"]
    lines = [
        "### One template, many sizes (`make demo`)",
        "",
        f"k-NN accuracy (cosine, k=20) of frozen features on Fashion-MNIST ({p['train']} train / {p['test']} test images); "
        f"raw pixels: **{r['raw_pixels_knn']:.1f}%**"
        + (f", mean-centred pixels **{r['pixels']['centred_pixels_knn']:.1f}%** (pixel linear probe {r['pixels']['pixels_linear_probe']:.1f}%)"
           if "pixels" in r else "") + f". `{r['command']}`",
        "",
        *md_header("size", "params", "scalers", "materialize", "k-NN template", "k-NN random init"),
    ]
    for s in r["sizes"]:
        lines.append(f"| {format_size(s['depth'], s['width'])} | {s['params'] / 1e6:.2f}M | {user_sizes(s['scalers'])} | {s['materialize_ms']:.0f} ms | "
                     f"**{s['knn_template']:.1f}** | {s['knn_random']:.1f} |")
    wins = sum(s["knn_template"] > s["knn_random"] for s in r["sizes"])
    best = max(s["knn_template"] for s in r["sizes"])
    pixels = r.get("pixels", {}).get("centred_pixels_knn", r["raw_pixels_knn"])
    name = "mean-centred pixels" if "pixels" in r else "raw pixels"
    verdict = "above" if best > pixels else "below"
    largest = max(r["sizes"], key=lambda s: s["params"])
    lines += ["", f"The template beats random init at {wins} of {len(r['sizes'])} sizes; its best k-NN ({best:.1f}%) is "
              f"{verdict} k-NN on {name} ({pixels:.1f}%). The largest size ({format_size(largest['depth'], largest['width'])}) "
              + (f"is the best size ({best:.1f}). " if largest["knn_template"] == best else
                 f"scores {largest['knn_template']:.1f}, {best - largest['knn_template']:.1f} under the best size. ")
              + "Materialization: median of 3.", "", "![demo](benchmarks/results/demo.png)", ""]
    return lines


def derived_section(r: dict[str, Any]) -> list[str]:
    names = r["variants"]
    short = {n: n.replace("derived ", "derived, ").replace("depth_rescale=", "depth ").replace("width_rescale=", "width ") for n in names}
    lines = [
        "### Unseen sizes: derived vs learned scalers",
        "",
        f"k-NN at sizes that are not anchors, on {'the bundled template' if r['template'].startswith('bundled') else r['template']}, for the four "
        f"derivation rules of `derive_scalers` and for scalers learned from {r['learned']['images']} unlabeled images in "
        f"{r['learned']['steps']} steps{_learned_origin(r)}. Bold: best per size. `{r['command']}`",
        "",
        *md_header("size", *(short[n] for n in names)),
    ]
    for row in r["sizes"]:
        top = max(row[n] for n in names)
        lines.append(md_row(row["size"], *(f"**{row[n]:.1f}**" if row[n] == top else f"{row[n]:.1f}" for n in names)))
    lines.append(md_row("mean", *(f"{r['mean'][n]:.1f}" for n in names)))
    return lines + ["", "![derived scalers](benchmarks/results/derived_scalers.png)", ""]


def _learned_origin(r: dict[str, Any]) -> str:
    stored = [row["size"] for row in r["sizes"] if row.get("learned_from") == "stored"]
    return f" (at {', '.join(stored)}: the learned scalers shipped with the template)" if stored else ""


def init_quality_section(r: dict[str, Any]) -> list[str]:
    pre = r["pretraining"]
    budget = ", ".join(f"{k}: {v['images_seen']:,} images / {v['train_seconds'] / 60:.1f} min" for k, v in pre.items())
    ft = r["finetune"]
    lines = [
        "### Which initialization wins (SWEET vs POA and baselines)",
        "",
        f"Same data (Fashion-MNIST, no labels), same contrastive loss and the same images seen for every pre-training "
        f"({budget}). Metrics: k-NN / linear probe of frozen features, fine-tuning with {ft['labels']} labels (1%) for "
        f"{ft['steps']} steps (mean ± std over {len(ft['seeds'])} seeds), and k-NN on a transfer set (scikit-learn digits). "
        f"{_pixel_line(r['reference'])} (digits: raw-pixel k-NN {r['reference']['transfer_raw_pixels_knn']:.1f}%). "
        f"{_recipe_line(r)}`{r['command']}` ({_harness_time(r)}).",
        "",
        *md_header("size", "init", *METRICS.values()),
    ]
    best = {}
    for row in r["rows"]:
        if row["available"]:
            for key in ("knn", "linear_probe", "finetune_mean", "transfer_knn"):
                best[(row["size"], key)] = max(best.get((row["size"], key), -1), row[key])
    for row in r["rows"]:
        label = INIT_NAMES.get(row["init"], row["init"])
        size = f"{row['size']} ({row['kind']})"
        if not row["available"]:
            lines.append(f"| {size} | {label} | n/a | n/a | n/a | n/a |")
            continue

        def cell(key: str, text: str) -> str:
            return f"**{text}**" if row[key] == best[(row["size"], key)] else text

        scalers = f" ({user_sizes(row['scalers'])})" if "scalers" in row else ""
        knn = cell("knn", f"{row['knn']:.1f}")
        probe = cell("linear_probe", f"{row['linear_probe']:.1f}")
        finetune = cell("finetune_mean", f"{row['finetune_mean']:.1f} ± {row['finetune_std']:.1f}")
        transfer = cell("transfer_knn", f"{row['transfer_knn']:.1f}")
        lines.append(f"| {size} | {label}{scalers} | {knn} | {probe} | {finetune} | {transfer} |")
    lines += ["", *init_quality_summary(r["rows"]), "", "![init quality](benchmarks/results/init_quality.png)", ""]
    return lines


def _pixel_line(ref: dict[str, float]) -> str:
    """What pixels alone score on the protocol: the line any initialization has to clear."""
    if "centred_pixels_knn" not in ref:  # result files written before centred pixels and the pixel probe were measured
        return f"Raw-pixel k-NN: {ref['raw_pixels_knn']:.1f}%"
    return (f"Pixels: k-NN {ref['raw_pixels_knn']:.1f}% raw, {ref['centred_pixels_knn']:.1f}% centred; linear probe "
            f"{ref['pixels_linear_probe']:.1f}%")


def _threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def _recipe_line(r: dict[str, Any]) -> str:
    """The crops every run shares and the settings only SWEET's run has (read from the recorded pretrain commands)."""
    commands = r.get("pretrain_commands", {})
    single = next((c for name, c in commands.items() if name.startswith("single_")), None)
    if "sweet" not in commands or single is None:
        return ""
    own = [o for o in commands["sweet"].split()[2:] if o not in single.split() and not o.startswith("method=")]
    pretrain = r.get("plan_config", {}).get("pretrain", {})
    n_global, n_local = pretrain.get("n_global", 2), pretrain.get("n_local", 2)  # pretrain.py's defaults
    crops = "no local crops" if n_local == 0 else f"{n_local} local crop{'s' if n_local > 1 else ''}"
    return f"Every run with {n_global} global crops and {crops}; SWEET's own settings: `{' '.join(own) or 'none'}`. "


def _harness_time(r: dict[str, Any]) -> str:
    """Pre-training (summed over the runs, whichever invocation ran them) and evaluation time of init_quality.py."""
    if "eval_minutes" not in r:  # result files written before the evaluation was timed on its own
        return f"{r['wall_minutes']:.0f} min"
    pre = sum(v["train_seconds"] for v in r["pretraining"].values()) / 60
    return f"pre-training {pre:.0f} min, evaluation {r['eval_minutes']:.0f} min on {_threads(r['torch_threads'])}"


METRICS = {"knn": "k-NN", "linear_probe": "linear probe", "finetune_mean": "fine-tune 1%", "transfer_knn": "digits k-NN"}


def init_quality_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Mean of each init over the sizes it can produce, and SWEET head to head against every other init."""
    available = [row for row in rows if row["available"]]
    inits = list(dict.fromkeys(row["init"] for row in rows))
    lines = ["Mean over the sizes each initialization can produce:", "",
             *md_header("init", "sizes", *METRICS.values())]
    for init in inits:
        mine = [row for row in available if row["init"] == init]
        if mine:
            means = " | ".join(f"{sum(row[k] for row in mine) / len(mine):.1f}" for k in METRICS)
            lines.append(f"| {INIT_NAMES.get(init, init)} | {len(mine)} | {means} |")
    by_key = {(row["size"], row["init"]): row for row in available}
    lines += ["", "SWEET (stored or derived scalers) head to head, sizes where SWEET scores higher:", "",
              *md_header("against", *METRICS.values())]
    for rival in inits:
        shared = [size for size, init in by_key if init == rival and rival != "sweet" and (size, "sweet") in by_key]
        if shared:
            counts = " | ".join(f"{sum(by_key[(s, 'sweet')][k] > by_key[(s, rival)][k] for s in shared)}/{len(shared)}" for k in METRICS)
            lines.append(f"| {INIT_NAMES.get(rival, rival)} | {counts} |")
    missing = sorted({row["size"] for row in rows if row["init"] == "poa" and not row["available"]})
    if missing:
        lines += ["", f"POA cannot produce {', '.join(missing)} (larger than its full network): reported as n/a, not faked."]
    return lines


def _equal_time_clock(run: dict[str, Any]) -> str:
    """The equal-time run's own minutes; its steps come from the recorded runs' time ratio, not from this clock."""
    if "threads" not in run:
        return f"{run['train_seconds'] / 60:.1f} min"
    return (f"{run['train_seconds'] / 60:.1f} min on {_threads(run['threads'])} (the step count comes from the recorded "
            f"runs' time ratio, so this clock does not change what was trained)")


def _equal_time_budget(r: dict[str, Any]) -> str:
    """How the equal-time run's budget was given: a step count (the recorded recipe) or, for another recipe, this
    machine's clock."""
    run = r["pretraining"]["sweet_equal_time"]
    done = f"{run['steps']} steps, {run['images_seen']:,} images"
    clock = r.get("clock")
    if not clock:
        return f"as a step budget: {done}, {_equal_time_clock(run)}"
    threads = f" on {_threads(run['threads'])}" if "threads" in run else ""
    return (f"as a wall-clock budget for the recipe `{' '.join(r['recipe'])}`: {run['train_seconds'] / 60:.1f} min{threads}, "
            f"{done} (this machine ran a per-size {clock['reference_run'].removeprefix('single_')} step in "
            f"{clock['step_seconds_here']:.2f} s against {clock['step_seconds_recorded']:.2f} s recorded, so the budget is "
            f"{clock['here_over_recorded']:.2f}x the recorded time)")


def equal_compute_section(r: dict[str, Any]) -> list[str]:
    pre = r["pretraining"]
    if "budget_seconds" not in r:  # result files of sweet-hub 0.1 (SWEET given POA's time)
        return ["### SWEET at equal pre-training time", "", f"_equal_compute.json is from an older version; rerun `{r['command']}`._", ""]
    singles = ", ".join(f"{n.removeprefix('single_')} {v['train_seconds'] / 60:.1f} min" for n, v in pre.items() if n.startswith("single_"))
    with_random = any("random" in row for row in r["rows"])  # result files before random init was joined lack it
    lines = [
        "### SWEET at equal pre-training time",
        "",
        f"The table above equalizes images seen, and SWEET finished them in "
        f"{pre['sweet_equal_images']['train_seconds'] / 60:.1f} min. Here SWEET gets the {r['budget']} "
        f"({r['budget_seconds'] / 60:.1f} min: {singles}; POA took {pre['poa']['train_seconds'] / 60:.1f} min) "
        f"{_equal_time_budget(r)}. Same protocol{'; SWEET (equal images) keeps the recipe of the table above' if r.get('recipe') else ''}. "
        f"{_pixel_line(r['reference'])}. `{r['command']}`",
        "",
        *md_header("size", "metric", "per-size (own run)", "weight selection", "POA (equal images)", "SWEET (equal images)",
                   "SWEET (equal time)", *(["random init", "equal time over random"] if with_random else [])),
    ]
    for row in r["rows"]:
        for key in ("knn", "linear_probe", "finetune_mean"):
            cells = [row.get(init, {}).get(key) for init in ("per_size", "weight_selection", "poa", "sweet")] + [row[key]]
            best = max(round(c, 1) for c in cells if c is not None)
            extra = []
            if with_random:
                baseline = row.get("random", {}).get(key)
                extra = ["n/a", "n/a"] if baseline is None else [f"{baseline:.1f}", f"{row[key] - baseline:+.1f}"]
            lines.append(md_row(f"{row['size']} ({row['kind']})", METRICS[key],
                                *["n/a" if c is None else f"**{c:.1f}**" if round(c, 1) == best else f"{c:.1f}" for c in cells], *extra))
    note = " Random init is set apart, with SWEET's margin over it, and is not bolded." if with_random else ""
    return lines + ["", "Bold: best per row among the pre-trainings. n/a: the method cannot produce that size (weight selection and POA stop "
                    f"at their source's size; per-size pre-training exists only at the sizes that were trained).{note}", "",
                    "![equal compute](benchmarks/results/equal_compute.png)", ""]


def _recipe_change(recipe: list[str], base: list[str]) -> str:
    """The settings of ``recipe`` that ``base`` (both KEY=VALUE lists) does not have: the column name of a recipe."""
    return " ".join(item for item in recipe if item not in base) or "the same recipe"


def equal_time_recipes_section(base: dict[str, Any], others: list[dict[str, Any]],
                               repeats: list[dict[str, Any]] = ()) -> list[str]:
    """Other SWEET recipes given the same wall-clock budget (``equal_compute.py --recipe ... --out
    equal_compute_*.json``) beside the table's recipe, and whether each meets the equal-compute bars:
    within 1 k-NN point of per-size pre-training at every anchor, ahead of weight selection at every
    unseen size it can produce. ``repeats`` are such runs with another pre-training seed (``--seed N``,
    ``equal_compute_*_seedN.json``): each is read against its own seed's per-size runs, and a recipe run
    with several seeds is also read on their mean."""
    runs = [base, *others]
    names = ["table above", *(f"`{_recipe_change(r['recipe'], base['recipe'])}`" for r in others)]
    lines = [
        "Other recipes given the same budget, each converted to its own machine's clock (`equal_compute.py --recipe ... "
        "--out benchmarks/results/equal_compute_*.json`; chosen on the validation protocol of the recipe study, not here):",
        "",
        *md_header("size", "metric", "per-size (own run)", "weight selection", *(f"SWEET, {n}" for n in names)),
    ]
    by_size = [{row["size"]: row for row in r["rows"]} for r in runs]
    for row in base["rows"]:
        for key in ("knn", "linear_probe", "finetune_mean"):
            refs = [row.get(init, {}).get(key) for init in ("per_size", "weight_selection")]
            ours = [rows.get(row["size"], {}).get(key) for rows in by_size]
            lines.append(md_row(f"{row['size']} ({row['kind']})", METRICS[key],
                                *("n/a" if c is None else f"{c:.1f}" for c in refs + ours)))
    verdicts = []
    for name, run in zip(names, runs):
        ran = run["pretraining"]["sweet_equal_time"]
        verdicts.append(f"SWEET, {name} ({ran['images_seen']:,} images in {ran['train_seconds'] / 60:.1f} min): "
                        + _bars_verdict(_sweet_gaps(run["rows"], equal_time=True), run["rows"]))
    lines += ["", "k-NN against the bars: " + "; ".join(verdicts) + ".", ""]
    for recipe in dict.fromkeys(" ".join(r["recipe"]) for r in repeats):
        seeds = [r for r in [*others, *repeats] if " ".join(r["recipe"]) == recipe]
        seeds.sort(key=lambda r: r.get("seed", 0))
        name = f"`{_recipe_change(seeds[0]['recipe'], base['recipe'])}`"
        per_seed = [_sweet_gaps(r["rows"], equal_time=True) for r in seeds]
        keys = [key for key in per_seed[0] if all(key in g for g in per_seed)]
        mean = {key: sum(g[key] for g in per_seed) / len(per_seed) for key in keys}
        lines += [f"SWEET, {name}, with other pre-training seeds (each against its own seed's per-size runs): "
                  + "; ".join(f"seed {r.get('seed', 0)}: " + _bars_verdict(g, r["rows"]) for r, g in zip(seeds, per_seed))
                  + (f"; mean of seeds {', '.join(str(r.get('seed', 0)) for r in seeds)}: " + _bars_verdict(mean, seeds[0]["rows"])
                     if len(seeds) > 1 else "") + ".", ""]
    return lines


def _bars_verdict(gaps: dict[tuple[str, str], float], rows: list[dict[str, Any]]) -> str:
    """SWEET's k-NN gaps (``_sweet_gaps``) read against the equal-compute bars, in words."""
    anchors, unseen = _bar_gaps(gaps, rows)
    within, ahead = _meets_bars(anchors, unseen)
    return (f"against per-size {', '.join(f'{size} {gap:+.2f}' for size, gap in anchors.items())} "
            f"({'within 1 point at every anchor' if within else 'more than 1 point behind at some anchor'}); "
            f"against weight selection {', '.join(f'{size} {gap:+.2f}' for size, gap in unseen.items())} "
            f"({'ahead at every unseen size' if ahead else 'not ahead at every unseen size'})")


def equal_compute_sections(r: dict[str, Any]) -> list[str]:
    """The equal-compute table, then the other recipes run at the same budget (``equal_compute_*.json``), if any, then the
    comparisons repeated with other pre-training seeds (``*_seedN.json``), if any."""
    recipes = [path for path in sorted(RESULTS.glob("equal_compute_*.json"))
               if not path.stem.endswith("_quick") and not re.fullmatch(r"equal_compute_seed\d+", path.stem)]
    others = [json.loads(path.read_text()) for path in recipes if not _seed_of(path)]
    repeats = [json.loads(path.read_text()) for path in recipes if _seed_of(path)]
    return (equal_compute_section(r) + (equal_time_recipes_section(r, others, repeats) if others else [])
            + seeds_section(_by_seed("init_quality"), _by_seed("equal_compute")))


def _seed_of(path) -> int:
    """The pre-training seed of a result file (``name_seedN.json``; 0 without the suffix)."""
    match = re.fullmatch(r".*_seed(\d+)", path.stem)
    return int(match.group(1)) if match else 0


def _by_seed(name: str) -> dict[int, dict[str, Any]]:
    """``name.json`` (seed 0) and every ``name_seedN.json``, by seed."""
    paths = [RESULTS / f"{name}.json", *RESULTS.glob(f"{name}_seed*.json")]
    return {_seed_of(path): json.loads(path.read_text()) for path in sorted(paths) if path.is_file()}


def _sweet_gaps(rows: list[dict[str, Any]], equal_time: bool) -> dict[tuple[str, str], float]:
    """k-NN of SWEET minus each rival, by (size, rival): the comparisons the equal-compute bars are read on (per-size
    pre-training at its sizes, weight selection at unseen sizes) and POA."""
    gaps = {}
    if equal_time:  # equal_compute.json: SWEET's own k-NN per row, the rivals nested in it
        for row in rows:
            for rival in ("per_size", "weight_selection"):
                if rival in row and (rival == "per_size" or row["kind"] == "unseen"):
                    gaps[(row["size"], rival)] = row["knn"] - row[rival]["knn"]
        return gaps
    by_key = {(row["size"], row["init"]): row for row in rows if row["available"]}
    for (size, init), row in by_key.items():
        sweet = by_key.get((size, "sweet"))
        if sweet and (init in ("per_size", "poa") or (init == "weight_selection" and row["kind"] == "unseen")):
            gaps[(size, init)] = sweet["knn"] - row["knn"]
    return gaps


def _bar_gaps(gaps: dict[tuple[str, str], float], rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """The gaps the equal-compute bars read, by size: against per-size pre-training at the anchors, against weight selection
    at unseen sizes (``gaps`` as ``_sweet_gaps`` gives them; ``rows`` tell each size's kind)."""
    kinds = {row["size"]: row["kind"] for row in rows}
    anchors = {size: gap for (size, rival), gap in gaps.items() if rival == "per_size" and kinds[size] == "anchor"}
    return anchors, {size: gap for (size, rival), gap in gaps.items() if rival == "weight_selection" and kinds[size] == "unseen"}


def _meets_bars(anchors: dict[str, float], unseen: dict[str, float]) -> tuple[bool, bool]:
    """The equal-compute bars: within 1 k-NN point of per-size pre-training at every anchor, ahead of weight selection at
    every unseen size."""
    return all(round(gap, 2) >= -1.0 for gap in anchors.values()), all(gap > 0 for gap in unseen.values())


def seeds_section(quality: dict[int, dict[str, Any]], equal: dict[int, dict[str, Any]]) -> list[str]:
    """SWEET's k-NN lead over each rival with every pre-training seed that was run, and the seed mean: a gap under 1.5
    points is read as noise unless another seed repeats it."""
    if len(quality) < 2 and len(equal) < 2:
        return []
    lines = ["#### The same comparisons with another pre-training seed", "",
             "k-NN of SWEET minus the rival's (positive: SWEET ahead), every pre-training re-run with another seed "
             "(`init_quality.py --seed N`, then `equal_compute.py --seed N`; evaluation seeds unchanged). "
             + " ".join(f"Seed {seed}: " + " and ".join(f"`{runs[seed]['command']}`" for runs in (quality, equal) if seed in runs) + "."
                        for seed in sorted(set(quality) | set(equal)) if seed), ""]
    seeds = sorted(set(quality) | set(equal))
    lines += md_header("budget", "size", "SWEET against", *(f"seed {s}" for s in seeds), "mean")
    verdicts = []
    for budget, runs, equal_time in (("equal images", quality, False), ("equal time", equal, True)):
        gaps = {seed: _sweet_gaps(r["rows"], equal_time) for seed, r in runs.items()}
        keys = list(dict.fromkeys(k for seed in sorted(gaps) for k in gaps[seed]))  # sizes in table order, then the rivals
        sizes = list(dict.fromkeys(size for size, _ in keys))
        keys.sort(key=lambda k: (sizes.index(k[0]), ("per_size", "weight_selection", "poa").index(k[1])))
        means = {}
        for key in keys:
            values = [gaps[s].get(key) for s in seeds]
            present = [v for v in values if v is not None]
            means[key] = sum(present) / len(present)
            lines.append(md_row(budget, key[0], INIT_NAMES[key[1]], *("n/a" if v is None else f"{v:+.2f}" for v in values),
                                f"{means[key]:+.2f}"))
        if equal_time and len(runs) > 1:
            anchors, unseen = _bar_gaps(means, [row for r in runs.values() for row in r["rows"]])
            within, ahead = _meets_bars(anchors, unseen)
            verdicts.append(f"Over the {len(runs)} seeds, SWEET at equal time is {'within 1 point of' if within else 'more than 1 point behind'} "
                            f"per-size pre-training at {'every' if within else 'some'} anchor "
                            f"({', '.join(f'{s} {g:+.2f}' for s, g in anchors.items())}) and "
                            f"{'ahead of' if ahead else 'not ahead of'} weight selection at every unseen size "
                            f"({', '.join(f'{s} {g:+.2f}' for s, g in unseen.items())}).")
    return lines + ["", *verdicts, ""] if verdicts else lines + [""]


def load_time_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "### Load time",
        "",
        f"`timm.create_model(..., pretrained=True)`, median of {r['repeats']}; matmul throughput measured at "
        f"{r['matmul_gflops']:.0f} GFLOP/s ({r['torch_threads']} threads). `{r['command']}`",
        "",
        *md_header("size", "params", "first load (materialize)", "cached load", "plain timm checkpoint", "materialize only", "GFLOP"),
    ]
    for s in r["sizes"]:
        lines.append(f"| {s['size']} | {s['params'] / 1e6:.1f}M | {s['first_load_s'] * 1000:.0f} ms | {s['cached_load_s'] * 1000:.0f} ms | "
                     f"{s['plain_checkpoint_load_s'] * 1000:.0f} ms | {s['materialize_s'] * 1000:.0f} ms | {s['materialize_gflop']:.2f} |")
    return lines + [""]


def overhead_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "### Training cost",
        "",
        f"Pre-training step time, same ViT, same loss and optimizer ({r['steps'][0]['images_per_step']} images/step). `{r['command']}`",
        "",
        *md_header("size", "SWEET step", "plain timm step", "overhead"),
    ]
    for s in r["steps"]:
        lines.append(f"| {s['size']} | {s['sweet_step_s'] * 1000:.0f} ms | {s['plain_timm_step_s'] * 1000:.0f} ms | {s['overhead'] * 100:+.1f}% |")
    sc = r["scaler_learning"]
    text = (f"Learning the scalers of {sc['size']}: {sc['seconds']:.0f} s, {sc['images']} unlabeled images, {sc['steps']} steps "
            f"(distillation loss {sc['distill_loss_before']} -> {sc['distill_loss_after']})")
    if "fraction_of_pretraining_time" in sc:
        text += (f", i.e. {sc['fraction_of_pretraining_time'] * 100:.1f}% of the template's pre-training time and "
                 f"{sc['fraction_of_pretraining_images'] * 100:.1f}% of its image passes")
    return lines + ["", text + ".", ""]


def augment_time_section(r: dict[str, Any]) -> list[str]:
    """What the views cost of a pre-training step, image by image (torchvision) and batched (benchmarks/augment_time.py):
    time spent making views is time the model does not train, and images per minute move quality at a fixed budget."""
    lines = [
        "### What the views cost of a step (image by image vs batched)",
        "",
        f"One step's views of {r['rows'][0]['batch_size']} Fashion-MNIST images for the bundled recipe "
        f"(`training/configs/fmnist.yaml`) and with 2 local crops more, made by `MultiCropAugment` image by image "
        f"(torchvision, the default) and batched (`batched_augment=true`), beside one optimizer step of the bundled "
        f"recipe's model on them (every anchor in the update); medians, {_threads(r['torch_threads'])}. `{r['command']}`",
        "",
        *md_header("recipe", "views", "image by image", "batched", "optimizer step", "share of a step, image by image",
                   "share, batched", "images per minute, batched"),
    ]
    for x in r["rows"]:
        lines.append(md_row(x["recipe"], str(x["views"]), f"{x['loop_ms']:.0f} ms", f"{x['batched_ms']:.0f} ms",
                            f"{x['step_ms']:.0f} ms", f"{x['loop_share']:.0%}", f"{x['batched_share']:.0%}",
                            f"{x['images_per_minute_gain']:+.0%}"))
    return [*lines, "", "![views vs training](benchmarks/results/augment_time.png)", ""]


def precision_section(r: dict[str, Any]) -> list[str]:
    """Step time of a plain ViT in fp32 against bf16 and torch.compile (benchmarks/step_precision.py): is a cheaper
    step, the lever that buys images at a fixed budget, there on this CPU?"""
    modes = [m for m in ("bf16_autocast", "bf16_weights", "compiled") if m in r["rows"][0]]
    flags = ", ".join(r["cpu_bf16"]) or "no bf16 instructions"
    lines = [
        "### Cheaper steps? (bf16 and torch.compile)",
        "",
        f"One optimizer step (forward, backward, AdamW) of a plain timm ViT, {r['batch_size']} images of 28x28, median; "
        f"torch {r['torch']}, {_threads(r['torch_threads'])}, CPU with {flags}. `{r['command']}`",
        "",
        *md_header("size", "fp32", *[m.replace("_", " ") for m in modes]),
    ]
    for row in r["rows"]:
        lines.append(md_row(row["size"], f"{row['fp32'] * 1000:.0f} ms",
                            *[f"{row[m] * 1000:.0f} ms ({row['vs_fp32'][m]:.2f}x)" for m in modes]))
    faster = sorted({m for row in r["rows"] for m in modes if row["vs_fp32"][m] < 0.95})
    lines += ["", ("Faster than fp32 by 5% or more: " + ", ".join(faster) + " (worth a recipe-study round)." if faster else
                   "No mode is 5% faster than fp32 at any size: on this CPU a cheaper step does not come from precision or "
                   "compilation."), ""]
    return lines


def storage_section(r: dict[str, Any]) -> list[str]:
    n = len(r["sizes"])
    lines = [
        "### Storage",
        "",
        f"Template ({r['template_bytes'] / 2**20:.2f} MB) + {n} scaler files = {r['total_template_plus_scalers_bytes'] / 2**20:.2f} MB, "
        f"vs {n} timm checkpoints = {r['total_checkpoints_bytes'] / 2**20:.1f} MB (**{r['ratio']:.0f}x**). `{r['command']}`",
    ]
    c = r.get("compute") or {}
    if "per_size_total_minutes_estimate" in c:
        lines.append("")
        text = (f"Pre-training: one template, {c['template_minutes']:.0f} min for every size. Pre-training only the anchor sizes "
                f"separately on as many images each would take an estimated {c['per_size_total_minutes_estimate']:.0f} min "
                f"({c['note']}), but that is not what matching the template costs:")
        quality = _load("init_quality")
        singles = {k: v for k, v in (quality or {}).get("pretraining", {}).items() if k.startswith("single_")}
        if singles:
            done = ", ".join(f"{k.removeprefix('single_')} after {v['images_seen']:,} images ({v['train_seconds'] / 60:.1f} min)"
                             for k, v in singles.items())
            knn = {(row["size"], row["init"]): row["knn"] for row in quality["rows"] if row["available"]}
            sizes = [k.removeprefix("single_") for k in singles]
            ahead = [s for s in sizes if knn.get((s, "per_size"), 0) > knn.get((s, "sweet"), 100)]
            text += (f" per-size runs reached the k-NN of the table above ({done}), above SWEET's at equal images at "
                     f"{len(ahead)} of their {len(sizes)} sizes{' (' + ', '.join(ahead) + ')' if ahead else ''}.")
        lines.append(text)
    return lines + [""]


READOUT_NAMES = {"pooled": "pooled (the protocol)", "pooled_centred": "pooled, centred", "tokens": "final tokens, flattened",
                 "tokens_centred": "final tokens, centred", "tokens_max": "final tokens, max-pooled",
                 "regions": "final tokens, 2x2 region means"}


def _validation_protocol(protocol: dict[str, Any]) -> str:
    return f"validation protocol ({protocol['train']} train images as memory, {protocol['test']} other train images as queries)"


def readout_section(r: dict[str, Any]) -> list[str]:
    px = r["pixels"]
    lines = [
        "### Where the k-NN is lost (read-outs)",
        "",
        f"The same models read {len(READOUT_NAMES)} ways, on the {_validation_protocol(r['protocol'])}. Pixels: k-NN {px['raw_pixels_knn']:.1f}% raw, "
        f"**{px['centred_pixels_knn']:.1f}%** mean-centred. `{r['command']}`",
        "",
        *md_header("size", "init", "scalers", *READOUT_NAMES.values()),
    ]
    for row in r["rows"]:
        lines.append(md_row(row["size"], row["init"], user_sizes(row["scalers"]), *[f"{row[k]:.1f}" if k in row else "-" for k in READOUT_NAMES]))
    gains = [(t["pooled"] - n["pooled"], t["tokens"] - n["tokens"]) for t, n in zip(r["rows"][::2], r["rows"][1::2])]
    lines += ["", f"Pre-training lifts pooled features {min(g[0] for g in gains):+.1f} to {max(g[0] for g in gains):+.1f} points over "
              f"random init, the flattened tokens {min(g[1] for g in gains):+.1f} to {max(g[1] for g in gains):+.1f}. "
              + ("Pooled template features stay under mean-centred pixels at every size."
                 if all(t["pooled"] < px["centred_pixels_knn"] for t in r["rows"][::2])
                 else "Pooled template features beat mean-centred pixels at some sizes.")]
    template_rows = [t for t in r["rows"][::2] if "regions" in t]
    if template_rows:  # read-outs measured before the max-pooled and region columns existed have no such keys
        def span(key: str) -> str:
            low, high = (f"{f(t[key] - t['pooled'] for t in template_rows):+.1f}" for f in (min, max))
            return low if low == high else f"{low} to {high}"

        lines[-1] += (f" Other poolings of the template's tokens against the pooled features: max-pooled {span('tokens_max')}, "
                      f"2x2 region means {span('regions')}, flattened {span('tokens')}; what the flattened tokens add "
                      "over the mean is in the per-token layout, not in a coarser pooling.")
    return lines + ["", "![read-outs](benchmarks/results/readout.png)", ""]


def finetune_scale_section(r: dict[str, Any]) -> list[str]:
    """Few-label fine-tuning against the scale of the pooled features and with a warm-started head
    (benchmarks/finetune_scale.py): how much of the fine-tuning column is the protocol's fresh head rather than the
    initialization."""
    rows = r["rows"]
    columns = sorted({(x.get("head", "fresh") == "probe", x["scale"]) for x in rows})  # fresh heads first, by scale
    cell = {(x["size"], x["init"], x.get("head", "fresh") == "probe", x["scale"]): x for x in rows}
    commands = " and ".join(f"`{c}`" for c in r.get("commands", [r["command"]]))
    lines = [
        "### How much of fine-tuning is the fresh head? (feature scale, warm-started head)",
        "",
        f"The fine-tuning protocol ({r['protocol']['finetune_labels']} labels, {r['steps']} AdamW steps, a fresh linear head) "
        f"with every pooled feature multiplied by a factor (the final norm's weight and bias): under AdamW the factor is "
        f"how fast the new head's logits move against how far the backbone drifts while the head is still random. "
        f"'probe head': the head starts at the linear probe of the frozen features on the same labelled images instead "
        f"(linear probing, then fine-tuning). Validation protocol: the labelled images come from the memory images, the "
        f"{r['protocol']['test']} queries are other train images; mean +- std over seeds {', '.join(map(str, r['seeds']))}. "
        f"{commands}",
        "",
        *md_header("size", "init", *[f"x{s:g}" + (", probe head" if probe else "") for probe, s in columns]),
    ]
    sizes = list(dict.fromkeys(x["size"] for x in rows))
    inits = ("template", "random init")
    for size in sizes:
        for init in inits:
            if any((size, init, *c) in cell for c in columns):
                lines.append(md_row(size, init, *[f"{cell[(size, init, *c)]['mean']:.1f} +- {cell[(size, init, *c)]['std']:.1f}"
                                                  if (size, init, *c) in cell else "-" for c in columns]))
    common = [c for c in columns if all((size, init, *c) in cell for size in sizes for init in inits)]
    if (False, 1.0) in common:
        def gaps(c: tuple[bool, float]) -> str:
            return ", ".join(f"{size} {cell[(size, 'template', *c)]['mean'] - cell[(size, 'random init', *c)]['mean']:+.1f}"
                             for size in sizes)

        lines += ["", "Template minus random init: " + "; ".join(
            f"at x{s:g}{' with a probe head' if probe else ''} {gaps((probe, s))}" for probe, s in common) + "."]
    return lines + ["", "![fine-tuning vs feature scale](benchmarks/results/finetune_scale.png)", ""]


POOL_NAMES = {"pooled": "mean pool (the protocol)", "avg_mlp": "mean pool + trained MLP (control)", "map": "trained attention pool"}


def attention_pool_section(r: dict[str, Any]) -> list[str]:
    """Learned read-outs of frozen template models (benchmarks/attention_pool.py) against the mean pool."""
    o, rows = r["objective"], r["rows"]
    lines = [
        "### Would a learned pool read the tokens better? (frozen models)",
        "",
        f"Each materialized model frozen; an attention pool (timm `AttentionPoolLatent`, what `global_pool='map'` builds) "
        f"and, as its control, a residual MLP on the mean pool, each trained for {o['steps']} steps of {o['batch_size']} "
        f"images with the recipe's self-supervised objective (global crops {o['global_scale'][0]}-{o['global_scale'][1]} "
        f"of the area, InfoNCE at T={o['temperature']}, a fresh projection head), then read by k-NN on the "
        f"{_validation_protocol(r['protocol'])}. Mean-centred pixels: {r['pixels']['centred_pixels_knn']:.1f}%. `{r['command']}`",
        "",
        *md_header("size", "scalers", *POOL_NAMES.values(), "training (s)"),
    ]
    for row in rows:
        lines.append(md_row(row["size"], user_sizes(row["scalers"]), *[f"{row[k]:.1f}" for k in POOL_NAMES], f"{row['train_seconds']:.0f}"))

    def span(key: str) -> str:
        low, high = (f"{f(x[key] - x['pooled'] for x in rows):+.1f}" for f in (min, max))
        return low if low == high else f"{low} to {high}"

    verdict = ("a learned pool trained with this objective is not the lever the flattened tokens point to"
               if all(x["map"] <= x["pooled"] for x in rows) else "a learned pool can beat the mean at some sizes")
    lines += ["", f"Against the mean pool: attention pool {span('map')}, control {span('avg_mlp')}; {verdict}.",
              "", "![learned pools](benchmarks/results/attention_pool.png)", ""]
    return lines


def _spread(s: dict[str, Any]) -> str:
    return f"{s['mean']:.1f} ± {s['std']:.1f} ({min(s['blocks']):.1f}-{max(s['blocks']):.1f})"


def query_noise_section(r: dict[str, Any]) -> list[str]:
    """One k-NN number against other draws of its queries (benchmarks/query_noise.py): the noise bar, the gap to
    pixels on the whole test split, and how much the validation protocol's seen-in-pre-training queries flatter."""
    n, size = r["blocks"], r["block_size"]
    rows = r["rows"]
    lines = [
        "### How much one k-NN number moves (query draws)",
        "",
        f"The test protocol's memory bank ({r['protocol']['train']} train images) against {n} disjoint blocks of {size} test images "
        f"and {n} blocks of {size} held-out train images (the validation protocol's kind of query, which pre-training has "
        f"seen without labels). Nothing here picks a template or recipe. `{r['command']}`",
        "",
        *md_header("size", "init", f"the protocol's {size} test images", "test blocks: mean ± std (range)",
                   "held-out train blocks: mean ± std (range)", "held-out minus test"),
    ]
    for row in rows:
        lines.append(md_row(row["size"], row["init"], f"{row['protocol']:.1f}", _spread(row["test"]), _spread(row["held_out_train"]),
                            f"{row['validation_bias']:+.2f}"))
    centred = next(x for x in rows if x["init"] == "mean-centred")
    templates = [x for x in rows if x["init"] == "template"]
    others = [x for x in rows if x["init"] != "template"]
    widest = max(rows, key=lambda x: max(x["test"]["blocks"]) - min(x["test"]["blocks"]))
    gaps = [x["test"]["mean"] - centred["test"]["mean"] for x in templates]
    protocol_gaps = [x["protocol"] - centred["protocol"] for x in templates]
    lines += ["", f"One {size}-query number moves by up to {max(widest['test']['blocks']) - min(widest['test']['blocks']):.1f} points "
              f"between draws ({widest['size']} {widest['init']}; std over blocks {min(x['test']['std'] for x in rows):.1f} to "
              f"{max(x['test']['std'] for x in rows):.1f}). On the whole test split the template is {min(gaps):+.2f} to {max(gaps):+.2f} "
              f"against mean-centred pixels, where the protocol's draw says {min(protocol_gaps):+.1f} to {max(protocol_gaps):+.1f}. "
              f"Held-out train queries score the template {min(x['validation_bias'] for x in templates):+.2f} to "
              f"{max(x['validation_bias'] for x in templates):+.2f} above test images, pixels and random init "
              f"{min(x['validation_bias'] for x in others):+.2f} to {max(x['validation_bias'] for x in others):+.2f}: "
              + ("the validation protocol flatters a pre-trained model against pixels (its queries were seen in "
                 "pre-training), so it compares templates with each other, not with pixels."
                 if max(x["validation_bias"] for x in templates) > max(x["validation_bias"] for x in others) + 0.5 else
                 "no more than the others, so pre-training has not remembered its images in a way the validation "
                 "protocol would reward; the gap between the protocol's number and the whole split is the query draw."), "",
              "![query draws](benchmarks/results/query_noise.png)", ""]
    return lines


def _training_facts(entry: dict[str, Any]) -> str:
    stats = entry.get("training") or {}
    facts = (f"{stats['images_seen']:,} images, {stats['train_seconds'] / 60:.0f} min on {_threads(stats['threads'])}"
             if {"images_seen", "train_seconds", "threads"} <= stats.keys() else "training not recorded")
    made = f", made by {entry['training_command']}" if entry.get("training_command") else ""
    return (f"{entry['label']} (`{entry['path']}`): {facts}" + (f", starting from {entry['initial_weights']}" if entry.get("initial_weights") else "")
            + made)


def compare_sections(r: dict[str, Any]) -> list[str]:
    """``compare_templates.json`` (the bundled template against the one before it), then every other comparison kept
    (``compare_templates_*.json``: e.g. a retrain that was not shipped), each with its own heading and plot."""
    others = sorted(RESULTS.glob("compare_templates_*.json"))
    return [*compare_section(r), *(line for path in others for line in compare_section(json.loads(path.read_text()), path.stem))]


def compare_section(r: dict[str, Any], stem: str = "compare_templates") -> list[str]:
    """Templates side by side on the validation protocol: shipped scalers, and weights only (derived where learned ship).
    The heading and the note saying what the templates are come from the run (``--heading``, ``--note``); the plot is
    ``benchmarks/results/{stem}.png``."""
    entries = r["templates"]
    heading, context = r["heading"], (f" {r['note']}" if r["note"] else "")
    lines = [
        f"### {heading}",
        "",
        f"On the {_validation_protocol(r['protocol'])}; the test split is never read. 'weights only': anchors and derived "
        f"scalers, so the templates compare on "
        f"their weights (learned scalers are fitted to one template). {'; '.join(_training_facts(e) for e in entries)}. "
        f"Pixels: k-NN {r['pixels']['raw_pixels_knn']:.1f}% raw, {r['pixels']['centred_pixels_knn']:.1f}% centred. `{r['command']}`"
        + context,
        "",
        *md_header("size", *[f"{e['label']} {kind}" for e in entries for kind in ("scalers", "k-NN", "k-NN weights only", "probe")]),
    ]
    for i, row in enumerate(entries[0]["rows"]):
        cells = []
        for e in entries:
            x = e["rows"][i]
            weights_only = derived_knn(x)
            cells += [user_sizes(x["scalers"]), f"{x['knn']:.1f}", "n/a" if math.isnan(weights_only) else f"{weights_only:.1f}",
                      f"{x['linear_probe']:.1f}"]
        lines.append(md_row(row["size"], *cells))
    base = entries[0]
    for other in entries[1:]:
        spans = []
        for kind, read in (("weights only", derived_knn), ("with the scalers each ships", lambda x: x["knn"])):
            gains = [g for g in (read(o) - read(b) for b, o in zip(base["rows"], other["rows"])) if not math.isnan(g)]
            spans.append(f"{kind}: k-NN {min(gains):+.1f} to {max(gains):+.1f} (mean {sum(gains) / len(gains):+.2f}) over "
                         f"{len(gains)} sizes, higher at {sum(g > 0 for g in gains)}")
        lines += ["", f"{other['label']} - {base['label']}, {'; '.join(spans)}; one seed each, so differences under 1.5 "
                  f"points are noise."]
    return lines + ["", f"![templates side by side](benchmarks/results/{stem}.png)", ""]


def _of_it(share: Fraction) -> str:
    return "all of it" if share == 1 else str(share)


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def _budget_shares(r: dict[str, Any]) -> str:
    """Which variants got only part of the budget: per-size runs of one anchor (three trained one by one share it), and
    phases chained with ``initial_from`` (a later phase's row counts the phases before it)."""
    variants = r["variants"]
    share = lambda v: Fraction(v["changes"].get("budget_fraction", 1)).limit_denominator(12)
    later = {name: v["changes"]["initial_from"] for name, v in variants.items() if "initial_from" in v["changes"]}
    phases = set(later) | set(later.values())
    by_share: dict[Fraction, list[str]] = {}
    for name, v in variants.items():
        if name not in phases and share(v) != 1:
            by_share.setdefault(share(v), []).append(f"`{name}`")
    single = [f"{_and(names)} {'gets' if len(names) == 1 else 'get'} {s} of it" for s, names in by_share.items() if s < 1]
    longer = [f"{_and(names)} {'gets' if len(names) == 1 else 'get'} {s} times it" for s, names in by_share.items() if s > 1]
    chained = [f"`{name}` starts from `{parent}`'s template and trains for {share(variants[name])} of the budget after "
               f"{_of_it(share(variants[parent]))} in `{parent}` (its row counts both)"
               for name, parent in later.items()]
    parts = ([", ".join(single) + ", as one of three anchors pre-trained one by one would"] if single else []) + chained
    parts += [", ".join(longer) + ", to see whether a lead grows with the budget"] if longer else []
    return "; " + "; ".join(parts) if parts else ""


def recipe_section(r: dict[str, Any]) -> list[str]:
    b = r["baselines"]
    sizes = list(next(iter(r["variants"].values()))["sizes"])
    anchors = {format_size(*a) for a in r["anchors"]}
    lines = [
        "### What makes a template good (recipe study)",
        "",
        f"The wall-clock budget of a variant is {r['budget_minutes']:g} min ({r['threads_per_run']} thread, "
        f"{r['parallel_runs']} runs at a time{_budget_shares(r)}). Validation protocol, never the test images: {r['protocol']}. "
        f"{_pixel_line(b)} on the same protocol. Variants are compared with the base re-run in the same round (throughput "
        "drifts between rounds and machines); under 1.5 points is noise unless another seed (`_s1`) repeats it.",
        "",
        *md_header("variant", "images seen", "k-NN anchors", "k-NN unseen", "probe anchors", "probe unseen", "materialize",
                   *[s + ("" if s in anchors else " *") for s in sizes]),
    ]
    random_row = [b["random_init"].get(s, {}).get("knn") for s in sizes]
    lines.append(md_row("random init", "-", "-", "-", "-", "-", "-", *[f"{v:.1f}" if v is not None else "-" for v in random_row]))
    for name, v in r["variants"].items():
        cells = [f"{v['sizes'][s]['knn']:.1f}" if s in v["sizes"] else "n/a" for s in sizes]
        fmt = lambda x: "n/a" if x is None else f"{x:.1f}"
        mat = v.get("materialize_ms")
        lines.append(md_row(name, f"{v['images_seen']:,}", fmt(v["mean_knn_anchors"]), fmt(v["mean_knn_unseen"]),
                            fmt(v["mean_probe_anchors"]), fmt(v["mean_probe_unseen"]),
                            f"{mat['ms']:.0f} ms ({mat['size']})" if mat else "-", *cells))
    lines += ["", "k-NN (%) per size; * = unseen size (no stored scalers, derived from the nearest anchor). Changes of each "
              "variant: `benchmarks/recipe_study.py` (PLANS).", "", *_rounds_details(r), "",
              "![recipe study](benchmarks/results/recipe_study.png)", ""]
    return lines


def _rounds_details(r: dict[str, Any]) -> list[str]:
    """The command of every round and the notes kept with them, folded away: a record to check against, not to read
    first."""
    invocations = r.get("invocations") or [{"command": r["command"], "variants": list(r["variants"])}]
    lines = ["<details><summary>The rounds: commands and notes</summary>", "", *md_header("command", "variants")]
    escape = lambda text: text.replace("|", "\\|")  # a pipe in a command would end its table cell
    lines += [md_row(f"`{escape(i['command'])}`", ", ".join(i["variants"])) for i in invocations]
    return lines + (["", r["notes"]] if r.get("notes") else []) + ["", "</details>"]


FIT_NAMES = {"fit_derived": "fit, derived (selection)", "fit_learned": "fit, learned scalers", "weight_selection": "weight selection",
             "random": "random init"}


def _fit_sources_note(r: dict[str, Any]) -> str:
    """Whether the sources are the per-size runs of the init_quality table above: a source whose k-NN differs from that
    table's per-size row was an earlier run's (the run cache was re-made since), and the reader should know."""
    quality = _load("init_quality")
    per_size = {row["size"]: row["knn"] for row in quality["rows"] if row["init"] == "per_size" and row["available"]} if quality else {}
    stale = [f"{name} {f['source']['knn']:.2f} against {per_size[name]:.2f}" for name, f in r["fits"].items()
             if name in per_size and abs(f["source"]["knn"] - per_size[name]) > 0.01]
    if not stale:
        return ""
    return (f". The sources are an earlier `init_quality.py` run's, not the per-size runs of the table above (source k-NN "
            f"{', '.join(stale)}); delete the `fit_vs_selection` cache in the run folder and re-run to refresh.")


def fit_section(r: dict[str, Any]) -> list[str]:
    ref = r["reference"]
    learned = r["plan"]["learned"]
    lines = [
        "### A template fitted to a checkpoint (`sweet-hub fit`) vs weight selection",
        "",
        f"Sources: the per-size pre-trained ViTs of `init_quality.py` (plain timm checkpoints; `fit` sees only their weights), "
        f"fitted at full ranks. Learned scalers: {learned['images']} unlabeled train images, {learned['steps']} distillation steps "
        f"per size, the source as teacher. Protocol: {r['protocol']['train']} train / {r['protocol']['test']} test images, "
        f"fine-tuning {r['eval']['finetune_steps']} steps on {r['eval']['finetune_labels']} labels, mean ± std over "
        f"{len(r['eval']['seeds'])} seeds. {_pixel_line(ref)}. `{r['command']}`{_fit_sources_note(r)}",
        "",
        *md_header("source", "k-NN source", "k-NN fitted (source size)", "fit time", "learned scalers time", "benchmark time"),
    ]
    for name, f in r["fits"].items():
        threads = f.get("torch_threads", r["torch_threads"])
        lines.append(md_row(name, f"{f['source']['knn']:.2f}", f"{f['fitted_at_source']['knn']:.2f}", f"{f['fit_seconds']:.1f} s",
                            f"{f['learned_seconds'] / 60:.1f} min", f"{f['seconds'] / 60:.0f} min, {_threads(threads)}"))
    lines += ["", *md_header("source", "size", "", *[FIT_NAMES[i] for i in FIT_NAMES])]
    rows = {(x["source"], x["size"], x["init"]): x for x in r["rows"]}
    for source in r["fits"]:
        for size in dict.fromkeys(x["size"] for x in r["rows"] if x["source"] == source):
            kind = next(x["kind"] for x in r["rows"] if x["source"] == source and x["size"] == size)
            cells = []
            for init in FIT_NAMES:
                x = rows.get((source, size, init))
                cells.append(f"{x['knn']:.1f} / {x['linear_probe']:.1f} / {x['finetune_mean']:.1f}±{x['finetune_std']:.1f}"
                             if x and x["available"] else "n/a")
            lines.append(md_row(source, size, kind, *cells))
    lines += ["", "Cells: k-NN / linear probe / 1%-label fine-tune (%). n/a: weight selection cannot make a larger model. "
              "At smaller sizes 'fit, derived' is nearly weight selection: the same layers and residual channels, but MLP "
              "hidden units taken from each quarter of the source's hidden layer instead of its first 4 x width.", ""]
    if not r.get("complete", True):
        lines += [f"Sources measured so far: {', '.join(r['fits'])} of {', '.join(f'{d}x{w}' for d, w in r['plan']['sources'])} "
                  "(the run resumes from its cache: run the command again).", ""]
    lines += [*_fit_losses(r), "", "![fit vs selection](benchmarks/results/fit_vs_selection.png)", ""]
    return lines


def _fit_losses(r: dict[str, Any]) -> list[str]:
    """Where the fit with learned scalers does not win: below weight selection (smaller sizes) or
    less than 5 points above random init (larger sizes), per metric."""
    rows = {(x["source"], x["size"], x["init"]): x for x in r["rows"] if x["available"]}
    metrics = {"knn": "k-NN", "linear_probe": "probe", "finetune_mean": "fine-tune"}
    losses = []
    for (source, size, init), fit in rows.items():
        if init != "fit_learned":
            continue
        rival, margin = ("weight_selection", 0.0) if fit["kind"] == "smaller" else ("random", 5.0)
        other = rows.get((source, size, rival))
        if other is None:
            continue
        for key, label in metrics.items():
            if fit[key] - other[key] <= margin:
                losses.append(f"{source} -> {size} {label}: {fit[key]:.1f} vs {FIT_NAMES[rival]} {other[key]:.1f}")
    head = "Where the fit with learned scalers loses (smaller sizes: not above weight selection; larger: not 5 points above random):"
    return [head + (" " + "; ".join(losses) + "." if losses else " nowhere in this run.")]


#: result files written by something other than benchmarks/<name>.py
RUN_COMMANDS = {"bundled": "python training/evaluate_template.py --template sweet_hub/fmnist --sizes 4x64 6x128 8x192 6x96 6x160 "
                           "8x256 10x256 12x384 10x512 --linear-probe --finetune-labels 600 --json benchmarks/results/bundled.json"}


def bundled_section(r: dict[str, Any]) -> list[str]:
    """The bundled template as it ships, read three ways beside random init and pixels (training/evaluate_template.py),
    and which of the quality bars it clears: k-NN above mean-centred pixels, probe above the pixel probe, fine-tuning
    10 points above random init."""
    p, rows = r["protocol"], [x for x in r["sizes"] if x.get("available", True)]
    f = p["finetune"]
    lines = [
        "### The bundled template as shipped (k-NN, linear probe, 1%-label fine-tuning)",
        "",
        f"Every size from the scalers the bundled template ships (stored, else derived), on the demo's protocol "
        f"({p['train']} train / {p['test']} test images); fine-tuning: the whole model with a new head on {f['labels']} labelled "
        f"images for {f['steps']} steps, mean ± std over {len(f['seeds'])} seeds; random init: timm's init of the same size, "
        f"read the same ways. Pixels: k-NN {r['raw_pixels_knn']:.1f}% raw, **{r['centred_pixels_knn']:.1f}%** mean-centred; "
        f"linear probe **{r['pixels_linear_probe']:.1f}%**. `{r['command']}`",
        "",
        *md_header("size", "scalers", "k-NN", "linear probe", "fine-tune 1%", "random k-NN", "random probe", "random fine-tune 1%",
                   "fine-tune over random"),
    ]
    for x in rows:
        lines.append(md_row(format_size(x["depth"], x["width"]), user_sizes(x["init"]), f"{x['knn']:.1f}", f"{x['linear_probe']:.1f}",
                            f"{x['finetune_mean']:.1f} ± {x['finetune_std']:.1f}", f"{x['knn_random']:.1f}",
                            f"{x['linear_probe_random']:.1f}",
                            f"{x['finetune_mean_random']:.1f} ± {x['finetune_std_random']:.1f}",
                            f"{x['finetune_mean'] - x['finetune_mean_random']:+.1f}"))

    def bar(test, what: str) -> str:
        passed = [format_size(x["depth"], x["width"]) for x in rows if test(x)]
        return f"{what} at {len(passed)} of {len(rows)} sizes" + (f" ({', '.join(passed)})" if 0 < len(passed) < len(rows) else "")

    best = max(rows, key=lambda x: x["knn"])
    lines += ["", "; ".join([
        bar(lambda x: x["knn"] > r["centred_pixels_knn"], f"k-NN above mean-centred pixels ({r['centred_pixels_knn']:.1f})"),
        bar(lambda x: x["linear_probe"] > r["pixels_linear_probe"], f"linear probe above the pixel probe ({r['pixels_linear_probe']:.1f})"),
        bar(lambda x: x["finetune_mean"] - x["finetune_mean_random"] >= 10, "fine-tuning 10 or more points above random init"),
    ]) + f". Best k-NN: {format_size(best['depth'], best['width'])} ({best['knn']:.1f}).", ""]
    return lines


Section = tuple[str, Callable[[dict[str, Any]], list[str]]]
README_SECTIONS: tuple[Section, ...] = (
    ("demo", demo_section), ("bundled", bundled_section), ("init_quality", init_quality_section),
    ("equal_compute", equal_compute_sections), ("load_time", load_time_section), ("train_overhead", overhead_section),
    ("storage_cost", storage_section))
STUDY_SECTIONS: tuple[Section, ...] = (
    ("readout", readout_section), ("attention_pool", attention_pool_section),
    ("finetune_scale", finetune_scale_section), ("query_noise", query_noise_section), ("recipe_study", recipe_section),
    ("compare_templates", compare_sections), ("derived_scalers", derived_section), ("fit_vs_selection", fit_section),
    ("augment_time", augment_time_section), ("step_precision", precision_section))
DOCUMENTS: dict[str, tuple[str, str, tuple[Section, ...]]] = {
    "README.md": ("## Results", "Measured on a 2-core CPU; every table is generated by `benchmarks/readme_table.py` "
                  "from `benchmarks/results/*.json`. The studies behind them (read-outs, the recipe study, templates "
                  "compared, scalers, step costs) are in [`benchmarks/README.md`](benchmarks/README.md).", README_SECTIONS),
    "benchmarks/README.md": ("## Studies", "Generated like the top-level README's results: every table comes from "
                             "`results/*.json`, each with the command that wrote it.", STUDY_SECTIONS),
}


def build_section(document: str = "README.md") -> str:
    """The generated text between one document's results markers."""
    title, intro, sections = DOCUMENTS[document]
    parts = [title, "", intro, ""]
    for name, fn in sections:
        data = _load(name)
        parts += fn(data) if data else [f"_{name}: not run yet (`{RUN_COMMANDS.get(name, f'python benchmarks/{name}.py')}`)._", ""]
    text = "\n".join(parts).rstrip() + "\n"
    # sections link their plots from the repository root; a document in benchmarks/ links them from there
    return text.replace("](benchmarks/results/", "](results/") if document.startswith("benchmarks/") else text


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--print", action="store_true", help="print the sections instead of rewriting the files")
    args = parser.parse_args(argv)
    sections = {document: build_section(document) for document in DOCUMENTS}
    for document, section in sections.items():
        if args.print:
            print(section)
            continue
        path = ROOT / document
        text = path.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"{document} has no {START} ... {END} markers: add them where its results section goes")
        new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _, s=section: f"{START}\n{s}{END}", text, flags=re.DOTALL)
        write_text(path, new)
        print(f"updated {path}")
    return sections


if __name__ == "__main__":
    main()
