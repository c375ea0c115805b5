"""Fit a weight template to an existing ViT checkpoint: read the source, decompose, refine.

A plain timm ``VisionTransformer`` of depth L and width D is turned into template tensors and
the scalers of its own size (the layout of :mod:`sweet_hub.tucker`) in two steps:

1. Higher-order SVD: U and V are the leading left singular vectors of everything the template
   maps through them (the rows of the 12L blocks plus the patch/pos embeddings, class token,
   biases and norms for U; the columns of the blocks plus the classifier for V), X the leading
   singular vectors of the blocks' layer axis, and the cores are the source projected onto
   them. At full rank (r1 = 12L, r2 = r3 = D, vector_rank = 13L) this is exact.
2. Refinement by gradient (Adam) on the sum of relative squared reconstruction errors of every
   tensor kind, which at reduced ranks improves on the truncated HOSVD (not optimal in the
   least-squares sense, and its per-kind weighting is only a guess).

What the Tucker form cannot represent (another MLP ratio, no qkv bias, layer scale, QK norm,
register tokens, no class token, an fc_norm head, non-ViT modules) is refused with
:class:`~sweet_hub.errors.FitError` naming the difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .config import BLOCKS_PER_LAYER, VECTORS_PER_LAYER, TemplateConfig, format_size
from .errors import FitError
from .tucker import materialize_state_dict

__all__ = ["SourceViT", "decompose", "full_ranks", "read_source", "reconstruction_errors", "refine"]

#: per-layer tensors of a timm ViT block, in the order the template stacks their vectors
_LAYER_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
               "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")
_GLOBAL_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias")
#: tensor kinds of the reconstruction report, by the key suffix that identifies them
_KINDS = {
    "attn.qkv.weight": "qkv", "attn.proj.weight": "proj", "mlp.fc1.weight": "fc1", "mlp.fc2.weight": "fc2",
    "patch_embed.proj.weight": "patch_embed", "pos_embed": "pos_embed", "cls_token": "cls_token", "head.weight": "head",
}


@dataclass
class SourceViT:
    """A checkpoint to fit: its geometry and its float64 state dict (timm key names)."""

    depth: int
    width: int
    num_heads: int
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    global_pool: str
    state: dict[str, Tensor]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    name: str = "state dict"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return format_size(self.depth, self.width)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


def _refuse(name: str, what: str, has: Any, needs: Any) -> FitError:
    return FitError(f"Cannot fit {name}: {what} differs: the source has {has}, a SWEET template needs {needs}.")


def _check_modules(model: nn.Module, name: str) -> None:
    """Refuse timm ViT options the Tucker layout has no place for."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Block

    def is_identity(module: Any) -> bool:
        return module is None or isinstance(module, nn.Identity)

    if getattr(model, "cls_token", None) is None:
        raise _refuse(name, "the class token", "none (class_token=False)", "one class token")
    if getattr(model, "reg_token", None) is not None or getattr(model, "num_prefix_tokens", 1) != 1:
        raise _refuse(name, "the prefix tokens", f"{model.num_prefix_tokens} (register tokens)", "exactly the class token")
    if getattr(model, "no_embed_class", False):
        raise _refuse(name, "the position embedding", "no embedding for the class token (no_embed_class=True)",
                      "one position per patch plus the class token")
    for attr, what in (("norm_pre", "a pre-norm (norm_pre)"), ("fc_norm", "a norm after pooling (fc_norm)"),
                       ("attn_pool", "attention pooling")):
        if not is_identity(getattr(model, attr, None)):
            raise _refuse(name, "the head", what, "the final norm on every token, then pooling")
    if not isinstance(model.norm, nn.LayerNorm):
        raise _refuse(name, "the final norm", type(model.norm).__name__, "LayerNorm")
    for index, block in enumerate(model.blocks):
        where = f"block {index}"
        if type(block) is not Block:
            raise _refuse(name, f"{where}", type(block).__name__, "timm's standard pre-norm Block")
        if not isinstance(block.mlp, Mlp) or not isinstance(block.mlp.act, nn.GELU):
            raise _refuse(name, f"the MLP of {where}", f"{type(block.mlp).__name__} with {type(getattr(block.mlp, 'act', None)).__name__}",
                          "Mlp with GELU")
        if not is_identity(block.mlp.norm):
            raise _refuse(name, f"the MLP of {where}", "a norm inside the MLP", "none")
        if not (is_identity(block.ls1) and is_identity(block.ls2)):
            raise _refuse(name, f"{where}", "layer scale (init_values)", "no layer scale")
        if not (is_identity(block.attn.q_norm) and is_identity(block.attn.k_norm)):
            raise _refuse(name, f"the attention of {where}", "QK norm (qk_norm=True)", "none")
        if not is_identity(getattr(block.attn, "norm", None)):
            raise _refuse(name, f"the attention of {where}", "a norm before the projection (scale_attn_norm)", "none")
        for norm in (block.norm1, block.norm2):
            if not isinstance(norm, nn.LayerNorm):
                raise _refuse(name, f"the norms of {where}", type(norm).__name__, "LayerNorm")


