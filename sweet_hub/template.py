"""``SweetTemplate``: a SWEET weight template as a PyTorch module with Hub save/load.

It holds the template tensors (the Tucker core G and the r-space cores) and the scalers of its
stored sizes as parameters, materializes any size as a plain timm ``VisionTransformer``
(:mod:`sweet_hub.tucker` does the math, :mod:`sweet_hub.builder` builds the model) and reads and
writes the artefact through huggingface_hub's ``PyTorchModelHubMixin``:

    config.json                        architecture "sweet_vit", template config, scaler registry
    template.safetensors               the template
    scalers/d{L}_w{D}.safetensors      the scalers of one size
    README.md                          model card
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import Tensor, nn

from .builder import build_sweet_vit
from .card import TEMPLATE_TAGS, template_card
from .config import (
    CONFIG_NAME,
    FORMAT_VERSION,
    README_NAME,
    SCALERS_DIR,
    TEMPLATE_NAME,
    TemplateConfig,
    check_memory,
    config_json,
    core_shapes,
    format_size,
    jsonable_info,
    parse_size_key,
    read_config_json,
    scaler_filename,
    scaler_shapes,
    size_key,
)
from .errors import TemplateConfigError, TemplateFileError
from .files import FORMAT_SCALERS, FORMAT_TEMPLATE, file_sha256, read_safetensors, save_safetensors, staged_folder, write_text
from .hub import TemplateFiles, resolve_template_files
from .tucker import derive_scalers, init_cores, init_scalers, materialize_state_dict

__all__ = ["SweetTemplate", "TemplateChangedError"]

_RELOAD_SECONDS = 5.0


class TemplateChangedError(TemplateFileError):
    """A template folder changed while it was read (a concurrent save): its files do not match
    the hashes config.json records."""


def _folder_state(folder: str) -> list[tuple[str, int, int]]:
    """(name, mtime_ns, size) of a template folder's files: changes when a save renames files in."""
    root = Path(folder)
    paths = [root / CONFIG_NAME, root / TEMPLATE_NAME, *sorted((root / SCALERS_DIR).glob("*.safetensors"))]
    state = []
    for path in paths:
        try:
            stat = path.stat()
            state.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            state.append((str(path), -1, -1))
    return state


def _check_manifest(files: TemplateFiles, reason: TemplateFileError | None = None) -> None:
    """Compare the tensor files with the SHA-256 that config.json records (templates saved by
    sweet-hub >= 0.2; older ones have no manifest and are not checked). ``reason``: the error a
    file gave when read, reported with the mismatch."""
    manifest = files.config.get("files")
    if not isinstance(manifest, dict):
        return
    paths = {TEMPLATE_NAME: files.template_path, **{scaler_filename(*parse_size_key(k)): p for k, p in files.scaler_paths.items()}}
    for name, path in paths.items():
        expected = manifest.get(name)
        if expected is not None and path.is_file() and file_sha256(path) != expected:
            detail = f" {reason}" if reason else ""
            raise TemplateChangedError(
                f"{path}: does not match the SHA-256 recorded in {files.config_path.name}: the folder changed while it was read "
                f"(a save in progress), or the file is truncated, corrupted or replaced.{detail} Re-download it "
                f"(force_download=True) or re-save the template."
            )


