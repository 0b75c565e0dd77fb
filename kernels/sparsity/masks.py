"""BlindSight's masks as small composable predicates, FlexAttention style.

A mask mod is ``f(b, h, q_idx, kv_idx) -> bool tensor``. The same functions serve three users:

* FlexAttention (``create_block_mask(mod, ...)``): called on scalar index tensors under vmap;
* the chunked reference attention: called on broadcast index tensors (``q[:, None]``, ``kv[None, :]``);
* tests: materialized into explicit boolean masks by :func:`materialize`.

They use only tensor indexing and element-wise ops, so they work in all three. The mask a head applies is
``base_mask & category_mask``: the model's own mask (causal, Gemma's bidirectional images, sliding window)
intersected with the category's rule. Category rules only ever remove image-to-image pairs: text queries
and text keys are always kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.metadata import LayoutMeta

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def and_masks(*mods: MaskMod) -> MaskMod:
    def mod(b, h, q, kv):
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out & m(b, h, q, kv)
        return out

    return mod


def or_masks(*mods: MaskMod) -> MaskMod:
    def mod(b, h, q, kv):
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out | m(b, h, q, kv)
        return out

    return mod


def causal(b, h, q, kv):
    return kv <= q


def bidirectional_images(meta: LayoutMeta) -> MaskMod:
    """Pairs inside one image's bidirectional region (Gemma 3); empty for causal models."""
    g = meta.bidir_group

    def mod(b, h, q, kv):
        return (g[q] == g[kv]) & (g[q] >= 0)

    return mod


def sliding_window(window: int) -> MaskMod:
    """Keys less than ``window`` positions back (transformers' ``kv > q - window``)."""
    if window < 1:
        raise ValueError(f"sliding window must be >= 1 token, got {window}")

    def mod(b, h, q, kv):
        return kv > q - window

    return mod


def base_mask(meta: LayoutMeta, window: int | None = None) -> MaskMod:
    """The model's own mask: causal, or bidirectional inside images, within a sliding window if any.

    The window applies after the bidirectional OR, as transformers composes Gemma 3's sliding layers:
    ``(causal | same bidirectional region) & kv > q - window``.
    """
    mod = or_masks(causal, bidirectional_images(meta)) if meta.has_bidirectional else causal
    return mod if window is None else and_masks(mod, sliding_window(window))


def _parts(meta: LayoutMeta, q: torch.Tensor, kv: torch.Tensor):
    sq, sk = meta.seg_id[q], meta.seg_id[kv]
    text_q, text_k = sq < 0, sk < 0
    same = (sq == sk) & ~text_q
    other_img = ~text_k & ~same
    return text_q | text_k, same, other_img, meta.is_sink[kv]


def category_mask(meta: LayoutMeta, category: Category | str | int) -> MaskMod:
    """The category's rule alone (intersect with :func:`base_mask` for the mask a head applies)."""
    cat = Category.parse(category)

    def mod(b, h, q, kv):
        always, same, other_img, sink_k = _parts(meta, q, kv)
        if cat is Category.DENSE:
            return always | same | other_img
        if cat is Category.SINK:
            return always | (same & (sink_k | (q == kv))) | (other_img & sink_k)
        if cat is Category.INTRA_IMAGE:
            return always | same
        return always | same | (other_img & sink_k)

    return mod


def head_category_mask(meta: LayoutMeta, categories: torch.Tensor) -> MaskMod:
    """Per-head rule: head ``h`` applies ``categories[h]`` (an int tensor of :class:`Category` values)."""
    cats = categories.to(device=meta.device, dtype=torch.int32)

    def mod(b, h, q, kv):
        always, same, other_img, sink_k = _parts(meta, q, kv)
        c = cats[h]
        own = torch.where(c == Category.SINK.value, sink_k | (q == kv), torch.ones_like(same))
        other = torch.where(
            c == Category.DENSE.value,
            torch.ones_like(sink_k),
            torch.where(c == Category.INTRA_IMAGE.value, torch.zeros_like(sink_k), sink_k),
        )
        return always | (same & own) | (other_img & other)

    return mod


def head_mask(meta: LayoutMeta, categories: torch.Tensor, window: int | None = None) -> MaskMod:
    """The full per-head mask: the model's own mask intersected with each head's category rule."""
    return and_masks(base_mask(meta, window), head_category_mask(meta, categories))


def materialize(
    mod: MaskMod, length: int, num_heads: int = 1, q_rows: torch.Tensor | None = None, device=None
) -> torch.Tensor:
    """Explicit boolean mask ``[num_heads, len(q_rows), length]`` (tests and small cases only)."""
    q = torch.arange(length, device=device) if q_rows is None else q_rows.to(device)
    kv = torch.arange(length, device=device)
    h = torch.arange(num_heads, device=device)
    b = torch.zeros((), dtype=torch.long, device=device)
    out = mod(b, h[:, None, None], q[None, :, None], kv[None, None, :])
    return out.expand(num_heads, q.numel(), length)
