"""Finding a template's files: a local folder, or a Hub repo through huggingface_hub.

    config.json                        architecture "sweet_vit", template config, scaler registry,
                                       timm pretrained_cfg (so ``hf-hub:`` ids work in timm)
    template.safetensors               the template (G and the r-space cores)
    scalers/d{L}_w{D}.safetensors      X, X_vec, U, V of one size
    README.md                          model card

Downloads go through ``hf_hub_download``, so revisions, the HF cache, offline mode, tokens and
private repos behave as everywhere in the HF ecosystem, and every Hub error becomes one of
sweet-hub's errors saying what to do. Only config.json is parsed here; tensors are read (and
checked) by :mod:`sweet_hub.files` when a template is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .config import (
    CONFIG_NAME,
    TEMPLATE_NAME,
    TemplateConfig,
    parse_size_key,
    parse_template_config,
    read_config_json,
    scaler_filename,
    size_key,
)
from .errors import NotASweetTemplateError, TemplateFileError, TemplateNotAvailableError

__all__ = ["TemplateFiles", "resolve_template_files"]


@dataclass
class TemplateFiles:
    """Local paths of one template's files, and its parsed config.json.

    ``template_path`` is None when only the config was resolved (``tensors=False``).
    """

    source: str  # folder path or repo id
    config: dict[str, Any]
    template_config: TemplateConfig
    config_path: Path
    template_path: Path | None = None
    scaler_paths: dict[str, Path] = field(default_factory=dict)

    @property
    def all_paths(self) -> list[Path]:
        return [self.config_path, *([self.template_path] if self.template_path else []), *self.scaler_paths.values()]


def _offline_hint(repo_id: str) -> str:
    return (
        f"'{repo_id}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be downloaded "
        f"(offline mode: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}, local_files_only, or no connection to "
        f"{constants.ENDPOINT}). Download it once with network access (`hf download {repo_id}` or "
        f"SweetTemplate.from_pretrained('{repo_id}')), unset HF_HUB_OFFLINE, or pass the path of a local template folder."
    )


def _fetcher(
    name_or_path: str | Path,
    revision: str | None,
    cache_dir: str | Path | None,
    force_download: bool,
    token: str | bool | None,
    local_files_only: bool,
) -> tuple[str, Callable[[str], Path]]:
    """(source, fetch): ``fetch(filename)`` gives the local path of one file of the artefact."""
    source = str(name_or_path)
    if os.path.isdir(source):
        root = Path(source)

        def local(filename: str) -> Path:
            path = root / filename
            if not path.is_file():
                if filename == CONFIG_NAME:
                    raise NotASweetTemplateError(f"Folder '{source}' has no {CONFIG_NAME}: it is not a SWEET template folder.")
                raise TemplateFileError(f"{path}: file is missing from template folder '{source}'.")
            return path

        return source, local

    repo_id = source
    if "@" in repo_id and revision is None:
        repo_id, revision = repo_id.split("@", 1)

    def download(filename: str) -> Path:
        try:
            return Path(hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, force_download=force_download,
                token=token, local_files_only=local_files_only, library_name="sweet-hub",
            ))
        except GatedRepoError as e:
            raise TemplateNotAvailableError(f"'{repo_id}' is gated: accept its conditions on the Hub and log in (`hf auth login`). ({e})") from None
        except RepositoryNotFoundError:
            raise TemplateNotAvailableError(
                f"'{repo_id}' is neither a local folder nor a repository on {constants.ENDPOINT} "
                f"(if it is private, pass token= or run `hf auth login`)."
            ) from None
        except RevisionNotFoundError:
            raise TemplateNotAvailableError(f"Revision '{revision}' does not exist in '{repo_id}'.") from None
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):
            raise TemplateNotAvailableError(_offline_hint(repo_id)) from None
        except EntryNotFoundError:
            if filename in (CONFIG_NAME, TEMPLATE_NAME):
                raise NotASweetTemplateError(f"'{repo_id}' is not a SWEET template: it has no {filename}.") from None
            raise TemplateFileError(f"'{repo_id}': config.json lists '{filename}' but the repository has no such file.") from None
        except HFValidationError:
            raise TemplateNotAvailableError(
                f"'{source}' is neither an existing local folder nor a valid Hub repo id ('org/name')."
            ) from None

    return repo_id, download


def resolve_template_files(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
    sizes: list[tuple[int, int]] | None = None,
    tensors: bool = True,
) -> TemplateFiles:
    """Local paths of config.json, template.safetensors and the scaler files.

    ``name_or_path`` is a folder or a Hub repo id (``org/name``, optionally ``org/name@revision``).
    ``sizes`` limits which scaler files are fetched (the anchors are always fetched, derived
    sizes need them); by default all listed scaler files are. ``tensors=False`` fetches
    config.json only (what ``pretrained=False`` needs).
    """
    source, fetch = _fetcher(name_or_path, revision, cache_dir, force_download, token, local_files_only)
    config_path = fetch(CONFIG_NAME)
    config = read_config_json(config_path, source)
    cfg = parse_template_config(config, source)
    if not tensors:
        return TemplateFiles(source, config, cfg, config_path)
    template_path = fetch(TEMPLATE_NAME)
    scaler_paths = {k: fetch(scaler_filename(*parse_size_key(k))) for k in _scaler_keys_needed(config, cfg, sizes)}
    return TemplateFiles(source, config, cfg, config_path, template_path, scaler_paths)


def _scaler_keys_needed(config: Mapping[str, Any], cfg: TemplateConfig, sizes: list[tuple[int, int]] | None) -> list[str]:
    listed = list(config["scalers"])
    if sizes is None:
        return listed
    wanted = {size_key(*a) for a in cfg.anchors} | {size_key(*s) for s in sizes}
    return [k for k in listed if k in wanted]
