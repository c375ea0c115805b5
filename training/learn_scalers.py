"""Learn the scalers of a new size from a few unlabeled images; the template stays frozen.

    accelerate launch training/learn_scalers.py --template out/fmnist/template --depth 7 --width 160 \\
        --num-images 1000
    python training/learn_scalers.py --template sweet_hub/fmnist --sizes 6x96 10x512 --keep-if-better

``--keep-if-better`` stores a size's learned scalers only where they beat the derived ones on a
k-NN whose bank and queries are disjoint subsets of the *train* split (the test split is never
read), so a template never ships scalers worse than the ones it had (the zero-cost derived ones,
or the learned ones a second run continues).

The size's X, X_vec, U, V start from the template's scalers of that size: the derived ones (the
zero-cost initialization used for any size without a scaler file), its learned ones if it ships
them (a run with more images or steps then continues them), or an anchor's pre-trained ones (a
smaller anchor may copy the largest; sizes derived from that anchor then derive from the result).
They are trained to reproduce, token by token, the features of the template's largest anchor
(``--teacher DxW``: another anchor, e.g. the one a small size is derived from). Student and
teacher have different widths, so both are compared in the template's r-space (``tokens @ U /
sqrt(width)``), the space the pre-training projection head reads; ``--relation-weight`` adds a
term on the pooled features. Only the scaler file, config.json and the model card of the
template folder are rewritten; template.safetensors is never touched. Each size's entry is
written under a lock, so runs on other sizes may share the folder (one process per core).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweet_hub import SweetHubError, SweetTemplate
from sweet_hub.config import format_size, parse_size, size_key
from sweet_hub.files import write_text
from training.config import set_cpu_threads
from training.data import DataError, load_image_tensors

__all__ = ["learn_scalers", "main"]


def learn_scalers(template: SweetTemplate, depth: int, width: int, images: Tensor, steps: int = 300, batch_size: int = 128,
                  lr: float = 1e-3, seed: int = 0, accelerator=None, progress: bool = True,
                  teacher: tuple[int, int] | None = None, relation_weight: float = 0.0) -> dict[str, Any]:
    """:meth:`SweetTemplate.learn_scalers` (kept as a function for scripts written against 0.1)."""
    return template.learn_scalers(depth, width, images, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  accelerator=accelerator, progress=progress, teacher=teacher, relation_weight=relation_weight)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", required=True, help="template folder (the learned scalers are added to it)")
    parser.add_argument("--depth", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--sizes", nargs="+", metavar="DxW", help="several sizes in one run, e.g. 6x96 10x512 (instead of --depth/--width)")
    parser.add_argument("--data", default="fashion_mnist", help="fashion_mnist | imagefolder:PATH | Hub dataset id")
    parser.add_argument("--num-images", type=int, default=1000, help="unlabeled images to learn from")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--teacher", metavar="DxW", help="the anchor whose tokens the new scalers copy (default: the largest anchor)")
    parser.add_argument("--relation-weight", type=float, default=0.0, metavar="W",
                        help="weight of a relational term on the pooled features (each image's similarities to the rest of "
                             "the batch, student against teacher); 0 (default) copies tokens only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-if-better", action="store_true",
                        help="store the learned scalers of a size only if their k-NN on held-out *train* images (labels needed; "
                             "the test split is never read) beats the scalers they started from (derived, or learned before)")
    parser.add_argument("--report", help="also write the facts of every size to this JSON file")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: the cores divided among the processes)")
    args = parser.parse_args(argv)
    if args.sizes and (args.depth or args.width):
        parser.error("give either --sizes or --depth and --width, not both")
    if not args.sizes and not (args.depth and args.width):
        parser.error("give --depth and --width (or --sizes DxW ...)")
    if not args.relation_weight >= 0:  # also rejects nan
        parser.error(f"--relation-weight must be >= 0 (0 turns the relational term off), got {args.relation_weight}")

    from accelerate import Accelerator

    try:
        sizes = [parse_size(s) for s in args.sizes] if args.sizes else [(args.depth, args.width)]
        folder = Path(args.template)
        if not folder.is_dir():
            raise DataError(f"--template must be a local template folder (the learned scalers are written into it); "
                            f"download a Hub template first with `hf download {args.template} --local-dir DIR`.")
        template = SweetTemplate.from_pretrained(folder)
        teacher = parse_size(args.teacher) if args.teacher else None
        for depth, width in sizes:
            template.scaler_teacher(depth, width, teacher)  # a bad size or teacher fails before any data is read
        cfg = template.config
        data = load_image_tensors(args.data, "train", cfg.img_size, cfg.in_chans).subset(args.num_images, args.seed)
        validation = _validation_protocol(args.data, cfg) if args.keep_if_better else None
    except (SweetHubError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    accelerator = Accelerator()
    set_cpu_threads(accelerator, args.threads)
    report: dict[str, Any] = {}
    for depth, width in sizes:
        key = size_key(depth, width)
        candidate = copy.deepcopy(template) if validation is not None else template
        previous = dict(template.scaler_info.get(key, {}))  # a copy: learning in place replaces these facts
        start = _start_label(template.has_scalers(depth, width), previous)  # what the run starts from and must beat
        facts = learn_scalers(candidate, depth, width, data.images, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              seed=args.seed, accelerator=accelerator, progress=accelerator.is_local_main_process, teacher=teacher,
                              relation_weight=args.relation_weight)
        facts["data"] = f"{args.data} train, {len(data)} images, no labels"
        candidate.scaler_info[key]["data"] = facts["data"]
        previous_steps = _total_steps(previous) if start == "previous" else 0
        facts["total_steps"] = candidate.scaler_info[key]["total_steps"] = previous_steps + args.steps
        if start != "derived":  # the card then tells the whole history of these scalers
            facts["continued_from"] = ("the anchor scalers of pre-training" if start == "anchor" else
                                       f"learned scalers ({previous.get('images', '?')} images, {previous_steps} steps)")
            candidate.scaler_info[key]["continued_from"] = facts["continued_from"]
        if validation is not None:
            facts["validation_knn"] = {start: _knn(template, depth, width, validation), "learned": _knn(candidate, depth, width, validation)}
            facts["kept"] = facts["validation_knn"]["learned"] > facts["validation_knn"][start]
            if facts["kept"]:  # the card then says why these scalers were kept
                template.add_scalers(depth, width, candidate.stored_scalers(depth, width),
                                     **{k: v for k, v in candidate.scaler_info[key].items() if k not in ("depth", "width")},
                                     **{f"held_out_knn_{start}": facts["validation_knn"][start]},
                                     held_out_knn_learned=facts["validation_knn"]["learned"])
        if accelerator.is_main_process and template.has_scalers(depth, width) and facts.get("kept", True):
            facts["scaler_file"] = str(template.save_scalers(folder, depth, width))
        report[format_size(depth, width)] = facts
    if accelerator.is_main_process:
        print(json.dumps(report if args.sizes else report[format_size(*sizes[0])], indent=2))
        if args.report:
            write_text(Path(args.report), json.dumps({"template": str(folder), "sizes": report}, indent=2) + "\n")
    return report if args.sizes else report[format_size(*sizes[0])]


def _start_label(stored: bool, info: dict[str, Any]) -> str:
    """'derived' (no stored scalers), 'anchor' (an anchor's scalers from pre-training) or 'previous' (learned before)."""
    if not stored:
        return "derived"
    return "anchor" if info.get("source") == "anchor" else "previous"


def _total_steps(info: dict[str, Any]) -> int:
    """Steps behind a size's learned scalers over every run; older scalers recorded only their last run's."""
    return int(info.get("total_steps", info.get("steps", 0)))


def _validation_protocol(data: str, cfg):
    """k-NN bank and queries both from the train split (disjoint subsets): a choice made on it never sees the test images."""
    from training.evaluate import EvalProtocol

    try:
        return EvalProtocol(data, cfg.img_size, cfg.in_chans, train_size=5000, test_size=2000, finetune_labels=1, seed=7, holdout=True)
    except ValueError as e:
        raise DataError(f"--keep-if-better needs labels for its held-out k-NN: {e}") from None


def _knn(template: SweetTemplate, depth: int, width: int, protocol) -> float:
    from training.evaluate import evaluate_model

    return round(evaluate_model(template.materialize(depth, width), protocol, template.config.mean, template.config.std)["knn"], 2)


if __name__ == "__main__":
    main()
