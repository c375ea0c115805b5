"""Materialization cache: the second load of a size is a plain safetensors read.

Entries are keyed by the identity of every file they were built from (resolved path, size and
modification time; Hub files live in content-addressed blobs, so a new revision is a new key),
the size, the dtype and the materialization code version. Stale entries are never read; they are
removed by ``sweet-hub cache --clear``.

A first load materializes in memory and hands the tensors straight to the model; the entry is
written afterwards. A cache that cannot be written (read-only, full, no permission) does not stop
a load: the model is returned and a warning says why the entry was not kept. A file lock per
entry makes concurrent loads of the same size (threads or processes) materialize it once.

Location: ``$SWEET_HUB_CACHE``, else huggingface_hub's assets cache
(``$HF_HOME/assets/sweet-hub/materialized``). ``SWEET_HUB_DISABLE_CACHE=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from huggingface_hub import cached_assets_path
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import FORMAT_VERSION, format_size
from .files import save_safetensors
from .hub import TemplateFiles

__all__ = ["cache_enabled", "cache_key", "cache_root", "cache_size", "clear_cache", "materialized_state_dict"]

_logger = logging.getLogger(__name__)

#: bump when materialize_state_dict changes its output for the same files
MATERIALIZE_VERSION = 1


def cache_root() -> Path:
    root = os.environ.get("SWEET_HUB_CACHE")
    return Path(root) if root else cached_assets_path(library_name="sweet-hub", namespace="materialized")


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


def _read_entry(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached state dict, or None when the entry is missing or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError):
        return None


def materialized_state_dict(
    files: TemplateFiles,
    depth: int,
    width: int,
    build: Callable[[], dict[str, torch.Tensor]],
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict of (depth, width): read from the cache, or ``build()`` and then cached.

    Returns (state_dict, hit). With the cache disabled this is ``build()``.
    """
    if not cache_enabled():
        return build(), False
    root = cache_root()
    path = root / f"{cache_key(files, depth, width, dtype)}.safetensors"
    state = _read_entry(path)
    if state is not None:
        return state, True
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as e:  # read-only or missing permissions: materialize without the cache
        _warn_uncached(root, e)
        return build(), False
    try:
        state = _read_entry(path)  # another process may have built it while we waited
        if state is not None:
            return state, True
        state = build()
        metadata = {"format": "sweet-materialized", "source": files.source, "size": format_size(depth, width)}
        try:
            save_safetensors(state, path, metadata)
        except (OSError, SafetensorError) as e:
            _warn_uncached(root, e)
        return state, False
    finally:
        lock.release()


def _warn_uncached(root: Path, error: BaseException) -> None:
    warnings.warn(
        f"sweet-hub could not write the materialization cache in {root} ({error}); the model is loaded without it "
        f"(set SWEET_HUB_CACHE to a writable folder, or SWEET_HUB_DISABLE_CACHE=1 to silence this).",
        stacklevel=3,
    )


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
