"""The template config: the schema of ``config.json``, the sizes a template can build, and the
shapes of its tensors.

A template is size-agnostic; its config says what every materialized model shares (input,
patching, head dim, ranks) and which sizes the template was trained at (the anchors). This module
validates all of it in one place so that every error names the field and the fix. It is the
ground floor of the package: it imports nothing else from sweet_hub but the errors.

Sizes are spelled ``8x192`` (depth x width) wherever users read or type them; the artefact's
file names use ``d8_w192`` (:func:`size_key`), which is part of the on-disk format.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import NotASweetTemplateError, SizeError, TemplateConfigError

__all__ = [
    "ARCHITECTURE",
    "BLOCKS_PER_LAYER",
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "MAX_WIDTH",
    "README_NAME",
    "READABLE_FORMAT_VERSIONS",
    "SCALERS_DIR",
    "TEMPLATE_NAME",
    "VECTORS_PER_LAYER",
    "TemplateConfig",
    "check_memory",
    "config_json",
    "core_shapes",
    "format_size",
    "format_version",
    "jsonable_info",
    "parse_size",
    "parse_size_key",
    "parse_template_config",
    "read_config_json",
    "scaler_filename",
    "scaler_shapes",
    "size_key",
    "timm_pretrained_cfg",
    "vit_args",
    "vit_numel",
]

#: Version of the on-disk artefact (config.json + safetensors layout). Bump on any change
#: that an older reader would misinterpret; readers refuse versions they do not know.
#: 1: sweet-hub 0.1; 2 adds ``derivation: select`` (fitted templates). A template is written
#: with the lowest version that describes it (:func:`format_version`), so templates that use
#: nothing new stay readable by older sweet-hub.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)

#: Sizes beyond these are refused: they are far past any ViT trained so far and would only
#: exhaust memory while materializing.
MAX_DEPTH = 256
MAX_WIDTH = 16384
#: Largest Tucker core accepted (numbers in G): 2**31 float32 numbers are 8 GiB, far past any
#: useful template; a config.json asking for more is refused before anything is allocated.
MAX_CORE_NUMBERS = 2**31

#: file names of the artefact (a Hub repo or a folder of the same layout)
CONFIG_NAME = "config.json"
TEMPLATE_NAME = "template.safetensors"
SCALERS_DIR = "scalers"
README_NAME = "README.md"
#: the timm architecture a template's config.json names, so ``hf-hub:`` ids resolve to sweet_vit
ARCHITECTURE = "sweet_vit"
#: config.json keys that are not TemplateConfig fields
#: TemplateConfig fields a config.json may omit (added after format version 1, or defaulted)
_OPTIONAL_FIELDS = ("label_names", "depth_rescale", "width_rescale", "global_pool", "vector_rank", "derivation")
_NON_TEMPLATE_KEYS = ("architecture", "sweet_format_version", "scalers", "pretrained_cfg", "card_info", "files")

#: q, k, v, o, fc1 rows 0-3, fc2 columns 0-3
BLOCKS_PER_LAYER = 12
#: norm1 w, norm1 b, q b, k b, v b, proj b, norm2 w, norm2 b, fc1 b (4 chunks), fc2 b
VECTORS_PER_LAYER = 13

_SIZE_KEY = re.compile(r"^d(\d+)_w(\d+)$")
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


def format_size(depth: int, width: int) -> str:
    """A size as users read and type it: ``8x192`` (depth x width)."""
    return f"{depth}x{width}"


def parse_size(text: str) -> tuple[int, int]:
    """Inverse of :func:`format_size`; also accepts the file-name spelling ``d8_w192``."""
    match = _SIZE.match(text) or _SIZE_KEY.match(text.strip())
    if not match:
        raise SizeError(f"'{text}' is not a size; write depth x width, e.g. '8x192'.")
    return int(match.group(1)), int(match.group(2))


def size_key(depth: int, width: int) -> str:
    """Name of a size in the artefact: scaler files and config.json's ``scalers`` (``d8_w192``)."""
    return f"d{depth}_w{width}"