def read_source(
    source: nn.Module | Mapping[str, Tensor],
    num_heads: int | None = None,
    global_pool: str | None = None,
    name: str | None = None,
) -> SourceViT:
    """Check a timm ``VisionTransformer`` (or its state dict) and read what fitting needs.

    A state dict does not record the number of heads or the pooling, so pass ``num_heads``
    (and ``global_pool``, default 'token') with one; a model gives both.
    """
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    if isinstance(source, nn.Module):
        from timm.models.vision_transformer import VisionTransformer

        name = name or getattr(source, "pretrained_cfg", {}).get("architecture") or type(source).__name__
        if not isinstance(source, VisionTransformer):
            raise FitError(f"Cannot fit {name}: it is a {type(source).__name__}, not a timm VisionTransformer; sweet-hub fits plain "
                           f"ViTs (timm.models.vision_transformer.VisionTransformer, e.g. vit_small_patch16_224).")
        _check_modules(source, name)
        heads = {block.attn.num_heads for block in source.blocks}
        if len(heads) != 1:
            raise _refuse(name, "the number of heads", f"different counts per block ({sorted(heads)})", "the same in every block")
        num_heads = heads.pop() if num_heads is None else num_heads
        global_pool = global_pool or source.global_pool
        cfg = getattr(source, "pretrained_cfg", None) or {}
        mean, std = tuple(cfg.get("mean", ())), tuple(cfg.get("std", ()))
        state = source.state_dict()
    else:
        name = name or "state dict"
        state = dict(source)
        if num_heads is None:
            raise FitError(f"Cannot fit {name}: a state dict does not record the number of attention heads; pass num_heads= "
                           f"(or the model itself, or --model NAME on the command line).")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise FitError(f"Cannot fit {name}: entries {bad[:3]} are not tensors; pass a model or a state dict of tensors.")
    state = {k: v.detach().to("cpu", torch.float64) for k, v in state.items()}
    for key in ("reg_token", "fc_norm.weight", "norm_pre.weight", "attn_pool.latent"):
        if key in state:
            raise _refuse(name, "the architecture", f"'{key}'", "a plain ViT (class token, final norm, no extra modules)")
    missing = [k for k in (*_GLOBAL_KEYS, "blocks.0.attn.qkv.weight") if k not in state]
    if missing:
        raise FitError(f"Cannot fit {name}: the state dict has no {missing}; it is not a timm VisionTransformer checkpoint "
                       f"(keys start with {sorted(state)[:4]}).")
    if any(".ls1." in k or ".q_norm." in k for k in state):
        raise _refuse(name, "the blocks", "layer scale or QK norm tensors", "plain pre-norm blocks")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    width = state["pos_embed"].shape[-1]
    patch = state["patch_embed.proj.weight"]
    if patch.ndim != 4 or patch.shape[2] != patch.shape[3]:
        raise _refuse(name, "the patch embedding", f"shape {tuple(patch.shape)}", "a square convolution (D, C, p, p)")
    in_chans, patch_size = patch.shape[1], patch.shape[2]
    num_patches = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise _refuse(name, "the position embedding", f"{num_patches + 1} positions", "a square grid of patches plus the class token")
    for layer in range(depth):
        p = f"blocks.{layer}."
        absent = [k for k in _LAYER_KEYS if p + k not in state]
        if "attn.qkv.bias" in absent:
            raise _refuse(name, f"block {layer}", "no qkv bias (qkv_bias=False)", "qkv_bias=True")
        if absent:
            raise FitError(f"Cannot fit {name}: block {layer} has no {absent}; it is not a timm ViT block.")
        hidden = state[p + "mlp.fc1.weight"].shape[0]
        if hidden != 4 * width:
            raise _refuse(name, f"the MLP ratio of block {layer}", f"{hidden / width:g} (hidden {hidden})",
                          f"4 (hidden {4 * width}): the Tucker form stacks 12 width x width blocks per layer")
    if width % num_heads:
        raise FitError(f"Cannot fit {name}: width {width} is not divisible by num_heads={num_heads}.")
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    if num_classes and state["head.weight"].shape[1] != width:
        raise _refuse(name, "the classifier", f"input size {state['head.weight'].shape[1]}", f"the width {width}")
    global_pool = global_pool or "token"
    if global_pool not in ("token", "avg"):
        raise _refuse(name, "the pooling", f"global_pool={global_pool!r}", "'token' or 'avg'")
    return SourceViT(depth=depth, width=width, num_heads=num_heads, img_size=grid * patch_size, patch_size=patch_size,
                     in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, state=state, mean=mean, std=std,
                     name=name)


