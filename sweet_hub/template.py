"""The SWEET method: a Tucker weight template, size-specific scalers, and materialization.

The 12 D x D blocks of every layer of an L-layer ViT (q, k, v, o, the 4 row blocks of fc1 and the
4 column blocks of fc2) are stacked into W of shape (12L, D, D) and kept in Tucker form

    W = G x1 X x2 U x3 V,      block (l, b) = U @ (sum_a X[l, b, a] G[a]) @ V.T * c_D

G (r1, r2, r3) is the *template*, shared by all sizes; X (L, 12, r1), U (D, r2), V (D, r3) are
the *scalers* of one size. Every other tensor with a width axis is also stored in r-space and
mapped to width D by U (what a layer writes into the residual stream) or V (what it reads):

    patch embedding, pos embedding, class token, biases, norm weights  ->  U @ core * c
    classifier                                                         ->  core @ V.T * c
    per-layer vectors (13 per layer)                                   ->  U @ (X_vec @ G_vec) * c

so the template file holds no size-specific tensor and a new size needs only its scalers.

Parametrization: every stored factor has O(1) entries and each contraction carries a constant
1/sqrt(contracted ranks) (and 1/sqrt(D) for matrices, muP-like), e.g. c_D = (D r1 r2 r3)^-1/2.
This keeps materialized blocks at variance 1/(2D) at every width, and it makes one Adam learning
rate right for all factors: with factors at their natural scales instead (G entries ~0.005), an
Adam step moves G by the same absolute amount as U and the model collapses at lr 1e-3 (measured).
LayerNorm weights are stored as offsets from 1 so that a zero core is the usual identity init.

Sizes with no stored scalers get *derived* scalers (:func:`derive_scalers`): the nearest anchor's
scalers resampled along depth (X) and width (U, V). Pre-training with width-wise stochastic
scaling uses the same resampling, so derived sizes are sizes the template was trained for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from .config import TemplateConfig, parse_size_key, size_key, timm_pretrained_cfg, vit_args
from .errors import SizeError, TemplateConfigError

__all__ = [
    "BLOCKS_PER_LAYER",
    "VECTORS_PER_LAYER",
    "SweetTemplate",
    "core_shapes",
    "derive_scalers",
    "init_cores",
    "init_scalers",
    "materialize_flops",
    "materialize_state_dict",
    "resample_rows",
    "scaler_shapes",
]

#: q, k, v, o, fc1 rows 0-3, fc2 columns 0-3
BLOCKS_PER_LAYER = 12
#: norm1 w, norm1 b, q b, k b, v b, proj b, norm2 w, norm2 b, fc1 b (4 chunks), fc2 b
VECTORS_PER_LAYER = 13
# Blocks and vectors that write into the residual stream (attn proj, fc2): the ones derived
# scalers shrink when a model is made deeper than its source anchor.
_RESIDUAL_BLOCKS = (3, 8, 9, 10, 11)
_RESIDUAL_VECTORS = (5, 12)
_NORM_WEIGHT_VECTORS = (0, 6)


# ---------------------------------------------------------------------------------------------
# shapes and initialization


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


def init_cores(cfg: TemplateConfig, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Random template whose materialized models match timm's init statistics.

    With the constants of :func:`materialize_state_dict`, G ~ N(0, 1/2) and unit-variance
    scalers give blocks of variance 1/(2D), the patch core gives fan-in init, pos/cls embeddings
    get std 0.02, vectors start at zero (biases 0, norm weights 1).
    """
    shapes = core_shapes(cfg)

    def normal(name: str, std: float) -> Tensor:
        return torch.randn(shapes[name], generator=generator) * std

    cores = {
        "G": normal("G", 0.5**0.5),
        "G_vec": torch.zeros(shapes["G_vec"]),
        "patch_weight": normal("patch_weight", 1.0),
        "patch_bias": torch.zeros(shapes["patch_bias"]),
        "pos_embed": normal("pos_embed", 0.02),
        "cls_token": normal("cls_token", 0.02),
        "norm_weight": torch.zeros(shapes["norm_weight"]),
        "norm_bias": torch.zeros(shapes["norm_bias"]),
    }
    if cfg.num_classes:
        cores["head_weight"] = normal("head_weight", 1.0)
        cores["head_bias"] = torch.zeros(shapes["head_bias"])
    return cores


