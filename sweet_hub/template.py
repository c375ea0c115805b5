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
    README_NAME,
    SCALERS_DIR,
    TEMPLATE_NAME,
    TemplateConfig,
    check_memory,
    config_json,
    core_shapes,
    format_size,
    format_version,
    jsonable_info,
    parse_size_key,
    read_config_json,
    scaler_filename,
    scaler_shapes,
    size_key,
    vit_args,
)
from .decompose import SourceViT, decompose, full_ranks, read_source, reconstruction_errors, refine
from .distill import TokenDistiller, distill
from .errors import FitError, TemplateConfigError, TemplateFileError
from .files import (FORMAT_SCALERS, FORMAT_TEMPLATE, file_sha256, folder_lock, read_safetensors, save_safetensors, staged_folder,
                    write_text)
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


def _fit_config(source: SourceViT, ranks: Any, vector_rank: int | None, anchors: Any, mean: Any, std: Any,
                label_names: Any) -> TemplateConfig:
    """The TemplateConfig of a template fitted to ``source`` (full ranks unless given)."""
    full, full_vector = full_ranks(source)
    ranks = tuple(ranks) if ranks is not None else full
    if len(ranks) != 3 or any(not isinstance(r, int) or r < 1 for r in ranks):
        raise FitError(f"ranks must be 3 positive integers (r1, r2, r3), got {ranks!r}.")
    if any(r > f for r, f in zip(ranks, full)):
        raise FitError(f"ranks {list(ranks)} exceed what a {source.size} source has: at most {list(full)} (12 x depth, width, width); "
                       f"larger ranks cannot add information.")
    def per_channel(given: Any, from_source: tuple[float, ...]) -> tuple[float, ...]:
        # timm keeps the 3-channel ImageNet statistics in pretrained_cfg of a model built with
        # in_chans=1: average them then (what timm's own conv adaptation does to the weights)
        values = tuple(given or from_source or (0.5,))
        if len(values) != source.in_chans and not given:
            values = (sum(values) / len(values),) * source.in_chans
        return values

    mean, std = per_channel(mean, source.mean), per_channel(std, source.std)
    sizes = [(source.depth, source.width), *((tuple(a) for a in anchors) if anchors else ())]
    try:
        return TemplateConfig(
            img_size=source.img_size, patch_size=source.patch_size, in_chans=source.in_chans, num_classes=source.num_classes,
            head_dim=source.head_dim, ranks=ranks, vector_rank=vector_rank or min(full_vector, ranks[1]),
            anchors=tuple(dict.fromkeys(sizes)), mean=mean, std=std, global_pool=source.global_pool, derivation="select",
            depth_rescale=True, width_rescale=False, label_names=tuple(label_names) if label_names else None,
        )
    except TemplateConfigError as e:
        raise FitError(f"Cannot fit {source.name}: {e}") from None


