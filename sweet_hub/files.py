"""Artefact file I/O: atomic writes and validated safetensors reads.

Every file sweet-hub writes (templates, scalers, materialized checkpoints, exports, benchmark
results) goes through :func:`atomic_write`: it is written to a temporary file next to its final
path and renamed over it, so an interrupted write never leaves a half-written file. Files are read
with safetensors only (never pickle), and every read is checked against the shapes its config
implies, with errors that name the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import FORMAT_VERSION, READABLE_FORMAT_VERSIONS
from .errors import DiskFullError, TemplateFileError

__all__ = ["FORMAT_SCALERS", "FORMAT_TEMPLATE", "atomic_write", "file_sha256", "folder_lock", "folder_lock_path", "fsync", "read_safetensors",
           "save_safetensors", "staged_folder", "write_text"]

#: dtypes a template or scaler file may hold (read as float32)
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
#: the ``format`` metadata of template and scaler files
FORMAT_TEMPLATE = "sweet-template"
FORMAT_SCALERS = "sweet-scalers"


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, SafetensorError) and ("No space left" in str(error) or "os error 28" in str(error))


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def atomic_write(path: str | Path, write: Callable[[str], None], needed_bytes: int = 0) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``.

    The temporary file lives in the same folder, so the rename is atomic. The result gets
    mode 0o666 minus the process umask (what a plain ``open`` gives): the kernel applies the
    umask when the placeholder is created, and that mode is restored after ``write`` (writers
    such as safetensors recreate the file as 0o600). The umask itself is never changed.
    On any error the temporary file is removed and ``path`` is left as it was; a full disk is a
    :class:`DiskFullError` naming the file, the bytes it needed (``needed_bytes``) and the free space.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = tmp.stat().st_mode & 0o777
        write(str(tmp))
        os.chmod(tmp, mode)
        fsync(tmp)  # the data is on disk before the name points to it (power loss)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(e):
            raise DiskFullError(errno.ENOSPC, f"No space left to write {path} ({needed_bytes:,} bytes needed, "
                                f"{_free_bytes(path.parent):,} free there); free some space or write elsewhere", str(path)) from None
        raise


def fsync(path: str | Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_folder(directory: str | Path, last: Sequence[str] = ("config.json",)) -> Iterator[Path]:
    """Write a folder's files into a hidden staging folder inside it, then rename them into place.

    Files named in ``last`` are moved after all others (config.json is what makes a folder a
    template or a timm repo, so until it changes the folder still describes its old files).
    If the body raises, nothing in ``directory`` changes. A loader that reads while the files are
    being renamed can still see old and new files together: templates record the hash of each
    tensor file in config.json, and a mismatch on load is detected and retried.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sweet-staging-", dir=directory))
    try:
        try:
            yield staging
        except DiskFullError as e:  # name the folder being saved, not the hidden staging folder
            raise DiskFullError(e.errno, e.strerror.replace(str(staging), str(directory)),
                                e.filename.replace(str(staging), str(directory))) from None
        names = sorted((p.relative_to(staging) for p in staging.rglob("*") if p.is_file()), key=lambda n: str(n) in last)
        for name in names:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def folder_lock_path(directory: str | Path) -> str:
    """An inter-process lock file for a folder's read-modify-write of config.json, kept in the temp
    folder so it is never pushed to the Hub or packed into a wheel with the folder."""
    digest = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"sweet-hub-folder-{digest}.lock")


def folder_lock(directory: str | Path) -> FileLock:
    """The inter-process lock every read-modify-write of a template folder's config.json holds."""
    return FileLock(folder_lock_path(directory))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (the manifest of a template's tensor files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text(path: str | Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), needed_bytes=len(data))


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
    """Atomic ``safetensors.torch.save_file``; metadata values are stored as strings (JSON for non-str)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    needed = sum(t.numel() * t.element_size() for t in data.values())
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=meta), needed_bytes=needed)


def read_safetensors(
    path: str | Path,
    expected: Mapping[str, tuple[int, ...]],
    fmt: str,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a template or scaler file and check format, version, tensor names and shapes.

    Shapes and dtypes are checked from the header before any tensor is read, so a file or a
    config.json that lies about sizes cannot make this allocate more than the file holds.
    Tensors must be finite; fp16/bf16/fp64 files are read as float32. Every problem becomes a
    :class:`TemplateFileError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise TemplateFileError(f"{path}: file is missing.")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            metadata = dict(f.metadata() or {})
            names = set(f.keys())
            _check_format(path, metadata, fmt)
            missing = sorted(set(expected) - names)
            unexpected = sorted(names - set(expected))
            if missing or unexpected:
                raise TemplateFileError(
                    f"{path}: tensors do not match config.json (missing: {missing or 'none'}, unexpected: {unexpected or 'none'})."
                )
            for name, shape in expected.items():  # from the header: nothing is allocated yet
                header = f.get_slice(name)
                if tuple(header.get_shape()) != tuple(shape):
                    raise TemplateFileError(
                        f"{path}: tensor '{name}' has shape {tuple(header.get_shape())} but config.json implies {tuple(shape)}; "
                        f"the file does not belong to this config."
                    )
                if header.get_dtype() not in _FLOAT_DTYPES:
                    raise TemplateFileError(
                        f"{path}: tensor '{name}' is stored as {header.get_dtype()}; SWEET tensors are floating point "
                        f"({', '.join(_FLOAT_DTYPES)}). Re-save the template with SweetTemplate.save_pretrained."
                    )
            tensors = {}
            for name in expected:
                tensor = f.get_tensor(name)
                if not torch.isfinite(tensor).all():
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise TemplateFileError(f"{path}: tensor '{name}' holds {bad} NaN or infinite values; the file is corrupted "
                                            f"(or the training that wrote it diverged). Re-download or re-train it.")
                tensors[name] = tensor.float()
    except TemplateFileError:
        raise
    except (SafetensorError, OSError, RuntimeError) as e:
        raise TemplateFileError(
            f"{path}: not a readable safetensors file ({e}); it is truncated or corrupted. "
            f"Re-download it (force_download=True) or re-save the template."
        ) from None
    return tensors, metadata


def _check_format(path: Path, metadata: Mapping[str, str], fmt: str) -> None:
    if metadata.get("format") != fmt:
        raise TemplateFileError(f"{path}: metadata format is {metadata.get('format')!r}, expected {fmt!r}: not a SWEET {fmt.split('-')[1]} file.")
    version = metadata.get("format_version")
    if version not in {str(v) for v in READABLE_FORMAT_VERSIONS}:
        raise TemplateFileError(
            f"{path}: format_version {version!r} is not supported by this sweet-hub (reads version {FORMAT_VERSION}); "
            f"upgrade sweet-hub (pip install -U sweet-hub) or re-export the template."
        )