def init_scalers(cfg: TemplateConfig, depth: int, width: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Random scalers for one size: unit-variance entries (see :func:`init_cores`)."""
    return {name: torch.randn(shape, generator=generator) for name, shape in scaler_shapes(cfg, depth, width).items()}


# ---------------------------------------------------------------------------------------------
# materialization


def _block_contraction_costs(n_blocks: int, r1: int, r2: int, r3: int, width: int) -> dict[str, int]:
    """Multiply-adds of the three ways to evaluate U @ (X . G) @ V.T for all blocks."""
    d = width
    mix_first = n_blocks * r1 * r2 * r3
    return {
        # mix the core per block, then map rows (U) first or columns (V) first
        "mix_u_v": mix_first + n_blocks * d * r2 * r3 + n_blocks * d * d * r3,
        "mix_v_u": mix_first + n_blocks * r2 * r3 * d + n_blocks * d * d * r2,
        # map the r1 core slices to width first, then mix them per block (wins when 12L > r1)
        "map_then_mix": r1 * d * r2 * r3 + r1 * d * d * min(r2, r3) + n_blocks * r1 * d * d,
    }


def materialize_flops(cfg: TemplateConfig, depth: int, width: int) -> int:
    """FLOPs (2 x multiply-adds) of :func:`materialize_state_dict` with the cheapest order."""
    r1, r2, r3 = cfg.ranks
    blocks = min(_block_contraction_costs(depth * BLOCKS_PER_LAYER, r1, r2, r3, width).values())
    vectors = depth * VECTORS_PER_LAYER * (cfg.vector_rank * r2 + r2 * width)
    patch = width * r2 * (cfg.in_chans * cfg.patch_size**2 + 1)
    pos = (cfg.num_patches + 1) * r2 * width
    head = cfg.num_classes * r3 * width
    return 2 * (blocks + vectors + patch + pos + head)


def _tucker_blocks(X: Tensor, G: Tensor, U: Tensor, V: Tensor) -> Tensor:
    """All blocks U @ (sum_a X[l, b, a] G[a]) @ V.T as one (L, 12, D, D) tensor, cheapest order."""
    depth, n_types, r1 = X.shape
    _, r2, r3 = G.shape
    costs = _block_contraction_costs(depth * n_types, r1, r2, r3, U.shape[0])
    order = min(costs, key=costs.__getitem__)
    if order == "map_then_mix":
        mapped = U @ (G @ V.T) if r2 <= r3 else (U @ G) @ V.T  # (r1, D, D)
        return torch.einsum("lba,ade->lbde", X, mapped)
    mixed = torch.einsum("lba,ars->lbrs", X, G)
    return (U @ mixed) @ V.T if order == "mix_u_v" else U @ (mixed @ V.T)


def materialize_state_dict(
    cores: Mapping[str, Tensor],
    scalers: Mapping[str, Tensor],
    cfg: TemplateConfig,
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Every tensor of the timm ``VisionTransformer`` of the scalers' size.

    Differentiable (pre-training calls it inside the step), vectorized over layers and blocks.
    Computes in the cores' dtype and casts the result to ``dtype`` when given.
    """
    X, X_vec, U, V = scalers["X"], scalers["X_vec"], scalers["U"], scalers["V"]
    depth, width = X.shape[0], U.shape[0]
    r1, r2, r3 = cores["G"].shape
    rv = cores["G_vec"].shape[0]
    patch = cores["patch_weight"]
    fan_in = patch[0].numel()

    blocks = _tucker_blocks(X, cores["G"], U, V) * (width * r1 * r2 * r3) ** -0.5  # (L, 12, D, D)
    qkv_w = blocks[:, 0:3].reshape(depth, 3 * width, width)
    proj_w = blocks[:, 3]
    fc1_w = blocks[:, 4:8].reshape(depth, 4 * width, width)
    fc2_w = blocks[:, 8:12].permute(0, 2, 1, 3).reshape(depth, width, 4 * width)

    vectors = (X_vec @ cores["G_vec"]) @ U.T * (rv * r2) ** -0.5  # (L, 13, D)
    norm_offset = torch.zeros(VECTORS_PER_LAYER, 1, dtype=vectors.dtype, device=vectors.device)
    norm_offset[list(_NORM_WEIGHT_VECTORS)] = 1.0
    vectors = vectors + norm_offset
    per_layer = {
        "norm1.weight": vectors[:, 0],
        "norm1.bias": vectors[:, 1],
        "attn.qkv.weight": qkv_w,
        "attn.qkv.bias": vectors[:, 2:5].reshape(depth, 3 * width),
        "attn.proj.weight": proj_w,
        "attn.proj.bias": vectors[:, 5],
        "norm2.weight": vectors[:, 6],
        "norm2.bias": vectors[:, 7],
        "mlp.fc1.weight": fc1_w,
        "mlp.fc1.bias": vectors[:, 8:12].reshape(depth, 4 * width),
        "mlp.fc2.weight": fc2_w,
        "mlp.fc2.bias": vectors[:, 12],
    }

    u_scale = r2**-0.5
    out: dict[str, Tensor] = {
        "cls_token": (U @ cores["cls_token"] * u_scale).reshape(1, 1, width),
        "pos_embed": (cores["pos_embed"] @ U.T * u_scale).unsqueeze(0),
        "patch_embed.proj.weight": (U @ patch.reshape(r2, -1) * (r2 * fan_in) ** -0.5).reshape(width, *patch.shape[1:]),
        "patch_embed.proj.bias": U @ cores["patch_bias"] * u_scale,
    }
    for name, stacked in per_layer.items():  # naming only: each entry is a view of one stacked tensor
        for layer, tensor in enumerate(stacked.unbind(0)):
            out[f"blocks.{layer}.{name}"] = tensor
    out["norm.weight"] = 1.0 + U @ cores["norm_weight"] * u_scale
    out["norm.bias"] = U @ cores["norm_bias"] * u_scale
    if "head_weight" in cores:
        out["head.weight"] = cores["head_weight"] @ V.T * (width * r3) ** -0.5
        out["head.bias"] = cores["head_bias"]
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return out


# ---------------------------------------------------------------------------------------------
# scalers for sizes that were not trained


def resample_rows(tensor: Tensor, rows: int) -> Tensor:
    """Linear interpolation of ``tensor`` along its first axis to ``rows`` rows (ends kept)."""
    if tensor.shape[0] == rows:
        return tensor
    flat = tensor.reshape(tensor.shape[0], -1).T.unsqueeze(0)  # (1, features, rows)
    out = F.interpolate(flat, size=rows, mode="linear", align_corners=True)
    return out[0].T.reshape(rows, *tensor.shape[1:])


def derive_scalers(
    source: Mapping[str, Tensor],
    depth: int,
    width: int,
    depth_rescale: bool = True,
    width_rescale: bool = False,
) -> dict[str, Tensor]:
    """Scalers for (depth, width) from the scalers of another size (zero-cost, differentiable).

    X is resampled along depth and U, V along width. Two optional corrections keep the
    materialized function close to the source's, assuming channels vary smoothly along the
    resampled axes (which width-wise stochastic scaling trains for):

    - depth_rescale: a model k times deeper applies each residual update ~k times, so the
      blocks and biases that write into the residual stream (attn.proj, mlp.fc2) are scaled by
      L_source / L (the ODE view of residual networks).
    - width_rescale: V.T @ x sums over D channels, so it grows ~D / D_source on a resampled
      stream; V is scaled by sqrt(D_source / D) to cancel that against the 1/sqrt(D) factor.
      Off by default: on the bundled template it cost 1.1-1.6 k-NN points on average over 6 unseen
      sizes (benchmarks/derived_scalers.py), while depth_rescale was neutral to +1.9 (10 x 512).
    """
    src_depth, src_width = source["X"].shape[0], source["U"].shape[0]
    X = resample_rows(source["X"], depth)
    X_vec = resample_rows(source["X_vec"], depth)
    U = resample_rows(source["U"], width)
    V = resample_rows(source["V"], width)
    if depth_rescale and depth != src_depth:
        block_scale = torch.ones(BLOCKS_PER_LAYER, 1, dtype=X.dtype, device=X.device)
        block_scale[list(_RESIDUAL_BLOCKS)] = src_depth / depth
        vector_scale = torch.ones(VECTORS_PER_LAYER, 1, dtype=X.dtype, device=X.device)
        vector_scale[list(_RESIDUAL_VECTORS)] = src_depth / depth
        X, X_vec = X * block_scale, X_vec * vector_scale
    if width_rescale and width != src_width:
        V = V * math.sqrt(src_width / width)
    return {"X": X, "X_vec": X_vec, "U": U, "V": V}


# ---------------------------------------------------------------------------------------------
# the template module


class SweetTemplate(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="sweet-hub",
    tags=["sweet", "weight-template", "vision-transformer", "timm", "image-feature-extraction"],
    license="apache-2.0",
    repo_url="https://github.com/sweet-hub/sweet-hub",
    paper_url="https://arxiv.org/abs/2601.19694",
):
    """A SWEET weight template: the Tucker core, the r-space cores, and the scalers of its sizes.

    ``SweetTemplate(...)`` builds a randomly initialized template; ``from_pretrained`` loads one
    from a folder or a Hub repo; ``materialize(depth, width)`` returns a plain timm
    ``VisionTransformer`` of that size.

    Example:
        >>> t = SweetTemplate(img_size=28, patch_size=7, in_chans=1, num_classes=10,
        ...                   head_dim=32, ranks=(48, 128, 128), anchors=[(4, 64), (8, 128)])
        >>> vit = t.materialize(depth=6, width=96)
        >>> vit.embed_dim, len(vit.blocks)
        (96, 6)
    """

    def __init__(
        self,
        img_size: int = 28,
        patch_size: int = 7,
        in_chans: int = 1,
        num_classes: int = 10,
        head_dim: int = 32,
        ranks: tuple[int, int, int] | list[int] = (48, 128, 128),
        anchors: list[tuple[int, int]] | list[list[int]] = ((4, 64), (8, 128), (12, 256)),
        vector_rank: int = 16,
        mean: tuple[float, ...] | list[float] = (0.2860,),
        std: tuple[float, ...] | list[float] = (0.3530,),
        global_pool: str = "token",
        depth_rescale: bool = True,
        width_rescale: bool = False,
        label_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.config = TemplateConfig(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            head_dim=head_dim, ranks=tuple(ranks), anchors=tuple(tuple(a) for a in anchors),
            vector_rank=vector_rank, mean=tuple(mean), std=tuple(std), global_pool=global_pool,
            depth_rescale=depth_rescale, width_rescale=width_rescale,
            label_names=tuple(label_names) if label_names else None,
        )
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
            raise TemplateConfigError(f"Scalers for d{depth}_w{width} must have tensors {sorted(expected)}, got {sorted(tensors)}.")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise TemplateConfigError(
                    f"Scaler '{name}' for d{depth}_w{width} has shape {tuple(tensors[name].shape)}, expected {shape} "
                    f"for ranks {self.config.ranks} and vector_rank {self.config.vector_rank}."
                )
        device = self.cores["G"].device
        key = size_key(depth, width)
        self.scalers[key] = nn.ParameterDict(
            {k: nn.Parameter(v.detach().clone().to(device=device, dtype=self.cores["G"].dtype)) for k, v in tensors.items()}
        )
        self.scaler_info[key] = {"depth": depth, "width": width, "source": source, **info}

    def has_scalers(self, depth: int, width: int) -> bool:
        return size_key(depth, width) in self.scalers

    def scalers_for(self, depth: int, width: int) -> dict[str, Tensor]:
        """Stored scalers of (depth, width), or scalers derived from the nearest anchor."""
        self.config.check_size(depth, width)
        key = size_key(depth, width)
        if key in self.scalers:
            return dict(self.scalers[key].items())
        anchor = self.config.nearest_anchor(depth, width)
        return derive_scalers(
            dict(self.scalers[size_key(*anchor)].items()), depth, width,
            depth_rescale=self.config.depth_rescale, width_rescale=self.config.width_rescale,
        )

    def scaler_source(self, depth: int, width: int) -> str:
        """'anchor', 'learned', ... for stored sizes; 'derived from d{L}_w{D}' otherwise."""
        key = size_key(depth, width)
        if key in self.scaler_info:
            return self.scaler_info[key]["source"]
        return f"derived from {size_key(*self.config.nearest_anchor(depth, width))}"

    # materialization -------------------------------------------------------------------------

    def forward(self, depth: int, width: int, scalers: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Differentiable materialization (what pre-training calls each step)."""
        if scalers is None:
            scalers = self.scalers_for(depth, width)
        return materialize_state_dict(dict(self.cores.items()), scalers, self.config)

    @torch.no_grad()
    def state_dict_for(self, depth: int, width: int, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The timm state dict of (depth, width), detached and contiguous."""
        state = self.forward(depth, width)
        return {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in state.items()}

    def materialize(self, depth: int, width: int, dtype: torch.dtype | None = None, **model_kwargs: Any) -> nn.Module:
        """A plain timm ``VisionTransformer`` of this size with the template's weights.

        ``model_kwargs`` go to timm (``num_classes``, ``in_chans``, ``drop_path_rate``, ...);
        timm's own pretrained loader adapts the classifier and input channels when they change.
        """
        from timm.models import build_model_with_cfg, load_pretrained
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        args = {**vit_args(self.config, depth, width), **model_kwargs}
        _check_model_kwargs(self.config, depth, width, args)
        pretrained_cfg = timm_pretrained_cfg(self.config)
        model = build_model_with_cfg(VisionTransformer, "sweet_vit", pretrained=False, pretrained_cfg=dict(pretrained_cfg), **args)
        state = self.state_dict_for(depth, width, dtype=torch.float32)
        load_pretrained(
            model, {**pretrained_cfg, "architecture": "sweet_vit", "state_dict": state},
            num_classes=model.num_classes, in_chans=args["in_chans"], filter_fn=checkpoint_filter_fn,
        )
        model._model_args = {k: v for k, v in args.items() if k not in ("drop_rate", "drop_path_rate")}
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    def num_scaler_params(self, depth: int, width: int) -> int:
        return sum(math.prod(s) for s in scaler_shapes(self.config, depth, width).values())

    def num_template_params(self) -> int:
        return sum(p.numel() for p in self.cores.values())

    def extra_repr(self) -> str:
        c = self.config
        return f"ranks={c.ranks}, head_dim={c.head_dim}, anchors={list(c.anchors)}, stored_sizes={self.sizes}"

    # hub: see hub.py for the file format ------------------------------------------------------

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

        Same signature as ``PyTorchModelHubMixin.save_pretrained``; unlike the mixin it never
        deletes the previous config.json first, so a failed save leaves the old template intact.
        """
        from .hub import save_template

        save_template(self, save_directory)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory) -> None:
        from .hub import save_template

        save_template(self, save_directory)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> SweetTemplate:
        """Load a template from a local folder or a Hub repo id (``org/name``).

        Same arguments as every ``from_pretrained`` of the HF ecosystem. Unlike the generic
        ``PyTorchModelHubMixin`` loader this one is strict: a missing tensor, a shape that
        does not match config.json, or an unknown format version is an error naming the file.
        """
        from .hub import load_template

        return load_template(
            cls, str(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir,
            force_download=force_download, token=token, local_files_only=local_files_only,
            map_location=map_location,
        )

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token, **kwargs):
        return cls.from_pretrained(
            model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token, map_location=kwargs.get("map_location", "cpu"),
        )

    def generate_model_card(self, *args, **kwargs):
        from .hub import render_model_card

        return render_model_card(self, **kwargs)


def _check_model_kwargs(cfg: TemplateConfig, depth: int, width: int, args: Mapping[str, Any]) -> None:
    """Refuse timm arguments that contradict the template's architecture."""
    fixed = {"embed_dim": width, "depth": depth, "num_heads": width // cfg.head_dim, "patch_size": cfg.patch_size, "mlp_ratio": 4.0}
    for name, value in fixed.items():
        if args.get(name) != value:
            raise SizeError(
                f"{name}={args.get(name)!r} contradicts the template (expected {value}); set the size with "
                f"depth=/width= and leave {name} to the template (head_dim={cfg.head_dim}, mlp_ratio=4)."
            )
