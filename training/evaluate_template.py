"""Evaluate a template as it ships and write the result into its model card.

    python training/evaluate_template.py --template sweet_hub/fmnist --linear-probe --update-card
    python training/evaluate_template.py --template out/fmnist/template --sizes 4x64 10x512 \\
        --finetune-labels 600 --finetune-steps 100 --seeds 0 1 2 --json out/eval.json

The card a pre-training writes measures the template at the end of that run, when every size
that is not an anchor still has derived scalers. Scalers learned afterwards
(``training/learn_scalers.py``) change those sizes, so the card would describe weights that
no longer ship. This script materializes each size from the folder's current files (stored
scalers where it has them, derived otherwise), reads it with the same protocol (k-NN, and
optionally a linear probe and few-label fine-tuning), beside timm's random init of the same
size and the pixel baselines (raw and mean-centred k-NN, pixel probe). ``--update-card``
rewrites the card's Evaluation table and config.json only; tensor files are not touched.
``--reuse FILE ...`` (earlier ``--json`` files) takes the rows of sizes whose weights and settings did
not change from it (each row records a SHA-256 of the tensors its size is made from), so after
learning the scalers of one size only that size is measured again. The random-init columns are
taken on their own when only the template changed (each row also records a SHA-256 of its random
init's tensors), so evaluating a retrained template costs half.

The protocol is the demo's (5000 train / 2000 *test* images, seed 0): a report, never a
criterion for choosing scalers (``learn_scalers.py --keep-if-better`` chooses on held-out train
images).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweet_hub import SweetHubError, SweetTemplate
from sweet_hub.config import TemplateConfig, format_size, parse_size
from sweet_hub.files import write_text
from training.data import DataError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", required=True, help="template folder (or Hub repo id without --update-card)")
    parser.add_argument("--sizes", nargs="+", metavar="DxW", help="sizes to evaluate (default: the sizes the template stores)")
    parser.add_argument("--data", default="fashion_mnist", help="fashion_mnist | imagefolder:PATH | Hub dataset id (with labels)")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--linear-probe", action="store_true", help="also a linear probe of the frozen features")
    parser.add_argument("--finetune-labels", type=int, default=0, help="also fine-tune on this many labelled images (0: skip)")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (mean ± std)")
    parser.add_argument("--no-random-init", action="store_true", help="skip timm's random init of each size")
    parser.add_argument("--update-card", action="store_true", help="write the table into the folder's model card")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--reuse", metavar="JSON", nargs="+", default=[],
                        help="earlier --json files: reuse the rows of sizes whose weights and settings are unchanged")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, all cores)")
    args = parser.parse_args(argv)
    if args.finetune_labels < 0 or args.finetune_steps < 1:
        parser.error("--finetune-labels must be >= 0 and --finetune-steps >= 1")

    from training.evaluate import EvalProtocol
    from training.report import evaluate_models, metrics_markdown

    try:
        if args.update_card and not Path(args.template).is_dir():
            raise DataError(f"--update-card writes into a local template folder; '{args.template}' is not one (download it "
                            f"first with `hf download {args.template} --local-dir DIR`).")
        template = SweetTemplate.from_pretrained(args.template)
        sizes = [parse_size(s) for s in args.sizes] if args.sizes else template.sizes
        for depth, width in sizes:
            template.config.check_size(depth, width)  # a bad size fails before any data is read
        cfg = template.config
        protocol = EvalProtocol(args.data, cfg.img_size, cfg.in_chans, args.train_size, args.test_size, max(1, args.finetune_labels))
    except (SweetHubError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"protocol": protocol.description, "linear_probe": args.linear_probe, "random_init": not args.no_random_init,
                "finetune": {"labels": args.finetune_labels, "steps": args.finetune_steps, "seeds": args.seeds} if args.finetune_labels else None}
    fingerprints = {size: weights_fingerprint(template, *size) for size in sizes}
    random_fingerprints = {size: random_init_fingerprint(cfg, *size) for size in sizes} if settings["random_init"] else {}
    reused: dict[tuple[int, int], dict] = {}
    known_random: dict[tuple[int, int], dict] = {}
    reused_from: dict[str, str] = {}
    random_from: dict[tuple[int, int], str] = {}
    for path in args.reuse:
        rows, random_columns = _reusable_rows(path, settings, fingerprints, random_fingerprints)
        reused.update(rows)
        known_random.update(random_columns)
        reused_from.update({format_size(*size): path for size in rows})
        random_from.update({size: path for size in random_columns})
    todo = [size for size in sizes if size not in reused]
    known_random = {size: columns for size, columns in known_random.items() if size in todo}
    reused_from.update({f"{format_size(*size)} random init": random_from[size] for size in known_random})
    print(f"measuring {len(todo)} size(s) ({len(known_random)} of them without their random init), reusing {len(reused)} "
          f"from {', '.join(args.reuse)}" if args.reuse else f"measuring {len(todo)} size(s)")
    results = evaluate_models(todo, template.materialize, template.scaler_source, cfg, protocol, probe=args.linear_probe,
                              random_init=settings["random_init"], finetune_steps=args.finetune_steps if args.finetune_labels else 0,
                              seeds=args.seeds, progress=True, known_random=known_random)
    measured = {(r["depth"], r["width"]): {**r, "weights_sha256": fingerprints[(r["depth"], r["width"])],
                                           **({"random_init_sha256": random_fingerprints[(r["depth"], r["width"])]}
                                              if random_fingerprints else {})}
                for r in results["sizes"]}
    results["sizes"] = [reused.get(size) or measured[size] for size in sizes]
    results["settings"] = settings
    results["scope"] = ("Weights as shipped (each size from its stored scalers, or derived ones), measured by "
                        "`training/evaluate_template.py`.")
    results["command"] = "python training/evaluate_template.py " + " ".join(without_reuse(argv if argv is not None else sys.argv[1:]))
    results["reused_from"] = reused_from
    table = metrics_markdown(results)
    print(table)
    if args.json:
        write_text(Path(args.json), json.dumps(results, indent=2) + "\n")
    if args.update_card:
        template.card_info["metrics_table"] = table
        print(f"card updated: {template.save_card(args.template)}")
    return results


def without_reuse(argv: list[str]) -> list[str]:
    """The command line minus ``--reuse FILE ...``: reused rows equal what the plain command measures (same weights,
    same settings), so the recorded command is the one that reproduces every row."""
    out, skipping = [], False
    for arg in argv:
        if arg == "--reuse" or arg.startswith("--reuse="):
            skipping = arg == "--reuse"
            continue
        if skipping and not arg.startswith("-"):
            continue
        skipping = False
        out.append(arg)
    return out


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names and float32 values), independent of their order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def weights_fingerprint(template: SweetTemplate, depth: int, width: int) -> str:
    """SHA-256 of every tensor the size is materialized from: the cores and its scalers (stored or derived)."""
    return tensors_fingerprint({**{f"core.{k}": v for k, v in template.cores.items()}, **template.scalers_for(depth, width)})


def random_init_fingerprint(cfg: TemplateConfig, depth: int, width: int) -> str:
    """SHA-256 of the random-init reference of a size: the same architecture and seed give the same tensors."""
    from training.report import random_vit

    return tensors_fingerprint(random_vit(cfg, depth, width).state_dict())


def _reusable_rows(path: str, settings: dict[str, Any], fingerprints: dict[tuple[int, int], str],
                   random_fingerprints: dict[tuple[int, int], str]) -> tuple[dict[tuple[int, int], dict], dict[tuple[int, int], dict]]:
    """Rows of an earlier run measured with the same settings on the same weights, and the random-init
    columns of rows whose random init is the same (a retrained template keeps the architecture)."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        print(f"error: --reuse {path}: not a JSON file written by --json ({e})", file=sys.stderr)
        raise SystemExit(2) from None
    if earlier.get("settings") != settings:
        print(f"--reuse {path}: measured with other settings (protocol, probe, fine-tuning or random init); nothing reused")
        return {}, {}
    rows = {(r["depth"], r["width"]): r for r in earlier.get("sizes", []) if r.get("available", True)}
    same_weights = {size: rows[size] for size, sha in fingerprints.items() if size in rows and rows[size].get("weights_sha256") == sha}
    same_random = {size: {k: v for k, v in rows[size].items() if k.endswith("_random") or k == "random_init_sha256"}
                   for size, sha in random_fingerprints.items() if size in rows and rows[size].get("random_init_sha256") == sha}
    return same_weights, same_random


if __name__ == "__main__":
    main()