def _source_distiller(template: SweetTemplate, source: SourceViT, cores: Mapping[str, Tensor], scalers: Mapping[str, Tensor],
                      train_cores: bool = False) -> TokenDistiller:
    """A distiller whose teacher is the source checkpoint itself (its tokens mapped to r-space by
    the U of the fitted source scalers)."""
    teacher_kwargs = {**vit_args(template.config, source.depth, source.width), "num_heads": source.num_heads}
    source_u = scalers["U"] if scalers["U"].shape[0] == source.width else template.stored_scalers(source.depth, source.width)["U"]
    teacher_state = {k: v.float() for k, v in source.state.items()}
    return TokenDistiller(template.config, cores, scalers, teacher_state, teacher_kwargs, source_u / math.sqrt(source.width),
                          train_cores=train_cores)


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

    def remove_scalers(self, depth: int, width: int) -> None:
        """Forget the stored scalers of a non-anchor size, so it is derived again (anchors define
        the template and cannot be removed). Saved folders change only on the next save."""
        key = size_key(depth, width)
        if key not in self.scalers:
            raise TemplateConfigError(f"No scalers are stored for {format_size(depth, width)}; stored: {', '.join(sorted(self.scalers))}.")
        if self.config.is_anchor(depth, width):
            raise TemplateConfigError(f"{format_size(depth, width)} is an anchor of this template; its scalers cannot be removed.")
        del self.scalers[key]
        del self.scaler_info[key]

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
            depth_rescale=self.config.depth_rescale, width_rescale=self.config.width_rescale, derivation=self.config.derivation,
        )

    def scaler_source(self, depth: int, width: int) -> str:
        """'anchor', 'learned', ... for stored sizes; 'derived from 8x192' otherwise."""
        key = size_key(depth, width)
        if key in self.scaler_info:
            return self.scaler_info[key]["source"]
        return f"derived from {format_size(*self.config.nearest_anchor(depth, width))}"

    def scaler_teacher(self, depth: int, width: int, teacher: tuple[int, int] | None = None) -> tuple[int, int]:
        """The anchor whose tokens :meth:`learn_scalers` copies for (depth, width): ``teacher``,
        checked (an anchor, not the size itself), or the largest anchor."""
        self.config.check_size(depth, width)
        anchors = [tuple(a) for a in self.config.anchors]
        teacher = tuple(teacher) if teacher is not None else self.config.largest_anchor
        if teacher not in anchors:
            raise TemplateConfigError(f"teacher {format_size(*teacher)} is not an anchor of this template; choose one of "
                                      f"{', '.join(format_size(*a) for a in anchors)} (or leave it unset for the largest).")
        if teacher == (depth, width):
            raise TemplateConfigError(f"{format_size(depth, width)} is the teacher itself: a size cannot copy its own tokens. "
                                      f"Choose another anchor as teacher (or learn the scalers of another size).")
        return teacher

    def learn_scalers(self, depth: int, width: int, images: Tensor, steps: int = 300, batch_size: int = 128, lr: float = 1e-3,
                      seed: int = 0, accelerator: Any = None, progress: bool = True,
                      teacher: tuple[int, int] | None = None, relation_weight: float = 0.0) -> dict[str, Any]:
        """Learn the scalers of (depth, width) from unlabeled ``images`` (uint8 (N, C, H, W)) and
        store them (source 'learned'); the template stays frozen.

        They start from the scalers the template has for that size (the derived ones, or the
        stored ones if any: learning again continues them) and are trained to reproduce, token by
        token, the features of ``teacher``, an anchor (default: the largest one; a smaller model
        may do better copying the anchor it is derived from) (:mod:`sweet_hub.distill`).
        ``relation_weight`` > 0 also pulls the size's pooled features towards the teacher's
        neighbourhoods (:func:`sweet_hub.distill.relation_loss`): the directions a wider student
        has beyond r-space then reach its features only where they agree with the teacher. Returns
        the facts stored with them (images, steps, seconds, distillation loss before and after).
        """
        teacher = self.scaler_teacher(depth, width, teacher)
        with torch.no_grad():
            teacher_state = self.state_dict_for(*teacher)
            teacher_to_r = self.scalers_for(*teacher)["U"] / math.sqrt(teacher[1])
        student = TokenDistiller(self.config, dict(self.cores.items()), self.scalers_for(depth, width), teacher_state,
                                 vit_args(self.config, *teacher), teacher_to_r, relation_weight=relation_weight)
        facts = distill(student, images, steps=steps, batch_size=batch_size, lr=lr, seed=seed, accelerator=accelerator,
                        progress=progress, desc=f"learn scalers {format_size(depth, width)}")
        facts["teacher"] = format_size(*teacher)
        if relation_weight:
            facts["relation_weight"] = float(relation_weight)
        self.add_scalers(depth, width, {k: v.detach() for k, v in student.scalers.items()}, source="learned", **facts)
        return facts

    # fitting to a checkpoint ------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        model_or_state_dict: nn.Module | Mapping[str, Tensor],
        ranks: tuple[int, int, int] | None = None,
        anchors: list[tuple[int, int]] | None = None,
        images: Tensor | None = None,
        steps: int = 300,
        *,
        vector_rank: int | None = None,
        patch_size: int | None = None,
        distill_steps: int = 300,
        num_heads: int | None = None,
        global_pool: str | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        label_names: list[str] | None = None,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = True,
    ) -> SweetTemplate:
        """A template fitted to an existing ViT (a timm ``VisionTransformer`` or its state dict).

        The source's size becomes an anchor whose scalers reproduce it (exactly at the default,
        full ranks (12L, D, D)); every other size gets scalers derived by layer and channel
        selection (``derivation='select'``: smaller sizes are weight selection from the source,
        larger ones duplicate channels and layers). Steps:

        1. higher-order SVD of the source's stacked blocks and embeddings (:mod:`sweet_hub.decompose`);
        2. ``steps`` Adam steps on the relative reconstruction error (skipped when exact);
        3. with ``images`` (uint8 (N, C, H, W), unlabeled): when the reconstruction is not exact,
           ``distill_steps`` of token distillation of the template at the source's size towards the
           source; then the scalers of each extra ``anchors`` size are learned the same way (the
           source is the teacher). Without images, extra anchors store derived scalers.

        ``patch_size``, when given, is checked against the source's (a template cannot change it).
        ``num_heads`` (and ``global_pool``) are needed for a bare state dict. ``mean``/``std``
        default to the source's ``pretrained_cfg``. The report (errors per tensor kind, time,
        distillation losses) is in ``template.card_info['fit']`` and in the model card.
        """
        started = time.perf_counter()
        source = read_source(model_or_state_dict, num_heads=num_heads, global_pool=global_pool)
        if patch_size is not None and patch_size != source.patch_size:
            raise FitError(f"Cannot fit {source.name}: the patch size differs: the source has patch {source.patch_size}, "
                           f"{patch_size} was asked; a template keeps its source's patch embedding (fit a checkpoint with "
                           f"patch {patch_size}, or drop the patch size requirement).")
        cfg = _fit_config(source, ranks, vector_rank, anchors, mean, std, label_names)
        cores, scalers = decompose(source, cfg)
        target = source.state
        hosvd = reconstruction_errors(materialize_state_dict(cores, scalers, cfg), target)
        exact = max(hosvd.values()) < 1e-4
        refine_steps = 0 if exact else steps
        if refine_steps:
            cores, scalers, _ = refine(cores, scalers, source, cfg, refine_steps, lr=lr, progress=progress)
        errors = reconstruction_errors(materialize_state_dict(cores, scalers, cfg), target)
        with torch.device("meta"):
            template = cls(cfg)
        template.cores = nn.ParameterDict({k: nn.Parameter(v) for k, v in cores.items()})
        template.scalers.clear()
        template.scaler_info.clear()
        facts: dict[str, Any] = {"source": source.name, "source_size": source.size, "source_params": sum(v.numel() for v in source.state.values()),
                                 "ranks": list(cfg.ranks), "vector_rank": cfg.vector_rank, "hosvd_errors": hosvd,
                                 "refine_steps": refine_steps, "errors": errors}
        if images is not None and not exact and distill_steps:
            student = _source_distiller(template, source, cores, scalers, train_cores=True)
            facts["source_distill"] = distill(student, images, steps=distill_steps, lr=lr, seed=seed, progress=progress,
                                              desc=f"distill {source.size}")
            cores, scalers = student.core_tensors(), dict(student.scalers.items())
            template.cores = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in cores.items()})
            facts["errors_after_distill"] = reconstruction_errors(materialize_state_dict(cores, scalers, cfg), target)
        template.add_scalers(source.depth, source.width, scalers, source="fitted", checkpoint=source.name)
        for depth, width in cfg.anchors:
            if (depth, width) == (source.depth, source.width):
                continue
            derived = derive_scalers(template.stored_scalers(source.depth, source.width), depth, width,
                                     depth_rescale=cfg.depth_rescale, derivation=cfg.derivation)
            if images is None:
                template.add_scalers(depth, width, derived, source="derived", rule="select")
                continue
            student = _source_distiller(template, source, template.cores, derived)
            learned = distill(student, images, steps=distill_steps, lr=lr, seed=seed, progress=progress,
                              desc=f"learn scalers {format_size(depth, width)}")
            template.add_scalers(depth, width, {k: v.detach() for k, v in student.scalers.items()}, source="learned",
                                 teacher=f"{source.name} ({source.size})", **learned)
        facts["seconds"] = round(time.perf_counter() - started, 1)
        template.card_info["fit"] = facts
        return template.eval()

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
        mix and retries. Scaler files of sizes this template no longer stores are removed. Runs under
        the folder's lock, so it never interleaves with a ``save_scalers`` of another process."""
        save_directory = Path(save_directory)
        with folder_lock(save_directory):
            self._write_folder(save_directory, model_card_kwargs)

    def _write_folder(self, save_directory: Path, model_card_kwargs: dict[str, Any] | None) -> None:
        """Every file of the template, staged and renamed into place (the caller holds the folder lock)."""
        cfg = self.config
        with staged_folder(save_directory) as staging:
            names = []
            for key, params in self.scalers.items():
                name = scaler_filename(*parse_size_key(key))
                save_safetensors(dict(params.items()), staging / name, self._scaler_metadata(key))
                names.append(name)
            save_safetensors(
                dict(self.cores.items()), staging / TEMPLATE_NAME,
                {"format": FORMAT_TEMPLATE, "format_version": str(format_version(cfg)), "ranks": list(cfg.ranks), "vector_rank": cfg.vector_rank},
            )
            self.generate_model_card(**(model_card_kwargs or {})).save(staging / README_NAME)
            write_text(staging / CONFIG_NAME, self._config_json_text({n: file_sha256(staging / n) for n in [TEMPLATE_NAME, *names]}))
        for stale in (save_directory / SCALERS_DIR).glob("*.safetensors"):
            if f"{SCALERS_DIR}/{stale.name}" not in names:
                stale.unlink(missing_ok=True)

    def save_scalers(self, save_directory: str | Path, depth: int, width: int) -> Path:
        """Add the stored scalers of one size to an existing template folder (after learning
        them) without rewriting the template file: the scaler file, the card, then config.json.

        Only this size's entry changes: the other sizes' entries are read from the folder under a
        lock, so several ``learn_scalers.py`` runs can add sizes to one folder at the same time."""
        self._update_folder(Path(save_directory), [(depth, width)])
        return Path(save_directory) / scaler_filename(depth, width)

    def save_card(self, save_directory: str | Path) -> Path:
        """Rewrite the card (README.md) and config.json of an existing template folder, e.g. after
        ``card_info['metrics_table']`` was re-measured; the tensor files are not touched, and the
        scaler entries are the folder's (which a concurrent ``save_scalers`` may have just changed)."""
        self._update_folder(Path(save_directory), [])
        return Path(save_directory) / README_NAME

    def _update_folder(self, save_directory: Path, sizes: list[tuple[int, int]]) -> None:
        """Stage the scaler files of ``sizes``, the card and config.json (which records every file's
        SHA-256), then rename them into place, config.json last. Read-modify-write of config.json
        under an inter-process lock (kept in the temp folder, not in the template folder)."""
        with folder_lock(save_directory):
            on_disk = read_config_json(save_directory / CONFIG_NAME, str(save_directory))
            manifest = on_disk.get("files", {})
            saved = {size_key(depth, width): self.scaler_info[size_key(depth, width)] for depth, width in sizes}
            scaler_info = {**on_disk.get("scalers", {}), **saved}
            with staged_folder(save_directory) as staging:
                for depth, width in sizes:
                    name = scaler_filename(depth, width)
                    save_safetensors(self.stored_scalers(depth, width), staging / name, self._scaler_metadata(size_key(depth, width)))
                    manifest = {**manifest, name: file_sha256(staging / name)} if manifest else {}
                template_card(self.config, scaler_info, self.num_template_params(), self.card_info).save(staging / README_NAME)
                write_text(staging / CONFIG_NAME, self._config_json_text(manifest, scaler_info))

    def _config_json_text(self, manifest: Mapping[str, str], scaler_info: Mapping[str, Mapping[str, Any]] | None = None) -> str:
        data = config_json(self.config, self.scaler_info if scaler_info is None else scaler_info, self.card_info)
        if manifest:
            data["files"] = dict(manifest)
        return json.dumps(data, indent=2) + "\n"

    def _scaler_metadata(self, key: str) -> dict[str, Any]:
        return {"format": FORMAT_SCALERS, "format_version": str(format_version(self.config)), **jsonable_info(self.scaler_info[key])}

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
