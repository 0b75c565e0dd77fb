"""Reference BlindSight attention in PyTorch: any mix of per-head categories, GQA, causal or bidirectional
images, sliding window. Queries are processed in chunks with float32 accumulation, so peak memory is
O(heads x chunk x S), never S x S. This is the ground truth the Triton kernel is tested against, and the
CPU path of method ``blindsight``.
"""

from __future__ import annotations

import math

import torch

from bsight.harness.sparsity.masks import head_mask
from bsight.harness.sparsity.metadata import LayoutMeta


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
    Hq, S, D = q.shape
    Hkv = k.shape[0]
    if Hq % Hkv:
        raise ValueError(f"{Hq} query heads are not a multiple of {Hkv} key/value heads")
    if categories.numel() != Hq:
        raise ValueError(f"{categories.numel()} head categories for {Hq} query heads")
    if S != meta.length:
        raise ValueError(f"sequence length {S} does not match the layout's {meta.length}")
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    mod = head_mask(meta, categories, window)
    kf, vf = k.float(), v.float()
    out = torch.empty(Hq, S, D, dtype=torch.float32, device=q.device)
    heads = torch.arange(Hq, device=q.device)[:, None, None]
    b = torch.zeros((), dtype=torch.long, device=q.device)
    for q0 in range(0, S, chunk_size):
        q1 = min(S, q0 + chunk_size)
        # causal keys end at q1; a bidirectional image may reach forward to its end
        kend = S if meta.has_bidirectional else q1
        rows = torch.arange(q0, q1, device=q.device)[None, :, None]
        cols = torch.arange(kend, device=q.device)[None, None, :]
        keep = mod(b, heads, rows, cols).expand(Hq, q1 - q0, kend).reshape(Hkv, G, q1 - q0, kend)
        s = torch.einsum("hgcd,hkd->hgck", q[:, q0:q1].float().reshape(Hkv, G, q1 - q0, D), kf[:, :kend]) * scale
        s = s.masked_fill(~keep, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out[:, q0:q1] = torch.einsum("hgck,hkd->hgcd", p, vf[:, :kend]).reshape(Hq, q1 - q0, D)
    return out.to(q.dtype)
