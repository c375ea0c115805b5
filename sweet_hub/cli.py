"""The ``sweet-hub`` command.

    sweet-hub info TEMPLATE                              what a template holds
    sweet-hub materialize TEMPLATE --depth L --width D   build a size into the cache, report timing
    sweet-hub export TEMPLATE --depth L --width D OUT    a stock timm repo folder (no sweet-hub needed)
    sweet-hub push FOLDER org/name                       upload a template or export folder to the Hub
    sweet-hub cache [--clear | --max-size 1GB]           list, clear or prune the materialization cache
    sweet-hub fit SOURCE --out DIR [--images N]          a template fitted to an existing ViT checkpoint

TEMPLATE is a folder, a Hub repo id (org/name[@revision]) or ``bundled`` (the template shipped
with sweet-hub). Errors are printed as one line naming the problem and the fix (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .config import CONFIG_NAME, README_NAME, TEMPLATE_NAME, format_size, scaler_filename, vit_numel
from .errors import SweetHubError

__all__ = ["main"]


def _template_source(name: str) -> str:
    from .timm_models import BUNDLED_TEMPLATE

    return str(BUNDLED_TEMPLATE) if name == "bundled" else name


def _load(args: argparse.Namespace):
    from .template import SweetTemplate

    return SweetTemplate.from_pretrained(_template_source(args.template), revision=args.revision, token=args.token)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    from .hub import resolve_template_files

    files = resolve_template_files(_template_source(args.template), revision=args.revision, token=args.token)
    template = _load(args)
    cfg = template.config
    info = {
        "source": files.source,
        "format_version": files.config["sweet_format_version"],
        "input": f"{cfg.in_chans}x{cfg.img_size}x{cfg.img_size}, patch {cfg.patch_size}",
        "head_dim": cfg.head_dim,
        "ranks": list(cfg.ranks),
        "vector_rank": cfg.vector_rank,
        "num_classes": cfg.num_classes,
        "derivation": cfg.derivation,
        "template_params": template.num_template_params(),
        "template_bytes": files.template_path.stat().st_size,
        "sizes": [
            {"size": format_size(d, w), "source": template.scaler_source(d, w), "scaler_params": template.num_scaler_params(d, w),
             "model_params": vit_numel(cfg, d, w)}
            for d, w in template.sizes
        ],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return info
    print(f"SWEET template  {info['source']}  (format v{info['format_version']})")
    print(f"  input         {info['input']}, head_dim {cfg.head_dim}, classes {cfg.num_classes}, pool {cfg.global_pool}")
    print(f"  ranks         {tuple(cfg.ranks)}, vector rank {cfg.vector_rank}")
    print(f"  template      {info['template_params']:,} parameters, {_human_bytes(info['template_bytes'])}")
    print(f"  {'size':<12}{'scalers':<22}{'scaler params':>14}{'model params':>14}")
    for s in info["sizes"]:
        print(f"  {s['size']:<12}{s['source']:<22}{s['scaler_params']:>14,}{s['model_params']:>14,}")
    rule = "by layer/channel selection" if cfg.derivation == "select" else "by resampling"
    print(f"  any other depth >= 1 and width multiple of head_dim: scalers derived from the nearest anchor {rule}")
    fit = template.card_info.get("fit")
    if isinstance(fit, dict) and "source_size" in fit:
        print(f"  fitted to     {fit.get('source')} ({fit['source_size']}); max relative reconstruction error "
              f"{max(fit.get('errors', {0: 0}).values()):.1e}")
    return info


def cmd_materialize(args: argparse.Namespace) -> dict[str, Any]:
    import timm

    from .cache import wait_for_writes
    from .tucker import materialize_flops

    overlay = dict(file=_template_source(args.template)) if Path(_template_source(args.template)).is_dir() \
        else dict(hf_hub_id=args.template if args.revision is None else f"{args.template}@{args.revision}")
    start = time.perf_counter()
    model = timm.create_model("sweet_vit", depth=args.depth, width=args.width, pretrained=True, pretrained_cfg_overlay=overlay)
    seconds = time.perf_counter() - start
    wait_for_writes()  # the entry is on disk when the command returns
    template = _load(args)
    report = {
        "size": format_size(args.depth, args.width),
        "scalers": template.scaler_source(args.depth, args.width),
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(seconds, 4),
        "materialize_gflops": round(materialize_flops(template.config, args.depth, args.width) / 1e9, 3),
    }
    print(json.dumps(report, indent=2) if args.json else
          f"{report['size']} ({report['scalers']}): {report['params']:,} parameters in {seconds * 1000:.0f} ms "
          f"({report['materialize_gflops']} GFLOP to materialize; cached for the next load)")
    return report


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from .export import export_timm

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SweetHubError(f"Output folder '{out}' is not empty; pass --overwrite to replace its files or choose another folder.")
    template = _load(args)
    kwargs = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    model = template.materialize(args.depth, args.width, **kwargs)
    provenance = {"template": args.template if args.template != "bundled" else "sweet-hub bundled template (fmnist)",
                  "template_revision": args.revision, "scalers": template.scaler_source(args.depth, args.width)}
    export_timm(model, out, provenance={k: v for k, v in provenance.items() if v is not None})
    print(f"Exported {format_size(args.depth, args.width)} to {out} (config.json, model.safetensors, README.md); "
          f"load it with timm.create_model('local-dir:{out}', pretrained=True) or push it with `sweet-hub push {out} org/name`.")
    return {"output": str(out)}


def artefact_files(folder: Path) -> tuple[str, list[str]]:
    """(kind, files) of a template or export folder: only the artefact's own files.

    A template is config.json, README.md, template.safetensors and the scaler files config.json
    lists; an export is config.json, README.md and model.safetensors. Anything else in the folder
    (stray ``.env`` files, pickles, notes) is never uploaded, and a file that is a symlink to a
    place outside the folder is refused.
    """
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise SweetHubError(f"'{folder}' has no config.json: push a template folder (save_pretrained) or an export folder.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SweetHubError(f"{config_path} is not valid JSON ({e}).") from None
    if isinstance(config, dict) and "sweet_format_version" in config:
        from .template import SweetTemplate

        template = SweetTemplate.from_pretrained(str(folder))  # validates every file before anything is uploaded
        kind, files = "template", [CONFIG_NAME, README_NAME, TEMPLATE_NAME, *(scaler_filename(d, w) for d, w in template.sizes)]
    elif (folder / "model.safetensors").is_file():
        kind, files = "timm export", [CONFIG_NAME, README_NAME, "model.safetensors"]
    else:
        raise SweetHubError(f"'{folder}' is neither a SWEET template nor a timm export (no model.safetensors).")
    root = folder.resolve()
    present = []
    for name in files:
        path = folder / name
        if not path.exists():
            continue
        if not path.resolve().is_relative_to(root):
            raise SweetHubError(f"{path} is a symlink to {path.resolve()}, outside '{folder}': refusing to upload it. "
                                f"Copy the file into the folder if it belongs to the artefact.")
        present.append(name)
    return kind, present


def cmd_push(args: argparse.Namespace) -> dict[str, Any]:
    from huggingface_hub import HfApi

    folder = Path(args.folder)
    kind, files = artefact_files(folder)
    left_out = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and str(p.relative_to(folder)) not in files)
    api = HfApi(token=args.token)
    repo_id = api.create_repo(args.repo_id, private=args.private, exist_ok=True).repo_id
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=args.commit_message or f"Upload SWEET {kind}",
                               revision=args.revision, allow_patterns=files)
    print(f"Pushed {kind} {folder} to {repo_id}: {commit} ({len(files)} files)")
    if left_out:
        print(f"Not uploaded (not part of the {kind}): {', '.join(left_out)}")
    return {"repo_id": repo_id, "commit": str(commit), "files": files, "left_out": left_out}


def cmd_cache(args: argparse.Namespace) -> dict[str, Any]:
    from .cache import cache_entries, cache_limit, cache_root, clear_cache, parse_bytes, prune_cache

    if args.clear:
        entries = cache_entries()
        freed = clear_cache()
        print(f"Removed {len(entries)} materialized checkpoints ({_human_bytes(freed)}) from {cache_root()}")
        return {"entries": len(entries), "bytes": freed}
    if args.max_size is not None:
        freed = prune_cache(parse_bytes(args.max_size))
        print(f"Removed {_human_bytes(freed)} of least recently used entries (limit {args.max_size})")
    entries = cache_entries()
    total = sum(e.bytes for e in entries)
    print(f"{cache_root()}: {len(entries)} materialized checkpoints, {_human_bytes(total)} "
          f"(limit {_human_bytes(cache_limit())}, SWEET_HUB_CACHE_LIMIT)")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        print(f"  {e.size:<10}{_human_bytes(e.bytes):>10}  last used {when}  {e.source}")
    return {"entries": len(entries), "bytes": total}


def cmd_fit(args: argparse.Namespace) -> dict[str, Any]:
    from .fit import fit_folder, format_report, parse_anchors, parse_model_args

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SweetHubError(f"Output folder '{out}' is not empty; pass --overwrite to replace its files or choose another folder.")
    report = fit_folder(args.source, out, model=args.model, model_args=parse_model_args(args.model_args), num_heads=args.num_heads,
                        ranks=args.ranks, anchors=parse_anchors(args.anchors), images=args.images, data=args.data, steps=args.steps,
                        distill_steps=args.distill_steps, patch_size=args.patch_size, knn=not args.no_knn, seed=args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report, out))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweet-hub", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sweet-hub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def template_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("template", help="template folder, Hub repo id (org/name), or 'bundled'")
        p.add_argument("--revision", help="Hub branch, tag or commit")
        p.add_argument("--token", help="Hub token (default: the one from `hf auth login`)")

    p = sub.add_parser("info", help="show a template's config and stored sizes")
    template_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    for name, func, help_text in (("materialize", cmd_materialize, "build one size into the materialization cache"),
                                  ("export", cmd_export, "write one size as a stock timm repo folder")):
        p = sub.add_parser(name, help=help_text)
        template_args(p)
        p.add_argument("--depth", type=int, required=True)
        p.add_argument("--width", type=int, required=True)
        if name == "export":
            p.add_argument("output", help="output folder")
            p.add_argument("--num-classes", type=int, help="replace the classifier (default: the template's)")
            p.add_argument("--overwrite", action="store_true")
        else:
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("push", help="upload a template (or export) folder to the Hub")
    p.add_argument("folder")
    p.add_argument("repo_id", help="org/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", help="branch to push to (default: main)")
    p.add_argument("--commit-message")
    p.add_argument("--token")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("cache", help="list, prune or clear the materialization cache")
    p.add_argument("--clear", action="store_true", help="remove every entry")
    p.add_argument("--max-size", help="remove least recently used entries until the cache fits (e.g. 1GB)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("fit", help="fit a template to an existing ViT checkpoint (timm name, hf-hub:, local-dir:, .safetensors)")
    p.add_argument("source", help="timm model name, hf-hub:org/name, local-dir:PATH (or a folder), or a .safetensors file")
    p.add_argument("--out", required=True, help="template folder to write")
    p.add_argument("--model", help="timm architecture of a .safetensors SOURCE (e.g. vit_small_patch16_224)")
    p.add_argument("--model-args", nargs="*", metavar="KEY=VALUE", help="timm.create_model arguments (depth=8 embed_dim=192 ...)")
    p.add_argument("--num-heads", type=int, help="attention heads of a bare .safetensors state dict (no --model)")
    p.add_argument("--patch-size", type=int, help="refuse a source whose patch size is not this one")
    p.add_argument("--ranks", type=int, nargs=3, metavar=("R1", "R2", "R3"), help="Tucker ranks (default: full, exact: 12L D D)")
    p.add_argument("--anchors", help="extra sizes to store scalers for, e.g. 4x64,6x128 (learned with --images, else derived)")
    p.add_argument("--images", type=int, help="unlabeled images to distil the source's features on")
    p.add_argument("--data", default="fashion_mnist", help="dataset of --images and of the k-NN check: fashion_mnist, "
                   "imagefolder:PATH, or a Hub dataset id (default: fashion_mnist)")
    p.add_argument("--steps", type=int, default=300, help="refinement steps on the reconstruction error (when not exact)")
    p.add_argument("--distill-steps", type=int, default=300, help="distillation steps per learned size (with --images)")
    p.add_argument("--no-knn", action="store_true", help="skip the k-NN check of source vs fitted template")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report to this JSON file")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SweetHubError as e:
        print(f"sweet-hub: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # full or read-only disk, permissions: the file and the reason, no traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"sweet-hub: error: {e.strerror or e}{where}; free space or choose another folder.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
