"""The artefact: a SWEET template as a Hugging Face Hub repo (or a local folder of the same layout).

    config.json                        architecture "sweet_vit", template config, scaler registry,
                                       timm pretrained_cfg (so ``hf-hub:`` ids work in timm)
    template.safetensors               the template (G and the r-space cores)
    scalers/d{L}_w{D}.safetensors      X, X_vec, U, V of one size
    README.md                          model card

Files are read with safetensors only (never pickle) and through huggingface_hub, so revisions,
the HF cache, offline mode, tokens and private repos behave as everywhere in the HF ecosystem.
Everything read is validated against config.json; every write goes to a temporary file that is
renamed into place, so an interrupted save never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import ModelCard, ModelCardData, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import FORMAT_VERSION, TemplateConfig, parse_size_key, size_key, timm_pretrained_cfg
from .errors import NotASweetTemplateError, TemplateConfigError, TemplateFileError, TemplateNotAvailableError

if TYPE_CHECKING:
    from .template import SweetTemplate

__all__ = [
    "CONFIG_NAME",
    "SCALERS_DIR",
    "TEMPLATE_NAME",
    "TemplateFiles",
    "add_scaler_file",
    "atomic_write",
    "load_template",
    "read_safetensors",
    "render_model_card",
    "resolve_template_files",
    "save_safetensors",
    "save_template",
    "scaler_filename",
    "template_config_dict",
]

_logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
TEMPLATE_NAME = "template.safetensors"
SCALERS_DIR = "scalers"
README_NAME = "README.md"
ARCHITECTURE = "sweet_vit"
_FORMAT_TEMPLATE = "sweet-template"
_NON_TEMPLATE_KEYS = ("architecture", "sweet_format_version", "scalers", "pretrained_cfg", "card_info")
_FORMAT_SCALERS = "sweet-scalers"


def scaler_filename(depth: int, width: int) -> str:
    return f"{SCALERS_DIR}/{size_key(depth, width)}.safetensors"


# ---------------------------------------------------------------------------------------------
# atomic writes


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``.

    The temporary file lives in the same folder so the rename is atomic; on any error it is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
    """Atomic ``safetensors.torch.save_file``; metadata values are stored as strings (JSON for non-str)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=meta))


