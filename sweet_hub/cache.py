"""Materialization cache: the second load of a size is a plain safetensors checkpoint load.

Entries are keyed by the identity of every file they were built from (resolved path, size and
modification time; Hub files live in content-addressed blobs, so a new revision is a new key),
the size, the dtype and the materialization code version. Stale entries are never read; they are
removed by ``sweet-hub cache --clear``.

Location: ``$SWEET_HUB_CACHE`` or ``$HF_HOME/sweet_hub/materialized``. Set
``SWEET_HUB_DISABLE_CACHE=1`` to materialize into a temporary file on every load instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import constants
from safetensors import SafetensorError, safe_open

from .config import FORMAT_VERSION
from .hub import TemplateFiles, save_safetensors

__all__ = ["cache_enabled", "cache_key", "cache_root", "cache_size", "clear_cache", "materialized_checkpoint"]

#: bump when materialize_state_dict changes its output for the same files
MATERIALIZE_VERSION = 1


def cache_root() -> Path:
    root = os.environ.get("SWEET_HUB_CACHE")
    return Path(root) if root else Path(constants.HF_HOME) / "sweet_hub" / "materialized"


def cache_enabled() -> bool:
    return os.environ.get("SWEET_HUB_DISABLE_CACHE", "").lower() not in ("1", "true", "yes", "on")


def _file_identity(path: Path) -> str:
    real = os.path.realpath(path)
    stat = os.stat(real)
    return f"{real}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_key(files: TemplateFiles, depth: int, width: int, dtype: torch.dtype) -> str:
    parts = [f"v{FORMAT_VERSION}.{MATERIALIZE_VERSION}", str(depth), str(width), str(dtype)]
    parts += [_file_identity(p) for p in files.all_paths]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def _is_readable(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return len(f.keys()) > 0
    except (SafetensorError, OSError):
        return False


def materialized_checkpoint(
    files: TemplateFiles,
    depth: int,
    width: int,
    build: Callable[[], dict[str, torch.Tensor]],
    dtype: torch.dtype = torch.float32,
    directory: Path | None = None,
) -> tuple[Path, bool]:
    """Path of a safetensors checkpoint of (depth, width), building it with ``build()`` on a miss.

    Returns (path, hit). ``directory`` overrides the cache root (used for the no-cache mode).
    """
    root = directory or cache_root()
    path = root / f"{cache_key(files, depth, width, dtype)}.safetensors"
    if path.is_file() and _is_readable(path):
        return path, True
    state = build()
    metadata = {"format": "sweet-materialized", "source": files.source, "depth": str(depth), "width": str(width)}
    save_safetensors(state, path, metadata)
    return path, False


def cache_size() -> tuple[int, int]:
    """(number of entries, bytes) in the cache."""
    root = cache_root()
    entries = list(root.glob("*.safetensors")) if root.is_dir() else []
    return len(entries), sum(p.stat().st_size for p in entries)


def clear_cache() -> int:
    """Delete every cached materialization; returns the bytes freed."""
    _, size = cache_size()
    root = cache_root()
    if root.is_dir():
        shutil.rmtree(root)
    return size