class SweetTemplate(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="sweet-hub",
    tags=TEMPLATE_TAGS,
    license="apache-2.0",
    repo_url="https://github.com/sweet-hub/sweet-hub",
    paper_url="https://arxiv.org/abs/2601.19694",
):
    """A SWEET weight template: the Tucker core, the r-space cores, and the scalers of its sizes.

    ``SweetTemplate(config)`` or ``SweetTemplate(**fields)`` (the fields of
    :class:`~sweet_hub.TemplateConfig`, over its defaults) builds a randomly initialized template;
    ``from_pretrained`` loads one from a folder or a Hub repo; ``materialize(depth, width)``
    returns a plain timm ``VisionTransformer`` of that size.

    Example:
        >>> t = SweetTemplate(ranks=(48, 128, 128), anchors=[(4, 64), (8, 128)])
        >>> vit = t.materialize(depth=6, width=96)
        >>> vit.embed_dim, len(vit.blocks)
        (96, 6)
    """

    def __init__(self, config: TemplateConfig | Mapping[str, Any] | None = None, **fields: Any) -> None:
        super().__init__()
        self.config = TemplateConfig.build(config, **fields)
        self.cores = nn.ParameterDict({k: nn.Parameter(v) for k, v in init_cores(self.config).items()})
        self.scalers = nn.ModuleDict()
        #: provenance of each stored scaler set: {"d8_w128": {"source": "anchor", ...}}
        self.scaler_info: dict[str, dict[str, Any]] = {}
        #: free-form facts for the model card (training command, data, metrics)
        self.card_info: dict[str, Any] = {}
        for depth, width in self.config.anchors:
            self.add_scalers(depth, width, init_scalers(self.config, depth, width), source="anchor")

    # sizes -----------------------------------------------------------------------------------

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Sizes with stored scalers (anchors first, then learned/derived ones)."""
        return [parse_size_key(k) for k in self.scalers]

    def add_scalers(self, depth: int, width: int, tensors: Mapping[str, Tensor], source: str = "learned", **info: Any) -> None:
        """Store scalers for (depth, width); they replace derived scalers for that size."""
        self.config.check_size(depth, width)
        expected = scaler_shapes(self.config, depth, width)
        if set(tensors) != set(expected):
            raise TemplateConfigError(f"Scalers for {format_size(depth, width)} must have tensors {sorted(expected)}, got {sorted(tensors)}.")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise TemplateConfigError(
                    f"Scaler '{name}' for {format_size(depth, width)} has shape {tuple(tensors[name].shape)}, expected {shape} "
                    f"for ranks {self.config.ranks} and vector_rank {self.config.vector_rank}."
                )
        device, dtype = self.cores["G"].device, self.cores["G"].dtype
        key = size_key(depth, width)
        self.scalers[key] = nn.ParameterDict({k: nn.Parameter(v.detach().clone().to(device=device, dtype=dtype)) for k, v in tensors.items()})
        self.scaler_info[key] = {"depth": depth, "width": width, "source": source, **info}

    def has_scalers(self, depth: int, width: int) -> bool:
        return size_key(depth, width) in self.scalers

    def stored_scalers(self, depth: int, width: int) -> dict[str, Tensor]:
        """The scaler parameters stored for (depth, width) (KeyError if there are none)."""
        return dict(self.scalers[size_key(depth, width)].items())

    def scalers_for(self, depth: int, width: int) -> dict[str, Tensor]:
        """Stored scalers of (depth, width), or scalers derived from the nearest anchor."""
        self.config.check_size(depth, width)
        if self.has_scalers(depth, width):
            return self.stored_scalers(depth, width)
        anchor = self.config.nearest_anchor(depth, width)
        return derive_scalers(
            self.stored_scalers(*anchor), depth, width,
            depth_rescale=self.config.depth_rescale, width_rescale=self.config.width_rescale,
        )

    def scaler_source(self, depth: int, width: int) -> str:
        """'anchor', 'learned', ... for stored sizes; 'derived from 8x192' otherwise."""
        key = size_key(depth, width)
        if key in self.scaler_info:
            return self.scaler_info[key]["source"]
        return f"derived from {format_size(*self.config.nearest_anchor(depth, width))}"

    # materialization -------------------------------------------------------------------------

    def forward(self, depth: int, width: int, scalers: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Differentiable materialization (what pre-training calls each step)."""
        if scalers is None:
            scalers = self.scalers_for(depth, width)
        return materialize_state_dict(dict(self.cores.items()), scalers, self.config)

    @torch.no_grad()
    def state_dict_for(self, depth: int, width: int, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The timm state dict of (depth, width), detached and contiguous."""
        self.config.check_size(depth, width)
        check_memory(self.config, depth, width)
        state = self.forward(depth, width)
        return {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in state.items()}

    def materialize(self, depth: int, width: int, dtype: torch.dtype | None = None, **model_kwargs: Any) -> nn.Module:
        """A plain timm ``VisionTransformer`` of this size with the template's weights.

        ``model_kwargs`` go to timm (``num_classes``, ``in_chans``, ``drop_path_rate``, ...);
        timm's own pretrained loader adapts the classifier and input channels when they change.
        """
        model = build_sweet_vit(self.config, depth, width, self.state_dict_for(depth, width, dtype=torch.float32), **model_kwargs)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    def num_scaler_params(self, depth: int, width: int) -> int:
        return sum(math.prod(s) for s in scaler_shapes(self.config, depth, width).values())

    def num_template_params(self) -> int:
        return sum(p.numel() for p in self.cores.values())

    def extra_repr(self) -> str:
        c = self.config
        sizes = [format_size(*s) for s in self.sizes]
        return f"ranks={c.ranks}, head_dim={c.head_dim}, anchors={[format_size(*a) for a in c.anchors]}, stored_sizes={sizes}"

    # Hub: PyTorchModelHubMixin hooks ----------------------------------------------------------

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | Path,
        *,
        config: dict | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write config.json, template.safetensors, scalers/ and README.md into ``save_directory``.

        Same signature and behaviour as ``PyTorchModelHubMixin.save_pretrained``, with two
        differences that keep a folder loadable at every moment: the mixin deletes config.json
        before writing, and it keeps an existing README.md (so a re-save would keep a stale card).
        Here every file is staged and renamed into place, config.json last, and the card is
        always rendered anew with ``model_card_kwargs`` (e.g. ``{"repo_id": "me/x"}`` for the
        usage code). ``config`` is accepted for signature compatibility; the template's own
        config is what is written.
        """
        self._save_pretrained(Path(save_directory), model_card_kwargs=model_card_kwargs)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path, model_card_kwargs: dict[str, Any] | None = None) -> None:
        """Stage every file, then rename them into place, config.json last (it is what makes the
        folder a template); a failure while writing leaves the previous template untouched.
        config.json records the SHA-256 of each tensor file, so a load that races a save sees the
        mix and retries. Scaler files of sizes this template no longer stores are removed."""
        save_directory = Path(save_directory)
        cfg = self.config
        with staged_folder(save_directory) as staging:
            names = []
            for key, params in self.scalers.items():
                name = scaler_filename(*parse_size_key(key))
                save_safetensors(dict(params.items()), staging / name, self._scaler_metadata(key))
                names.append(name)
            save_safetensors(
                dict(self.cores.items()), staging / TEMPLATE_NAME,
                {"format": FORMAT_TEMPLATE, "format_version": str(FORMAT_VERSION), "ranks": list(cfg.ranks), "vector_rank": cfg.vector_rank},
            )
            self.generate_model_card(**(model_card_kwargs or {})).save(staging / README_NAME)
            write_text(staging / CONFIG_NAME, self._config_json_text({n: file_sha256(staging / n) for n in [TEMPLATE_NAME, *names]}))
        for stale in (save_directory / SCALERS_DIR).glob("*.safetensors"):
            if f"{SCALERS_DIR}/{stale.name}" not in names:
                stale.unlink(missing_ok=True)

    def save_scalers(self, save_directory: str | Path, depth: int, width: int) -> Path:
        """Add the stored scalers of one size to an existing template folder (after learning
        them) without rewriting the template file: the scaler file, the card, then config.json."""
        save_directory = Path(save_directory)
        key = size_key(depth, width)
        name = scaler_filename(depth, width)
        manifest = read_config_json(save_directory / CONFIG_NAME, str(save_directory)).get("files", {})
        with staged_folder(save_directory) as staging:
            save_safetensors(self.stored_scalers(depth, width), staging / name, self._scaler_metadata(key))
            self.generate_model_card().save(staging / README_NAME)
            manifest = {**manifest, name: file_sha256(staging / name)} if manifest else {}
            write_text(staging / CONFIG_NAME, self._config_json_text(manifest))
        return save_directory / name

    def _config_json_text(self, manifest: Mapping[str, str]) -> str:
        data = config_json(self.config, self.scaler_info, self.card_info)
        if manifest:
            data["files"] = dict(manifest)
        return json.dumps(data, indent=2) + "\n"

    def _scaler_metadata(self, key: str) -> dict[str, Any]:
        return {"format": FORMAT_SCALERS, "format_version": str(FORMAT_VERSION), **jsonable_info(self.scaler_info[key])}

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> SweetTemplate:
        """Load a template from a local folder or a Hub repo id (``org/name``).

        Same arguments as every ``from_pretrained`` of the HF ecosystem; the work is done by
        :meth:`_from_pretrained`. The mixin's own ``from_pretrained`` is bypassed because it
        reads config.json before the hook runs and lets its errors through raw (a
        ``JSONDecodeError`` for a broken file, an ``HFValidationError`` for a path that does
        not exist): here every such problem becomes a sweet-hub error naming the file and fix.
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token, map_location=map_location,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str | torch.device = "cpu",
        **config_fields: Any,
    ) -> SweetTemplate:
        """The mixin's loading hook. Unlike the mixin's generic loaders this one is strict:
        config.json is read and validated here (``config_fields``, the fields the mixin may pass,
        are not trusted), and a missing tensor, a shape that does not match config.json, or an
        unknown format version is an error naming the file.
        """
        # A local folder can be saved into while it is read (Hub revisions are immutable): when a
        # file is missing or does not match config.json's manifest *and the folder changed during
        # the attempt*, read it again (for up to _RELOAD_SECONDS). A folder that did not change is
        # broken, and that is reported at once.
        local = os.path.isdir(model_id)
        deadline = time.monotonic() + _RELOAD_SECONDS
        delay = 0.01
        while True:
            before = _folder_state(model_id) if local else None
            try:
                files = resolve_template_files(
                    model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                    token=token, local_files_only=local_files_only,
                )
                return cls.from_files(files, map_location=map_location)
            except TemplateFileError:
                if not local or _folder_state(model_id) == before or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.2)

    @classmethod
    def from_files(cls, files: TemplateFiles, map_location: str | torch.device = "cpu") -> SweetTemplate:
        """Build a template from resolved files (:func:`~sweet_hub.hub.resolve_template_files`),
        validating every tensor against config.json."""
        try:
            template = cls._read_files(files, map_location)
        except TemplateFileError as e:
            _check_manifest(files, reason=e)  # a file changed under us: TemplateChangedError (retried)
            raise
        _check_manifest(files)
        return template

    @classmethod
    def _read_files(cls, files: TemplateFiles, map_location: str | torch.device) -> SweetTemplate:
        cfg = files.template_config
        with torch.device("meta"):  # no random init: every tensor comes from the files
            template = cls(cfg)
        cores, _ = read_safetensors(files.template_path, core_shapes(cfg), FORMAT_TEMPLATE, map_location)
        with torch.no_grad():
            for name, tensor in cores.items():
                template.cores[name] = nn.Parameter(tensor)
        template.scalers.clear()
        template.scaler_info.clear()
        for key, path in files.scaler_paths.items():
            depth, width = parse_size_key(key)
            tensors, _ = read_safetensors(path, scaler_shapes(cfg, depth, width), FORMAT_SCALERS, map_location)
            info = dict(files.config["scalers"][key])
            info.pop("depth", None), info.pop("width", None)
            template.add_scalers(depth, width, tensors, **{"source": "anchor", **info})
        card_info = files.config.get("card_info")
        template.card_info = dict(card_info) if isinstance(card_info, dict) else {}
        return template.eval()

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The template's card (model_cards/sweet_template.md); ``kwargs`` reach the Jinja
        template (``repo_id`` sets the usage code's repo)."""
        return template_card(self.config, self.scaler_info, self.num_template_params(), self.card_info, **kwargs)