def full_ranks(source: SourceViT) -> tuple[tuple[int, int, int], int]:
    """Ranks at which the template reproduces the source exactly: (12L, D, D) and 13L vectors."""
    return (BLOCKS_PER_LAYER * source.depth, source.width, source.width), VECTORS_PER_LAYER * source.depth


# ---------------------------------------------------------------------------------------------
# stacking: the inverse of tucker.materialize_state_dict's naming


def _stack(source: SourceViT) -> tuple[Tensor, Tensor]:
    """Blocks (12L, D, D) and per-layer vectors (L, 13, D), norm weights as offsets from 1."""
    s, depth, width = source.state, source.depth, source.width
    blocks, vectors = [], []
    for layer in range(depth):
        p = f"blocks.{layer}."
        fc2 = s[p + "mlp.fc2.weight"].reshape(width, 4, width).permute(1, 0, 2)  # column blocks
        blocks.append(torch.cat([s[p + "attn.qkv.weight"].reshape(3, width, width), s[p + "attn.proj.weight"][None],
                                 s[p + "mlp.fc1.weight"].reshape(4, width, width), fc2]))
        vectors.append(torch.cat([(s[p + "norm1.weight"] - 1)[None], s[p + "norm1.bias"][None], s[p + "attn.qkv.bias"].reshape(3, width),
                                  s[p + "attn.proj.bias"][None], (s[p + "norm2.weight"] - 1)[None], s[p + "norm2.bias"][None],
                                  s[p + "mlp.fc1.bias"].reshape(4, width), s[p + "mlp.fc2.bias"][None]]))
    return torch.cat(blocks), torch.stack(vectors)


def _leading_vectors(groups: list[Tensor], rank: int) -> Tensor:
    """Orthonormal (D, rank) basis of the leading left singular vectors of the column groups,
    each group scaled to unit Frobenius norm so one kind of tensor cannot crowd out the others
    (zero-padded past the groups' rank)."""
    parts = [g / g.norm() for g in groups if g.norm() > 0]
    left, _, _ = torch.linalg.svd(torch.cat(parts, dim=1), full_matrices=False)
    basis = left[:, :rank]
    if basis.shape[1] < rank:  # fewer directions than asked: complete with an orthonormal remainder
        extra = torch.linalg.qr(torch.cat([basis, torch.randn(basis.shape[0], rank - basis.shape[1], dtype=basis.dtype,
                                                                generator=torch.Generator().manual_seed(0))], 1))[0]
        basis = extra[:, :rank]
    return basis