def read_safetensors(
    path: str | Path,
    expected: Mapping[str, tuple[int, ...]],
    fmt: str,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a template or scaler file and check format, version, tensor names and shapes.

    Every problem becomes a :class:`TemplateFileError` naming the file.
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
            tensors = {}
            for name, shape in expected.items():
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != tuple(shape):
                    raise TemplateFileError(
                        f"{path}: tensor '{name}' has shape {tuple(tensor.shape)} but config.json implies {tuple(shape)}; "
                        f"the file does not belong to this config."
                    )
                tensors[name] = tensor
    except (SafetensorError, OSError, RuntimeError) as e:
        if isinstance(e, TemplateFileError):
            raise
        raise TemplateFileError(
            f"{path}: not a readable safetensors file ({e}); it is truncated or corrupted. "
            f"Re-download it (force_download=True) or re-save the template."
        ) from None
    return tensors, metadata


def _check_format(path: Path, metadata: Mapping[str, str], fmt: str) -> None:
    if metadata.get("format") != fmt:
        raise TemplateFileError(f"{path}: metadata format is {metadata.get('format')!r}, expected {fmt!r}: not a SWEET {fmt.split('-')[1]} file.")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise TemplateFileError(
            f"{path}: format_version {version!r} is not supported by this sweet-hub (reads version {FORMAT_VERSION}); "
            f"upgrade sweet-hub (pip install -U sweet-hub) or re-export the template."
        )


# ---------------------------------------------------------------------------------------------
# writing a template folder


def template_config_dict(template: SweetTemplate) -> dict[str, Any]:
    """The full config.json of a template: template fields, scaler registry, timm fields."""
    cfg = template.config
    scalers = {key: {k: v for k, v in info.items() if _jsonable(v)} for key, info in template.scaler_info.items()}
    return {
        "architecture": ARCHITECTURE,
        "sweet_format_version": FORMAT_VERSION,
        **cfg.to_dict(),
        "scalers": scalers,
        **({"card_info": template.card_info} if template.card_info and _jsonable(template.card_info) else {}),
        "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in timm_pretrained_cfg(cfg).items()},
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _scaler_metadata(template: SweetTemplate, key: str) -> dict[str, Any]:
    info = template.scaler_info[key]
    return {"format": _FORMAT_SCALERS, "format_version": str(FORMAT_VERSION), **{k: v for k, v in info.items() if _jsonable(v)}}


def save_template(template: SweetTemplate, directory: str | Path) -> None:
    """Write the whole repo folder.

    Every file is first written into a staging folder inside ``directory``; only when all of them
    are complete are they renamed into place, config.json last (it is what makes the folder a
    template). A failure while writing leaves the previous template untouched.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = template.config
    staging = Path(tempfile.mkdtemp(prefix=".sweet-staging-", dir=directory))
    try:
        names = []
        for key, params in template.scalers.items():
            name = scaler_filename(*parse_size_key(key))
            save_safetensors(dict(params.items()), staging / name, _scaler_metadata(template, key))
            names.append(name)
        save_safetensors(
            dict(template.cores.items()), staging / TEMPLATE_NAME,
            {"format": _FORMAT_TEMPLATE, "format_version": str(FORMAT_VERSION), "ranks": list(cfg.ranks), "vector_rank": cfg.vector_rank},
        )
        write_text(staging / README_NAME, str(render_model_card(template)))
        write_text(staging / CONFIG_NAME, json.dumps(template_config_dict(template), indent=2) + "\n")
        for name in [*names, TEMPLATE_NAME, README_NAME, CONFIG_NAME]:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def add_scaler_file(template: SweetTemplate, directory: str | Path, depth: int, width: int) -> Path:
    """Add the stored scalers of one size to an existing template folder without touching the
    template file (used after learning scalers): writes the scaler file, then config.json and
    the model card."""
    directory = Path(directory)
    key = size_key(depth, width)
    path = directory / scaler_filename(depth, width)
    save_safetensors(dict(template.scalers[key].items()), path, _scaler_metadata(template, key))
    write_text(directory / README_NAME, str(render_model_card(template)))
    write_text(directory / CONFIG_NAME, json.dumps(template_config_dict(template), indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# finding the files: a local folder or a Hub repo through huggingface_hub


@dataclass
class TemplateFiles:
    """Local paths of one template's files, plus where they came from."""

    source: str  # folder path or repo id
    config: dict[str, Any]
    config_path: Path
    template_path: Path
    scaler_paths: dict[str, Path] = field(default_factory=dict)
    revision: str | None = None

    @property
    def all_paths(self) -> list[Path]:
        return [self.config_path, self.template_path, *self.scaler_paths.values()]


def _read_config_json(path: Path, source: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TemplateConfigError(f"{path}: config.json is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise TemplateConfigError(f"{path}: config.json must hold a JSON object.")
    if "sweet_format_version" not in config:
        arch = config.get("architecture")
        hint = (
            f" It describes a plain '{arch}' checkpoint: load it with timm.create_model('hf-hub:{source}') instead."
            if arch else ""
        )
        raise NotASweetTemplateError(
            f"'{source}' is not a SWEET template: its config.json has no 'sweet_format_version'.{hint}"
        )
    version = config["sweet_format_version"]
    if version != FORMAT_VERSION:
        raise TemplateConfigError(
            f"{path}: sweet_format_version {version!r} is not supported by this sweet-hub (reads version {FORMAT_VERSION}); "
            f"upgrade sweet-hub (pip install -U sweet-hub)."
        )
    scalers = config.get("scalers")
    if not isinstance(scalers, dict):
        raise TemplateConfigError(f"{path}: config.json field 'scalers' must map size names (d<depth>_w<width>) to their info.")
    for key in scalers:
        try:
            parse_size_key(key)
        except TemplateConfigError as e:
            raise TemplateConfigError(f"{path}: {e}") from None
    return config


def parse_template_config(config: Mapping[str, Any], source: str) -> TemplateConfig:
    cfg = TemplateConfig.from_dict(
        {k: v for k, v in config.items() if k not in _NON_TEMPLATE_KEYS},
        source=f"{source}/config.json",
    )
    missing = [size_key(*a) for a in cfg.anchors if size_key(*a) not in config["scalers"]]
    if missing:
        raise TemplateConfigError(f"{source}/config.json: anchors {missing} have no entry in 'scalers'.")
    return cfg


def _offline_hint(repo_id: str) -> str:
    return (
        f"'{repo_id}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be downloaded "
        f"(offline mode: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}, local_files_only, or no connection to "
        f"{constants.ENDPOINT}). Download it once with network access (`hf download {repo_id}` or "
        f"SweetTemplate.from_pretrained('{repo_id}')), unset HF_HUB_OFFLINE, or pass the path of a local template folder."
    )


def resolve_template_files(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
    sizes: list[tuple[int, int]] | None = None,
) -> TemplateFiles:
    """Local paths of config.json, template.safetensors and the scaler files.

    ``name_or_path`` is a folder or a Hub repo id (``org/name``, optionally ``org/name@revision``).
    ``sizes`` limits which scaler files are fetched (the anchors are always fetched, derived
    sizes need them); by default all listed scaler files are.
    """
    source = str(name_or_path)
    if os.path.isdir(source):
        root = Path(source)
        config_path = root / CONFIG_NAME
        if not config_path.is_file():
            raise NotASweetTemplateError(f"Folder '{source}' has no {CONFIG_NAME}: it is not a SWEET template folder.")
        config = _read_config_json(config_path, source)
        cfg = parse_template_config(config, source)
        keys = _scaler_keys_needed(config, cfg, sizes)
        files = TemplateFiles(source, config, config_path, root / TEMPLATE_NAME, {k: root / scaler_filename(*parse_size_key(k)) for k in keys})
        for path in files.all_paths:
            if not path.is_file():
                raise TemplateFileError(f"{path}: file is missing from template folder '{source}'.")
        return files

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

    config_path = download(CONFIG_NAME)
    config = _read_config_json(config_path, repo_id)
    cfg = parse_template_config(config, repo_id)
    template_path = download(TEMPLATE_NAME)
    keys = _scaler_keys_needed(config, cfg, sizes)
    scaler_paths = {k: download(scaler_filename(*parse_size_key(k))) for k in keys}
    return TemplateFiles(repo_id, config, config_path, template_path, scaler_paths, revision=revision)


def _scaler_keys_needed(config: Mapping[str, Any], cfg: TemplateConfig, sizes: list[tuple[int, int]] | None) -> list[str]:
    listed = list(config["scalers"])
    if sizes is None:
        return listed
    wanted = {size_key(*a) for a in cfg.anchors} | {size_key(*s) for s in sizes}
    return [k for k in listed if k in wanted]


def load_template(
    cls: type[SweetTemplate],
    name_or_path: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
    map_location: str | torch.device = "cpu",
    files: TemplateFiles | None = None,
) -> SweetTemplate:
    """Build a :class:`SweetTemplate` from its files, validating every tensor."""
    from .template import core_shapes, scaler_shapes

    files = files or resolve_template_files(
        name_or_path, revision=revision, cache_dir=cache_dir, force_download=force_download,
        token=token, local_files_only=local_files_only,
    )
    cfg = parse_template_config(files.config, files.source)
    template = cls(**cfg.to_dict())
    cores, meta = read_safetensors(files.template_path, core_shapes(cfg), _FORMAT_TEMPLATE, map_location)
    with torch.no_grad():
        for name, tensor in cores.items():
            template.cores[name] = torch.nn.Parameter(tensor)
    template.scalers.clear()
    template.scaler_info.clear()
    for key, path in files.scaler_paths.items():
        depth, width = parse_size_key(key)
        tensors, meta = read_safetensors(path, scaler_shapes(cfg, depth, width), _FORMAT_SCALERS, map_location)
        info = dict(files.config["scalers"][key])
        info.pop("depth", None), info.pop("width", None)
        template.add_scalers(depth, width, tensors, **{"source": "anchor", **info})
    template.card_info = dict(files.config.get("card_info", {})) if isinstance(files.config.get("card_info"), dict) else {}
    template.hub_source = files.source  # type: ignore[attr-defined]
    return template.eval()


# ---------------------------------------------------------------------------------------------
# model card


def _card_template() -> str:
    """The Jinja model card template, kept in model_cards/ (installed as sweet_hub/model_cards)."""
    from importlib import resources

    try:
        return resources.files("sweet_hub.model_cards").joinpath("sweet_template.md").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # source checkout without install
        return (Path(__file__).resolve().parent.parent / "model_cards" / "sweet_template.md").read_text(encoding="utf-8")


def render_model_card(template: SweetTemplate, **kwargs: Any) -> ModelCard:
    """Model card of a template: usage, sizes, provenance of each scaler set, and whatever the
    training run recorded in ``template.card_info`` (command, data, metrics)."""
    cfg = template.config
    info = template.card_info
    card_data = ModelCardData(
        library_name="sweet-hub",
        license="apache-2.0",
        tags=["sweet", "weight-template", "vision-transformer", "timm", "image-feature-extraction"],
        pipeline_tag="image-feature-extraction",
        datasets=info.get("datasets"),
    )
    sizes = []
    for key, scaler_info in template.scaler_info.items():
        depth, width = parse_size_key(key)
        sizes.append(dict(
            key=key, depth=depth, width=width, source=scaler_info.get("source", "?"),
            scaler_params=template.num_scaler_params(depth, width),
            details=", ".join(f"{k}={v}" for k, v in scaler_info.items() if k not in ("depth", "width", "source")),
        ))
    return ModelCard.from_template(
        card_data,
        template_str=_card_template(),
        repo_id=kwargs.pop("repo_id", info.get("repo_id", "<org>/<template-repo>")),
        config=cfg,
        template_params=template.num_template_params(),
        sizes=sizes,
        example_size=(max(cfg.anchors)[0] + 2, max(w for _, w in cfg.anchors) + cfg.head_dim),
        info=info,
        **kwargs,
    )
