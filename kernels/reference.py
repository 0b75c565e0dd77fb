"""Reference BlindSight attention in PyTorch: any mix of per-head categories, GQA, causal or bidirectional
images, sliding window. Queries are processed in chunks and accumulated in float32 (float64 inputs stay
float64), so peak memory is O(heads x chunk x S), never S x S. This is the ground truth the Triton kernel is
tested against, and the CPU path of method ``blindsight``.
"""

from __future__ import annotations

import math

import torch

from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.masks import MaskMod, and_masks, base_mask, category_mask
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
    # one [chunk, keys] mask per distinct category, shared by all heads of that category
    cats = categories.detach().to("cpu", torch.int64)
    distinct = sorted(set(cats.tolist()))
    mods: list[MaskMod] = [and_masks(base_mask(meta, window), category_mask(meta, Category.parse(c))) for c in distinct]
    head_to_mod = torch.tensor([distinct.index(c) for c in cats.tolist()], device=q.device)
    kf, vf = k.to(acc), v.to(acc)
    out = torch.empty(Hq, S, D, dtype=acc, device=q.device)
    b = torch.zeros((), dtype=torch.long, device=q.device)
    h0 = torch.zeros((), dtype=torch.long, device=q.device)
    for q0 in range(0, S, chunk_size):
        q1 = min(S, q0 + chunk_size)
        # causal keys end at q1; a bidirectional image may reach forward to its end
        kend = S if meta.has_bidirectional else q1
        kstart = 0 if window is None else max(0, q0 - window + 1)
        rows = torch.arange(q0, q1, device=q.device)[:, None]
        cols = torch.arange(kstart, kend, device=q.device)[None, :]
        keep = torch.stack([m(b, h0, rows, cols) for m in mods])[head_to_mod].view(Hkv, G, q1 - q0, kend - kstart)
        s = torch.einsum("hgcd,hkd->hgck", q[:, q0:q1].to(acc).view(Hkv, G, q1 - q0, D), kf[:, kstart:kend]) * scale
        s.masked_fill_(~keep, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out[:, q0:q1] = torch.einsum("hgck,hkd->hgcd", p, vf[:, kstart:kend]).reshape(Hq, q1 - q0, D)
    return out.to(q.dtype)