def decompose(source: SourceViT, cfg: TemplateConfig) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Template cores and source-size scalers from a (truncated) higher-order SVD of ``source``.

    Orthonormal bases are scaled to the template's parametrization (unit-variance factors, the
    constants of :func:`~sweet_hub.tucker.materialize_state_dict`); the cores absorb the rest.
    """
    r1, r2, r3 = cfg.ranks
    rv = cfg.vector_rank
    depth, width, s = source.depth, source.width, source.state
    if r2 > width or r3 > width or r1 > BLOCKS_PER_LAYER * depth:
        (f1, f2, f3), _ = full_ranks(source)
        raise FitError(f"ranks {list(cfg.ranks)} exceed what a {source.size} source has: at most [{f1}, {f2}, {f3}] "
                       f"(12 x depth, width, width).")
    blocks, vectors = _stack(source)
    n = blocks.shape[0]
    u_groups = [blocks.permute(1, 0, 2).reshape(width, -1), vectors.reshape(-1, width).T, s["patch_embed.proj.weight"].reshape(width, -1),
                s["pos_embed"][0].T, s["cls_token"].reshape(width, 1), s["patch_embed.proj.bias"][:, None],
                (s["norm.weight"] - 1)[:, None], s["norm.bias"][:, None]]
    v_groups = [blocks.permute(2, 0, 1).reshape(width, -1)]
    if source.num_classes:
        v_groups.append(s["head.weight"].T)
    U = _leading_vectors(u_groups, r2)
    V = _leading_vectors(v_groups, r3)
    X = _leading_vectors([blocks.reshape(n, -1)], r1)
    projected = U.T @ blocks @ V  # (12L, r2, r3)
    G = torch.einsum("nab,nk->kab", projected, X)

    root_d = math.sqrt(width)
    c_d = (width * r1 * r2 * r3) ** -0.5
    scalers = {"X": (X * math.sqrt(n)).reshape(depth, BLOCKS_PER_LAYER, r1), "U": U * root_d, "V": V * root_d}
    cores = {"G": G / (c_d * math.sqrt(n) * width)}

    # per-layer vectors: (X_vec @ G_vec) = (vectors @ U) * sqrt(rv r2 / D), factored by SVD
    m = VECTORS_PER_LAYER * depth
    target = vectors.reshape(m, width) @ U * math.sqrt(rv * r2 / width)
    left, sing, right = torch.linalg.svd(target, full_matrices=False)
    k = min(rv, sing.shape[0])
    x_vec = torch.zeros(m, rv, dtype=target.dtype)
    g_vec = torch.zeros(rv, r2, dtype=target.dtype)
    x_vec[:, :k] = left[:, :k] * math.sqrt(m)
    g_vec[:k] = sing[:k, None] * right[:k] / math.sqrt(m)
    scalers["X_vec"] = x_vec.reshape(depth, VECTORS_PER_LAYER, rv)
    cores["G_vec"] = g_vec

    to_u = math.sqrt(r2 / width)  # w = U_s @ c / sqrt(r2)  ->  c = U.T @ w * sqrt(r2 / D)
    patch = s["patch_embed.proj.weight"]
    cores["patch_weight"] = (U.T @ patch.reshape(width, -1) * to_u * math.sqrt(patch[0].numel())).reshape(r2, *patch.shape[1:])
    cores["patch_bias"] = U.T @ s["patch_embed.proj.bias"] * to_u
    cores["pos_embed"] = s["pos_embed"][0] @ U * to_u
    cores["cls_token"] = U.T @ s["cls_token"].reshape(width) * to_u
    cores["norm_weight"] = U.T @ (s["norm.weight"] - 1) * to_u
    cores["norm_bias"] = U.T @ s["norm.bias"] * to_u
    if cfg.num_classes:
        cores["head_weight"] = s["head.weight"] @ V * math.sqrt(r3)
        cores["head_bias"] = s["head.bias"].clone()
    return {k: v.float() for k, v in cores.items()}, {k: v.float() for k, v in scalers.items()}


# ---------------------------------------------------------------------------------------------
# reconstruction error and refinement


def _kind(key: str) -> str:
    for suffix, kind in _KINDS.items():
        if key.endswith(suffix):
            return kind
    return "norms_and_biases"


def _error_terms(rebuilt: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """(squared error, squared norm) summed per tensor kind."""
    terms: dict[str, list[Tensor]] = {}
    for key, want in target.items():
        if key not in rebuilt:
            continue
        kind = _kind(key)
        err, norm = terms.setdefault(kind, [torch.zeros(()), torch.zeros(())])
        terms[kind] = [err + (rebuilt[key].double() - want).pow(2).sum(), norm + want.pow(2).sum()]
    return {k: (e, n) for k, (e, n) in terms.items()}


def reconstruction_errors(rebuilt: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, float]:
    """Relative error ||rebuilt - target|| / ||target|| per tensor kind (qkv, proj, fc1, ...)."""
    with torch.no_grad():
        return {k: math.sqrt(e.item() / max(n.item(), 1e-30)) for k, (e, n) in _error_terms(rebuilt, target).items()}


def refine(
    cores: dict[str, Tensor],
    scalers: dict[str, Tensor],
    source: SourceViT,
    cfg: TemplateConfig,
    steps: int,
    lr: float = 1e-3,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[float]]:
    """Adam on the mean relative squared reconstruction error over tensor kinds; returns the
    refined cores, scalers and the loss per step. The best step's tensors are kept."""
    from tqdm.auto import tqdm

    params = {**{f"core.{k}": nn.Parameter(v.clone()) for k, v in cores.items()},
              **{f"scaler.{k}": nn.Parameter(v.clone()) for k, v in scalers.items()}}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    target = {k: v for k, v in source.state.items() if k.startswith(("blocks.", "head.", *_GLOBAL_KEYS))}
    losses: list[float] = []
    best = (math.inf, cores, scalers)
    for step in tqdm(range(steps + 1), desc=f"refine {source.size}", disable=not progress, dynamic_ncols=True):
        split = ({k[5:]: v for k, v in params.items() if k.startswith("core.")}, {k[7:]: v for k, v in params.items() if k.startswith("scaler.")})
        rebuilt = materialize_state_dict(split[0], split[1], cfg)
        terms = _error_terms(rebuilt, target)
        loss = torch.stack([e / n.clamp_min(1e-30) for e, n in terms.values()]).mean()
        losses.append(loss.item())
        if losses[-1] < best[0]:
            best = (losses[-1], {k: v.detach().clone() for k, v in split[0].items()}, {k: v.detach().clone() for k, v in split[1].items()})
        if callback is not None:
            callback(step, losses[-1])
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
    return best[1], best[2], losses
