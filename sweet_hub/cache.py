"""Materialization cache: the second load of a size is a plain safetensors read.

Entries are keyed by the identity of every file they were built from (resolved path, size and
modification time; Hub files live in content-addressed blobs, so a new revision is a new key),
the size, the dtype and the materialization code version. Stale entries are never read; they are
removed by ``sweet-hub cache --clear``.

A first load materializes in memory and hands the tensors straight to the model; the entry is
written meanwhile by a background thread (the interpreter waits for it at exit). A cache that cannot be written (read-only, full, no permission) does not stop
a load: the model is returned and a warning says why the entry was not kept. A file lock per
entry makes concurrent loads of the same size (threads or processes) materialize it once.

The cache is capped (``SWEET_HUB_CACHE_LIMIT``, default 4GB; e.g. ``500MB``, ``10GB`` or bytes):
after a new entry is written, the least recently used entries are removed until the total fits.
Clearing and eviction delete entry files one by one, so loads running at the same time either
read a whole entry or rebuild it.

Location: ``$SWEET_HUB_CACHE``, else huggingface_hub's assets cache
(``$HF_HOME/assets/sweet-hub/materialized``). ``SWEET_HUB_DISABLE_CACHE=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from huggingface_hub import cached_assets_path
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .config import FORMAT_VERSION, format_size
from .errors import SweetHubError
from .files import save_safetensors
from .hub import TemplateFiles

__all__ = ["CacheEntry", "cache_enabled", "cache_entries", "cache_key", "cache_limit", "cache_root", "cache_size", "clear_cache",
           "materialized_state_dict", "prune_cache", "wait_for_writes"]

#: bump when materialize_state_dict changes its output for the same files
MATERIALIZE_VERSION = 1


def cache_root() -> Path:
    root = os.environ.get("SWEET_HUB_CACHE")
    return Path(root) if root else cached_assets_path(library_name="sweet-hub", namespace="materialized")


_DEFAULT_LIMIT = 4 * 2**30
_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def parse_bytes(text: str) -> int:
    """'4GB', '500 MB', '123' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", str(text).upper())
    if not match:
        raise SweetHubError(f"'{text}' is not a size in bytes; write e.g. 4GB, 500MB or 1000000.")
    return int(float(match.group(1)) * _UNITS[match.group(2) if match.group(2) != "K" else "KB"])


def cache_limit() -> int:
    """Largest total size of the cache in bytes (``SWEET_HUB_CACHE_LIMIT``, default 4GB)."""
    value = os.environ.get("SWEET_HUB_CACHE_LIMIT")
    return parse_bytes(value) if value else _DEFAULT_LIMIT


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
        state = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError):
        return None
    _touch(path)
    return state


def _touch(path: Path) -> None:
    """Record a last use for least-recently-used eviction. The time is set explicitly in ns: the
    kernel stamps writes with a coarse clock (one tick, 1-10 ms), so a write and a later read
    can otherwise get the same mtime and tie in the eviction order."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass


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
    wait_for_writes()  # an entry this process is still writing (it holds that entry's lock)
    root = cache_root()
    path = root / f"{cache_key(files, depth, width, dtype)}.safetensors"
    state = _read_entry(path)
    if state is not None:
        return state, True
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", thread_local=False)  # released by the writer thread
        lock.acquire()
    except OSError as e:  # read-only or missing permissions: materialize without the cache
        _warn_uncached(root, e)
        return build(), False
    try:
        state = _read_entry(path)  # another process may have built it while we waited
        if state is not None:
            lock.release()
            return state, True
        state = build()
    except BaseException:
        lock.release()
        raise
    # The caller builds its model from `state` now; the entry is written meanwhile, still under
    # the lock (other processes asking for this size wait for it instead of materializing again).
    writer = threading.Thread(target=_write_entry, args=(path, state, files.source, format_size(depth, width), lock),
                              name=f"sweet-hub cache {path.name}")
    with _pending_lock:
        writer.start()
        _pending.append(writer)
    return state, False


_pending: list[threading.Thread] = []
_pending_lock = threading.Lock()


def _write_entry(path: Path, state: dict[str, torch.Tensor], source: str, size: str, lock: FileLock) -> None:
    try:
        save_safetensors(state, path, {"format": "sweet-materialized", "source": source, "size": size})
        _touch(path)
        prune_cache(cache_limit(), keep=path)
    except (OSError, SafetensorError) as e:
        _warn_uncached(path.parent, e)
    finally:
        lock.release()


def wait_for_writes() -> None:
    """Block until the cache entries this process is writing are on disk (listing, clearing and
    pruning call it; the interpreter also waits for them at exit)."""
    with _pending_lock:
        writers = list(_pending)
        _pending.clear()
    for writer in writers:
        writer.join()


def _warn_uncached(root: Path, error: BaseException) -> None:
    warnings.warn(
        f"sweet-hub could not write the materialization cache in {root} ({error}); the model is loaded without it "
        f"(set SWEET_HUB_CACHE to a writable folder, or SWEET_HUB_DISABLE_CACHE=1 to silence this).",
        stacklevel=3,
    )


@dataclass(frozen=True)
class CacheEntry:
    """One materialized checkpoint in the cache."""

    path: Path
    bytes: int
    last_used: float
    source: str
    size: str


def cache_entries() -> list[CacheEntry]:
    """The cache's entries, most recently used first (after this process's pending writes)."""
    wait_for_writes()
    return _entries()


def _entries() -> list[CacheEntry]:
    root = cache_root()
    entries = []
    for path in root.glob("*.safetensors") if root.is_dir() else []:
        try:
            stat = path.stat()
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (OSError, SafetensorError):  # removed meanwhile, or being written
            continue
        entries.append(CacheEntry(path, stat.st_size, stat.st_mtime_ns / 1e9, meta.get("source", "?"), meta.get("size", "?")))
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def cache_size() -> tuple[int, int]:
    """(number of entries, bytes) in the cache."""
    entries = cache_entries()
    return len(entries), sum(e.bytes for e in entries)


def _remove(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
        return size
    except FileNotFoundError:  # another process removed it first
        return 0


def prune_cache(limit: int, keep: Path | None = None) -> int:
    """Remove least recently used entries until the cache holds at most ``limit`` bytes
    (``keep`` is never removed); returns the bytes freed."""
    entries = _entries()
    total, freed = sum(e.bytes for e in entries), 0
    for entry in reversed(entries):  # least recently used first
        if total - freed <= limit:
            break
        if keep is not None and entry.path == keep:
            continue
        freed += _remove(entry.path)
    return freed


def clear_cache() -> int:
    """Delete every cached materialization; returns the bytes freed. Entries are removed one by
    one (never the folder), so loads and writes running at the same time are not disturbed."""
    return sum(_remove(e.path) for e in cache_entries())
