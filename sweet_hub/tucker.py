"""The SWEET method as pure tensor functions: initialization, materialization, derived scalers.

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
scaling trains the template on the same resampling, for the widths it draws (by default the
range between the smallest and the largest anchor width); sizes outside what a template was
trained on are extrapolations, and its model card says which sizes were measured.

Everything here works on plain dicts of tensors, so pre-training can call it inside the
autograd graph; :class:`~sweet_hub.template.SweetTemplate` holds the tensors as parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import BLOCKS_PER_LAYER, VECTORS_PER_LAYER, TemplateConfig, core_shapes, scaler_shapes

__all__ = [
    "DERIVATIONS",
    "derive_scalers",
    "init_cores",
    "init_scalers",
    "materialize_flops",
    "materialize_state_dict",
    "resample_rows",
    "select_layers",
]

# Blocks and vectors that write into the residual stream (attn proj, fc2): the ones derived
# scalers shrink when a model is made deeper than its source anchor.
_RESIDUAL_BLOCKS = (3, 8, 9, 10, 11)
_RESIDUAL_VECTORS = (5, 12)
_NORM_WEIGHT_VECTORS = (0, 6)
#: how :func:`derive_scalers` maps an anchor's scalers to another size
DERIVATIONS = ("resample", "select")
#: relative spread of the read weights of duplicated channels (select, wider than the source)
_DUPLICATE_SPREAD = 0.25


# ---------------------------------------------------------------------------------------------
# shapes and initialization


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
    """All blocks U @ (sum_a X[l, b, a] G[a]) @ V.T as one (L, 12, D, D) tensor, cheapest order.

    Every contraction is a plain 2-D or batched GEMM on contiguous operands (einsum's
    permutations cost 3x the FLOP bound at 10x512), and constant factors belong in X, the
    smallest operand, not in the (L, 12, D, D) result.
    """
    depth, n_types, r1 = X.shape
    _, r2, r3 = G.shape
    width = U.shape[0]
    costs = _block_contraction_costs(depth * n_types, r1, r2, r3, width)
    order = min(costs, key=costs.__getitem__)
    if order == "map_then_mix":
        mapped = U @ (G @ V.T) if r2 <= r3 else (U @ G) @ V.T  # (r1, D, D), contiguous: U @ G_a @ V.T per slice
        mixed = X.reshape(depth * n_types, r1) @ mapped.reshape(r1, width * width)
        return mixed.reshape(depth, n_types, width, width)
    mixed = (X.reshape(depth * n_types, r1) @ G.reshape(r1, r2 * r3)).reshape(depth, n_types, r2, r3)
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

    blocks = _tucker_blocks(X * (width * r1 * r2 * r3) ** -0.5, cores["G"], U, V)  # (L, 12, D, D)
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


def select_layers(src_depth: int, depth: int) -> list[int]:
    """Evenly spaced layers ``linspace(0, L_src - 1, depth)`` (first and last kept; repeats when deeper)."""
    return torch.linspace(0, src_depth - 1, depth).round().long().tolist()


def _select_width(U: Tensor, V: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Channel selection of U and V for :func:`derive_scalers` with ``derivation='select'``.

    Narrower: the first ``width`` channels (whole heads, as weight selection does), with V scaled
    by sqrt(width / D_src) so the materialized weights are exactly the selected source weights
    (materialization carries a 1/sqrt(width) factor). The MLP's hidden layer is four D x D blocks
    here, so it keeps the first ``width`` units of each quarter, where slicing a timm checkpoint
    keeps the first 4 * width. Wider: channel j copies channel
    j mod D_src, with V scaled by sqrt(D_src / width), which reproduces the source function
    exactly when width is a multiple of D_src (every sum over duplicated inputs is divided by the
    number of copies). The copies of a channel read with weights spread by +-25% around that
    (summing to the same total), so they do not receive identical gradients and can diverge in
    fine-tuning (Net2Net's symmetry breaking).
    """
    src_width = U.shape[0]
    if width <= src_width:
        return U[:width], V[:width] * math.sqrt(width / src_width)
    index = torch.arange(width) % src_width
    copies = torch.bincount(index, minlength=src_width)
    rank_in_copies = torch.arange(width) // src_width
    spread = torch.zeros(width, dtype=V.dtype, device=V.device)
    many = copies[index] > 1
    m = copies[index][many].to(V.dtype)
    spread[many] = _DUPLICATE_SPREAD * (2 * rank_in_copies[many].to(V.dtype) / (m - 1) - 1)
    return U[index], V[index] * math.sqrt(src_width / width) * (1 + spread).unsqueeze(1)


def derive_scalers(
    source: Mapping[str, Tensor],
    depth: int,
    width: int,
    depth_rescale: bool = True,
    width_rescale: bool = False,
    derivation: str = "resample",
) -> dict[str, Tensor]:
    """Scalers for (depth, width) from the scalers of another size (zero-cost, differentiable).

    ``derivation='resample'`` (templates pre-trained by SWEET): X is linearly resampled along
    depth and U, V along width, assuming channels and layers vary smoothly along those axes,
    which width-wise stochastic scaling trains for. Two optional corrections keep the
    materialized function close to the source's:

    - depth_rescale: a model k times deeper applies each residual update ~k times, so the
      blocks and biases that write into the residual stream (attn.proj, mlp.fc2) are scaled by
      L_source / L (the ODE view of residual networks).
    - width_rescale: V.T @ x sums over D channels, so it grows ~D / D_source on a resampled
      stream; V is scaled by sqrt(D_source / D) to cancel that against the 1/sqrt(D) factor.
      Off by default: on the bundled template it cost 1.1-1.6 k-NN points on average over 6 unseen
      sizes (benchmarks/derived_scalers.py), while depth_rescale was neutral to +1.9 (10 x 512).

    ``derivation='select'`` (templates fitted to a checkpoint, :meth:`SweetTemplate.fit`, whose
    channels and layers have no order): layers ``linspace(0, L_src - 1, L)`` and channels
    selected or duplicated (:func:`_select_width`); smaller sizes are then exactly weight
    selection from the source. depth_rescale applies only when layers are repeated (deeper than
    the source); width_rescale is not used (the selection carries its own exact scale).
    """
    if derivation not in DERIVATIONS:
        raise ValueError(f"derivation must be one of {DERIVATIONS}, got {derivation!r}")
    src_depth, src_width = source["X"].shape[0], source["U"].shape[0]
    if derivation == "select":
        layers = select_layers(src_depth, depth)
        X, X_vec = source["X"][layers], source["X_vec"][layers]
        U, V = _select_width(source["U"], source["V"], width)
        depth_rescale = depth_rescale and depth > src_depth
        width_rescale = False
    else:
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