def parse_size_key(key: str) -> tuple[int, int]:
    """Inverse of :func:`size_key`."""
    match = _SIZE_KEY.match(key) if isinstance(key, str) else None
    if not match:
        raise TemplateConfigError(f"'{key}' is not a size name; expected 'd<depth>_w<width>', e.g. 'd8_w128'.")
    return int(match.group(1)), int(match.group(2))


def scaler_filename(depth: int, width: int) -> str:
    """Path of a size's scaler file inside the artefact."""
    return f"{SCALERS_DIR}/{size_key(depth, width)}.safetensors"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TemplateConfig:
    """Everything shared by the models a template materializes.

    The MLP ratio is fixed at 4: the Tucker form stacks the 12 D x D blocks of a layer
    (q, k, v, o, 4 row blocks of fc1, 4 column blocks of fc2), which needs hidden = 4 * width.
    The defaults are those of the bundled Fashion-MNIST template and of ``training/``; this is
    the only place they are written down.
    """

    img_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    num_classes: int = 10
    head_dim: int = 32
    ranks: tuple[int, int, int] = (48, 128, 128)
    vector_rank: int = 16
    anchors: tuple[tuple[int, int], ...] = ((4, 64), (6, 128), (8, 192))
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    global_pool: str = "avg"  # mean of patch tokens: +2 to +5 k-NN over the class token (CHANGELOG 0.1.0)
    # How derived scalers (sizes with no stored scaler file) are rescaled; see template.derive_scalers.
    depth_rescale: bool = True
    width_rescale: bool = False  # measured worse on the bundled template (benchmarks/derived_scalers.py)
    # 'resample' (SWEET pre-training) or 'select' (fitted to a checkpoint): see tucker.derive_scalers
    derivation: str = "resample"
    label_names: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "head_dim", "vector_rank"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise TemplateConfigError(f"Template config field '{name}' must be a positive integer, got {value!r}.")
        if not _is_int(self.num_classes) or self.num_classes < 0:
            raise TemplateConfigError(f"Template config field 'num_classes' must be an integer >= 0, got {self.num_classes!r}.")
        if self.img_size % self.patch_size:
            raise TemplateConfigError(
                f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}; "
                f"use an img_size in {[self.patch_size * k for k in (2, 4, 8)]}."
            )
        ranks = tuple(self.ranks) if isinstance(self.ranks, (list, tuple)) else None
        if ranks is None or len(ranks) != 3 or not all(_is_int(r) and r >= 1 for r in ranks):
            raise TemplateConfigError(f"Template config field 'ranks' must be 3 positive integers (r1, r2, r3), got {self.ranks!r}.")
        if math.prod(ranks) > MAX_CORE_NUMBERS or self.vector_rank > MAX_WIDTH:
            raise TemplateConfigError(
                f"Template config field 'ranks' {list(ranks)} gives a core of {math.prod(ranks):,} numbers "
                f"({math.prod(ranks) * 4 / 2**30:,.0f} GiB); at most {MAX_CORE_NUMBERS:,} are accepted (and vector_rank <= {MAX_WIDTH})."
            )
        object.__setattr__(self, "ranks", ranks)
        if not isinstance(self.anchors, (list, tuple)) or not self.anchors:
            raise TemplateConfigError("Template config field 'anchors' must be a non-empty list of [depth, width] pairs.")
        anchors = []
        for anchor in self.anchors:
            if not isinstance(anchor, (list, tuple)) or len(anchor) != 2:
                raise TemplateConfigError(f"Anchor {anchor!r} is not a [depth, width] pair.")
            depth, width = anchor
            try:
                self.check_size(depth, width, what="anchor")
            except SizeError as e:
                raise TemplateConfigError(str(e)) from None
            anchors.append((depth, width))
        if len(set(anchors)) != len(anchors):
            raise TemplateConfigError(f"Anchors must be distinct, got {anchors}.")
        object.__setattr__(self, "anchors", tuple(sorted(anchors, key=lambda a: (a[1], a[0]))))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != self.in_chans:
                raise TemplateConfigError(f"Template config field '{name}' must have in_chans={self.in_chans} values, got {value!r}.")
            object.__setattr__(self, name, tuple(value))
        for name in ("mean", "std"):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in getattr(self, name)):
                raise TemplateConfigError(f"Template config field '{name}' must hold finite numbers, got {getattr(self, name)!r}.")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if any(v <= 0 for v in self.std):
            raise TemplateConfigError(f"Template config field 'std' must be positive, got {list(self.std)}.")
        if self.global_pool not in ("token", "avg"):
            raise TemplateConfigError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}.")
        if self.derivation not in ("resample", "select"):
            raise TemplateConfigError(f"Template config field 'derivation' must be 'resample' or 'select', got {self.derivation!r}.")
        for name in ("depth_rescale", "width_rescale"):
            if not isinstance(getattr(self, name), bool):
                raise TemplateConfigError(f"Template config field '{name}' must be true or false, got {getattr(self, name)!r}.")
        if self.label_names is not None:
            names = self.label_names
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise TemplateConfigError(f"Template config field 'label_names' must be a list of strings, got {names!r}.")
            if self.num_classes and len(names) != self.num_classes:
                raise TemplateConfigError(f"label_names has {len(names)} names for num_classes={self.num_classes}; give one name per class.")
            object.__setattr__(self, "label_names", tuple(names))

    # sizes -----------------------------------------------------------------------------------

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def is_anchor(self, depth: int, width: int) -> bool:
        """Whether (depth, width) is one of the anchors (anchors may be stored as lists or tuples)."""
        return (depth, width) in {tuple(a) for a in self.anchors}

    @property
    def largest_anchor(self) -> tuple[int, int]:
        return max(self.anchors, key=lambda a: (a[0] * a[1] ** 2, a[1]))

    def valid_widths_near(self, width: int) -> list[int]:
        """The multiples of head_dim closest to ``width`` (for error messages)."""
        below = (width // self.head_dim) * self.head_dim
        return [w for w in (below, below + self.head_dim) if self.head_dim <= w <= MAX_WIDTH]

    def check_size(self, depth: Any, width: Any, what: str = "size") -> None:
        """Raise :class:`SizeError` unless (depth, width) can be materialized."""
        if not _is_int(depth) or not 1 <= depth <= MAX_DEPTH:
            raise SizeError(f"{what} depth={depth!r} is not allowed: depth must be an integer in [1, {MAX_DEPTH}].")
        if not _is_int(width) or width < self.head_dim:
            raise SizeError(
                f"{what} width={width!r} is not allowed: width must be an integer multiple of head_dim={self.head_dim}, "
                f"at least {self.head_dim}."
            )
        if width > MAX_WIDTH:
            raise SizeError(f"{what} width={width} is not allowed: width must be at most {MAX_WIDTH}.")
        if width % self.head_dim:
            near = self.valid_widths_near(width)
            raise SizeError(
                f"{what} width={width} is not a multiple of head_dim={self.head_dim} "
                f"(num_heads = width / head_dim); nearest valid widths: {', '.join(map(str, near))}."
            )

    def nearest_anchor(self, depth: int, width: int) -> tuple[int, int]:
        """Anchor closest to (depth, width) in log-size; ties go to the larger anchor.

        Log distance treats 2x deeper and 2x narrower as equally far, which matches how the
        scalers are resampled (by ratio, not by difference).
        """
        def distance(anchor: tuple[int, int]) -> tuple[float, int, int]:
            d = abs(math.log(depth / anchor[0])) + abs(math.log(width / anchor[1]))
            return (round(d, 9), -anchor[1], -anchor[0])

        return min(self.anchors, key=distance)

    # (de)serialization ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data["ranks"] = list(self.ranks)
        data["anchors"] = [list(a) for a in self.anchors]
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        if self.label_names is None:
            data.pop("label_names")
        else:
            data["label_names"] = list(self.label_names)
        return data

    @classmethod
    def field_names(cls) -> list[str]:
        return [f for f in cls.__dataclass_fields__ if f != "extra"]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> TemplateConfig:
        """Build from a config.json mapping; unknown keys are kept in ``extra``, missing ones are errors."""
        if not isinstance(data, Mapping):
            raise TemplateConfigError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        required = [f for f in cls.field_names() if f not in _OPTIONAL_FIELDS]
        missing = [f for f in required if f not in data]
        if missing:
            raise TemplateConfigError(f"{source} is missing the field(s) {', '.join(missing)}; a SWEET template config needs {', '.join(required)}.")
        known = {k: data[k] for k in cls.field_names() if k in data}
        extra = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**known, extra=extra)
        except TemplateConfigError as e:
            raise TemplateConfigError(f"{source}: {e}") from None
        except TypeError as e:  # wrong JSON types deep inside (e.g. a string where a list is expected)
            raise TemplateConfigError(f"{source}: {e}") from None

    @classmethod
    def build(cls, config: TemplateConfig | Mapping[str, Any] | None = None, **fields: Any) -> TemplateConfig:
        """A config from another config, a mapping of fields, or keyword fields (over the defaults)."""
        if isinstance(config, cls):
            return cls(**{**{f: getattr(config, f) for f in cls.field_names()}, **fields}) if fields else config
        data = {**dict(config or {}), **fields}
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise TemplateConfigError(f"Unknown template config field(s) {unknown}; valid fields: {', '.join(cls.field_names())}.")
        if "anchors" in data and isinstance(data["anchors"], (list, tuple)):
            data["anchors"] = tuple(tuple(a) if isinstance(a, list) else a for a in data["anchors"])
        try:
            return cls(**data)
        except TypeError as e:
            raise TemplateConfigError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# tensor shapes (the Tucker layout; materialization is in tucker.py)


