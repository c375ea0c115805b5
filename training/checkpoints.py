"""Training checkpoints that survive kills and power loss, and a resume that skips torn ones.

A checkpoint is Accelerate's ``save_state`` folder (model, optimizer, RNG states and the
registered objects; the last ones are pickles: resume only from checkpoints you wrote). It is
written to ``checkpoints/.tmp_step_N``, completed with ``checkpoint.json`` (size and SHA-256 of
every file), fsynced, and only then renamed to ``checkpoints/step_N``. On ``--resume`` the newest
checkpoint whose files match their manifest is used; a torn one (a kill or a power loss between
writing and syncing, a file truncated afterwards) is skipped with a message naming what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from sweet_hub.files import file_sha256, fsync

__all__ = ["MANIFEST", "checkpoint_dirs", "latest_complete_checkpoint", "save_checkpoint", "verify_checkpoint"]

MANIFEST = "checkpoint.json"


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Renamed (finished) checkpoint folders, oldest first."""
    root = output_dir / "checkpoints"
    dirs = [p for p in root.glob("step_*") if p.is_dir() and p.name.split("_")[1].isdigit()] if root.is_dir() else []
    return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))


def _write_manifest(folder: Path, step: int) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"step": step, "files": {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                                        for p in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for path in [*files, folder / MANIFEST, folder]:
        fsync(path)


def verify_checkpoint(folder: Path) -> str | None:
    """None if every file of the checkpoint matches its manifest, else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        entries = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST} (written last: the save did not finish)"
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {entry['bytes']} were written"
        if file_sha256(path) != entry["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def latest_complete_checkpoint(output_dir: Path, report: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that verifies; torn ones are reported and skipped."""
    for folder in reversed(checkpoint_dirs(output_dir)):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        report(f"Skipping torn checkpoint {folder}: {problem}.")
    return None


def save_checkpoint(accelerator, output_dir: Path, step: int, total_limit: int) -> None:
    """``save_state`` into a temporary folder, add the manifest, sync, rename; keep the newest
    ``total_limit`` checkpoints."""
    tmp = output_dir / "checkpoints" / f".tmp_step_{step}"
    if accelerator.is_main_process:  # leftovers of a killed save or deletion
        for stale in [*tmp.parent.glob(".tmp_step_*"), *tmp.parent.glob(".trash_step_*")]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_manifest(tmp, step)
        final = output_dir / "checkpoints" / f"step_{step}"
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        fsync(final.parent)
        for old in checkpoint_dirs(output_dir)[:-total_limit]:
            _discard(old)
    accelerator.wait_for_everyone()


def _discard(folder: Path) -> None:
    """Rename a checkpoint out of the ``step_*`` namespace, then delete it: a kill in the middle
    of the deletion never leaves a half-deleted folder that looks like a checkpoint."""
    trash = folder.with_name(f".trash_{folder.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
