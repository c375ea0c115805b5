"""Two or more templates side by side on the validation protocol, at every size the demo shows.

    python benchmarks/compare_templates.py --templates sweet_hub/fmnist out/longer/template --labels bundled continued

Use it to decide whether a new template (a longer run, another recipe) should replace the bundled
one without reading the test images: memory = 5000 train images, queries = 2000 other train
images. Each size is read with the scalers the template ships (anchor, learned or derived) and,
where it ships learned scalers, also with the derived ones, so templates compare on their weights
alone (learned scalers are fitted to one template's weights and do not carry over). The training
facts recorded in each template's card (steps, images seen, wall time) are kept beside the scores.
Writes benchmarks/results/compare_templates.json and a plot.

Each row records a SHA-256 of the tensors its size is materialized from (``weights_sha256``, and
``derived_sha256`` for the weights-only reading). ``--reuse FILE ...`` (earlier outputs) takes the
scores of identical tensors read with the same protocol from them, so comparing a new candidate
with the bundled template measures the candidate only. Identical tensors within one run (learned
scalers stored unchanged) are scored once.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, add_validation_arguments, command, grouped_bars, load_template, save_result, validation_protocol

DEMO_SIZES = ["4x64", "6x128", "8x192", "6x96", "6x160", "8x256", "10x256", "12x384", "10x512"]


Scores = dict[str, dict[str, float]]  # weights SHA-256 -> {"knn": ..., "linear_probe": ...}


def score(template, depth: int, width: int, protocol, known: Scores) -> tuple[str, dict[str, float]]:
    """The weights' SHA-256 and their k-NN and probe: taken from ``known`` when identical tensors were scored (it
    learns the new ones)."""
    from training.evaluate import evaluate_model
    from training.evaluate_template import weights_fingerprint

    sha = weights_fingerprint(template, depth, width)
    if sha not in known:
        cfg = template.config
        metrics = evaluate_model(template.materialize(depth, width), protocol, cfg.mean, cfg.std, probe=True)
        known[sha] = {"knn": round(metrics["knn"], 2), "linear_probe": round(metrics["linear_probe"], 2)}
    return sha, known[sha]


def score_sizes(template, sizes: list[str], protocol, known: Scores | None = None) -> list[dict[str, Any]]:
    """k-NN and linear probe per size, with the shipped scalers and (where they are learned) the derived ones."""
    from sweet_hub.config import parse_size

    known = {} if known is None else known
    cfg = template.config
    rows = []
    for spec in sizes:
        depth, width = parse_size(spec)
        source = template.scaler_source(depth, width)
        sha, scores = score(template, depth, width, protocol, known)
        row = {"size": spec, "scalers": source, **scores, "weights_sha256": sha}
        if source == "learned" and cfg.is_anchor(depth, width):
            row["knn_derived"] = None  # an anchor whose pre-trained scalers were replaced: its weights alone are gone
        elif source == "learned":
            derived = copy.deepcopy(template)
            derived.remove_scalers(depth, width)
            sha, scores = score(derived, depth, width, protocol, known)
            row.update(knn_derived=scores["knn"], linear_probe_derived=scores["linear_probe"], derived_sha256=sha)
        print(f"{spec:>7} {source:<20} k-NN {row['knn']:5.1f}  probe {row['linear_probe']:5.1f}"
              + (f"  (derived: k-NN {row['knn_derived']:5.1f})" if row.get("knn_derived") is not None else ""), flush=True)
        rows.append(row)
    return rows


def reusable_scores(paths: list[str], protocol: dict[str, Any]) -> Scores:
    """Scores of earlier outputs read with the same protocol, keyed by the SHA-256 of the weights they read."""
    known: Scores = {}
    for path in paths:
        try:
            earlier = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: --reuse {path}: not a JSON file written by compare_templates.py ({e})") from None
        if earlier.get("protocol") != protocol:
            print(f"[compare] --reuse {path}: read with another protocol; nothing reused", flush=True)
            continue
        for row in (r for entry in earlier.get("templates", []) for r in entry.get("rows", [])):
            for suffix, sha in (("", row.get("weights_sha256")), ("_derived", row.get("derived_sha256"))):
                if sha and row.get(f"knn{suffix}") is not None:
                    known[sha] = {"knn": row[f"knn{suffix}"], "linear_probe": row[f"linear_probe{suffix}"]}
        print(f"[compare] --reuse {path}: {len(known)} scored weights so far", flush=True)
    return known


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", nargs="+", required=True, help="template folders or Hub repo ids")
    parser.add_argument("--labels", nargs="+", help="a short name per template (default: its path)")
    parser.add_argument("--sizes", nargs="+", default=DEMO_SIZES, help="DEPTHxWIDTH (default: the demo's sizes)")
    add_validation_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS / "compare_templates.json"))
    parser.add_argument("--reuse", metavar="JSON", nargs="+", default=[],
                        help="earlier outputs: reuse the scores of identical weights read with the same protocol")
    parser.add_argument("--heading", default="Is a new template better? (templates side by side)",
                        help="the README section's heading")
    parser.add_argument("--note", help="what the templates are and what the comparison decided (kept in the JSON, shown in "
                                       "the README under the table)")
    args = parser.parse_args(argv)
    labels = args.labels or args.templates
    if len(labels) != len(args.templates):
        parser.error(f"--labels needs one name per template: {len(args.templates)} templates, {len(labels)} labels")

    import torch

    from training.evaluate import pixel_baselines

    templates = [load_template(t)[0] for t in args.templates]
    first = templates[0].config
    for label, t in zip(labels, templates):
        if (t.config.img_size, t.config.in_chans) != (first.img_size, first.in_chans):
            parser.error(f"template '{label}' reads {t.config.in_chans}x{t.config.img_size}px images, the first one "
                         f"{first.in_chans}x{first.img_size}px: compare templates of the same input")
    protocol = validation_protocol(first, args)
    known = reusable_scores(args.reuse, protocol.description)
    entries = []
    for label, path, template in zip(labels, args.templates, templates):
        print(f"[compare] {label}: {path}", flush=True)
        facts = template.card_info.get("training") or {}
        entries.append({"label": label, "path": path, "training": template.card_info.get("stats"),
                        "training_command": facts.get("command"),  # as the card writes it, in backticks
                        "initial_weights": facts.get("initial weights"),
                        "rows": score_sizes(template, args.sizes, protocol, known)})
    from training.evaluate_template import without_reuse

    result = {"command": command("compare_templates.py", without_reuse(argv if argv is not None else sys.argv[1:])), "protocol": protocol.description,
              "pixels": {k: round(v, 2) for k, v in pixel_baselines(protocol).items()},
              "torch_threads": torch.get_num_threads(), "heading": args.heading, "note": args.note, "templates": entries}
    save_result(result, args.out, plot)
    return result


def derived_knn(row: dict[str, Any]) -> float:
    """The k-NN of a size with the template's own weights only (derived scalers where learned ones ship); NaN at
    an anchor whose pre-trained scalers were replaced by learned ones (``learn_scalers.py`` on an anchor)."""
    value = row.get("knn_derived", row["knn"])
    return float("nan") if value is None else value


def plot(result: dict[str, Any], path: Path) -> None:
    entries = result["templates"]
    series = {f"{e['label']} ({kind})": [fn(r) for r in e["rows"]] for e in entries
              for kind, fn in (("shipped scalers", lambda r: r["knn"]), ("anchor/derived", derived_knn))}
    grouped_bars(path, [r["size"] for r in entries[0]["rows"]], series,
                 hline=("mean-centred pixels", result["pixels"]["centred_pixels_knn"]), legend_loc="upper right",
                 xlabel="depth x width", ylabel="k-NN (%), validation", title="Templates side by side (validation protocol)")


if __name__ == "__main__":
    main()
