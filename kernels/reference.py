"""Reference BlindSight attention in PyTorch: any mix of per-head categories, GQA, causal or bidirectional
images, sliding window. Queries are processed in chunks and accumulated in float32 (float64 inputs stay
float64), so the working memory is O(heads x chunk x S), never S x S. The chunk masks depend only on the layout:
they are built once per prompt as additive biases and kept for its later layers in ``meta.blocks``, up to that
cache's budget (:class:`~bsight.kernels.sparsity.metadata.BlockCache`, 512 MiB a prompt; past it they are rebuilt
per layer). This is the ground truth the Triton kernel is tested against, and the CPU path of method ``blindsight``.
"""

from __future__ import annotations

import math

import torch

from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.masks import and_masks, base_mask, category_mask
from bsight.kernels.sparsity.metadata import LayoutMeta


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta) -> tuple[int, int, int, int]:
    """``(Hq, Hkv, S, D)`` of one unpadded sequence, or a clear error naming the mismatch."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [heads, S, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    Hq, S, D = q.shape
    Hkv = k.shape[0]
    if k.shape != v.shape or k.shape[1:] != (S, D):
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [Hkv, {S}, {D}]")
    if Hq % Hkv:
        raise ValueError(f"{Hq} query heads are not a multiple of {Hkv} key/value heads")
    if S != meta.length:
        raise ValueError(f"sequence length {S} does not match the layout's {meta.length}")
    return Hq, Hkv, S, D


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: LayoutMeta,
    categories: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """``q [Hq, S, D]``, ``k, v [Hkv, S, D]``, ``categories [Hq]`` -> ``[Hq, S, D]`` in ``q.dtype``."""
    Hq, Hkv, S, D = check_shapes(q, k, v, meta)
    if categories.numel() != Hq:
        raise ValueError(f"{categories.numel()} head categories for {Hq} query heads")
    G = Hq // Hkv
    acc = accumulation_dtype(q.dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    # one [chunk, keys] mask per distinct category, shared by all heads of that category, as an additive bias
    # (0 kept, -inf hidden: bit for bit what masked_fill gives, much faster); it depends only on the layout, so
    # it is built once per prompt (meta.blocks) and reused by every layer
    cats = categories.detach().to("cpu", torch.int64).tolist()
    distinct = sorted(set(cats))
    kf, vf = k.to(acc), v.to(acc)
    out = torch.empty(Hq, S, D, dtype=acc, device=q.device)
    for q0 in range(0, S, chunk_size):
        q1 = min(S, q0 + chunk_size)
        # causal keys end at q1; a bidirectional image may reach forward to its end
        kend = S if meta.has_bidirectional else q1
        kstart = 0 if window is None else max(0, q0 - window + 1)
        bias = {
            c: meta.blocks.get(
                ("reference", c, window, q0, q1, kstart, kend), lambda c=c: _bias(meta, c, window, q0, q1, kstart, kend)
            )
            for c in distinct
        }
        s = torch.einsum("hgcd,hkd->hgck", q[:, q0:q1].to(acc).view(Hkv, G, q1 - q0, D), kf[:, kstart:kend]).mul_(scale)
        if len(distinct) == 1:
            s.add_(bias[distinct[0]])
        else:
            heads = s.view(Hq, q1 - q0, kend - kstart)
            for h, c in enumerate(cats):
                heads[h].add_(bias[c])
        p = torch.softmax(s, dim=-1)
        out[:, q0:q1] = torch.einsum("hgck,hkd->hgcd", p, vf[:, kstart:kend]).reshape(Hq, q1 - q0, D)
    return out.to(q.dtype)


def _bias(meta: LayoutMeta, category: int, window: int | None, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
    """float32 ``[q1 - q0, k1 - k0]``: 0 where a head of ``category`` keeps the pair (own mask and rule), -inf
    elsewhere."""
    mod = and_masks(base_mask(meta, window), category_mask(meta, Category.parse(category)))
    b = torch.zeros((), dtype=torch.long, device=meta.device)
    rows = torch.arange(q0, q1, device=meta.device)[:, None]
    cols = torch.arange(k0, k1, device=meta.device)[None, :]
    keep = mod(b, b, rows, cols)
    return torch.zeros(keep.shape, dtype=torch.float32, device=meta.device).masked_fill_(~keep, float("-inf"))