def core_shapes(cfg: TemplateConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the template tensors (independent of any model size)."""
    r1, r2, r3 = cfg.ranks
    shapes = {
        "G": (r1, r2, r3),
        "G_vec": (cfg.vector_rank, r2),
        "patch_weight": (r2, cfg.in_chans, cfg.patch_size, cfg.patch_size),
        "patch_bias": (r2,),
        "pos_embed": (cfg.num_patches + 1, r2),
        "cls_token": (r2,),
        "norm_weight": (r2,),
        "norm_bias": (r2,),
    }
    if cfg.num_classes:
        shapes["head_weight"] = (cfg.num_classes, r3)
        shapes["head_bias"] = (cfg.num_classes,)
    return shapes


def scaler_shapes(cfg: TemplateConfig, depth: int, width: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the scalers of one size: 12L*r1 + 13L*rv + D*(r2 + r3) numbers."""
    r1, r2, r3 = cfg.ranks
    return {
        "X": (depth, BLOCKS_PER_LAYER, r1),
        "X_vec": (depth, VECTORS_PER_LAYER, cfg.vector_rank),
        "U": (width, r2),
        "V": (width, r3),
    }


# ---------------------------------------------------------------------------------------------
# config.json


def config_json(cfg: TemplateConfig, scaler_info: Mapping[str, Mapping[str, Any]], card_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full config.json of a template: template fields, scaler registry, timm fields."""
    scalers = {key: jsonable_info(info) for key, info in scaler_info.items()}
    return {
        "architecture": ARCHITECTURE,
        "sweet_format_version": format_version(cfg),
        **cfg.to_dict(),
        "scalers": scalers,
        **({"card_info": dict(card_info)} if card_info and _jsonable(card_info) else {}),
        "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in timm_pretrained_cfg(cfg).items()},
    }


def format_version(cfg: TemplateConfig) -> int:
    """The lowest artefact format version that describes ``cfg`` (see FORMAT_VERSION)."""
    return 2 if cfg.derivation != "resample" else 1


def jsonable_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a provenance mapping that JSON can store (config.json, safetensors metadata)."""
    return {k: v for k, v in info.items() if _jsonable(v)}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def read_config_json(path: Path, source: str) -> dict[str, Any]:
    """Read and check a template's config.json (format version, scaler registry)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
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
    if not _is_int(version) or version not in READABLE_FORMAT_VERSIONS:
        raise TemplateConfigError(
            f"{path}: sweet_format_version {version!r} is not supported by this sweet-hub (reads version {FORMAT_VERSION}); "
            f"upgrade sweet-hub (pip install -U sweet-hub)."
        )
    scalers = config.get("scalers")
    if not isinstance(scalers, dict):
        raise TemplateConfigError(f"{path}: config.json field 'scalers' must map size names (d<depth>_w<width>) to their info.")
    for key, info in scalers.items():
        try:
            parse_size_key(key)
        except TemplateConfigError as e:
            raise TemplateConfigError(f"{path}: {e}") from None
        if not isinstance(info, dict) or not isinstance(info.get("source", "anchor"), str):
            raise TemplateConfigError(f"{path}: config.json 'scalers' entry '{key}' must be an object like {{\"source\": \"anchor\"}}, got {info!r}.")
    manifest = config.get("files", {})
    if not isinstance(manifest, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in manifest.items()):
        raise TemplateConfigError(f"{path}: config.json field 'files' must map file names to SHA-256 hex digests.")
    card_info = config.get("card_info", {})
    if not isinstance(card_info, dict):
        raise TemplateConfigError(f"{path}: config.json field 'card_info' must be an object, got {type(card_info).__name__}.")
    return config


def parse_template_config(config: Mapping[str, Any], source: str) -> TemplateConfig:
    """The TemplateConfig of a config.json mapping; every anchor must have stored scalers."""
    cfg = TemplateConfig.from_dict({k: v for k, v in config.items() if k not in _NON_TEMPLATE_KEYS}, source=f"{source}/config.json")
    missing = [size_key(*a) for a in cfg.anchors if size_key(*a) not in config["scalers"]]
    if missing:
        raise TemplateConfigError(f"{source}/config.json: anchors {missing} have no entry in 'scalers'.")
    return cfg


# ---------------------------------------------------------------------------------------------
# timm


def vit_numel(cfg: TemplateConfig, depth: int, width: int) -> int:
    """Parameters of the VisionTransformer a template materializes at (depth, width)."""
    per_layer = 12 * width * width + 13 * width
    embed = width * (cfg.in_chans * cfg.patch_size**2 + 1) + (cfg.num_patches + 1) * width + width
    head = cfg.num_classes * (width + 1)
    return depth * per_layer + embed + 2 * width + head


def check_memory(cfg: TemplateConfig, depth: int, width: int) -> None:
    """Refuse a size whose materialization cannot fit in this machine's available memory.

    Materialization holds the model's float32 weights plus about as much again in intermediate
    products; a size allowed by MAX_DEPTH/MAX_WIDTH (256 x 16384 is 3 TB) must fail here with a
    clear message rather than in torch's allocator.
    """
    needed = 2 * 4 * vit_numel(cfg, depth, width)
    available = _available_memory()
    if available is not None and needed > available:
        raise SizeError(
            f"size {format_size(depth, width)} needs about {needed / 2**30:,.1f} GiB to materialize "
            f"({vit_numel(cfg, depth, width):,} parameters), more than the {available / 2**30:,.1f} GiB available; "
            f"choose a smaller depth or width."
        )


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def vit_args(cfg: TemplateConfig, depth: int, width: int) -> dict[str, Any]:
    """timm ``VisionTransformer`` arguments of the model a template materializes at (depth, width)."""
    cfg.check_size(depth, width)
    return dict(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        embed_dim=width,
        depth=depth,
        num_heads=width // cfg.head_dim,
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=True,
        global_pool=cfg.global_pool,
        fc_norm=False,  # keep the final norm under the key 'norm' for every pooling type
    )


def timm_pretrained_cfg(cfg: TemplateConfig) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` (data config, classifier names) shared by every materialized size."""
    out: dict[str, Any] = dict(
        input_size=(cfg.in_chans, cfg.img_size, cfg.img_size),
        fixed_input_size=True,
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="center",
        mean=cfg.mean,
        std=cfg.std,
        num_classes=cfg.num_classes,
        first_conv="patch_embed.proj",
        classifier="head",
        license="apache-2.0",
        paper_ids="arXiv:2601.19694",
        paper_name="Self-Supervised Weight Templates for Scalable Vision Model Initialization",
    )
    if cfg.label_names:
        out["label_names"] = cfg.label_names
    return out
