"""Exact attention FLOPs of each head category for a prompt layout, and the model-level reduction.

Under the model's own mask every query sees one contiguous key interval ``[lo(q), hi(q)]``: ``lo`` is the
sliding-window edge (or 0), ``hi`` is the query itself, or the end of its bidirectional region. Each category
keeps, inside that interval, a union of key classes (text, own image, sinks) that prefix sums over the
sequence count in O(1) per query, so counting is O(S) and vectorized: never an S x S mask. Clipping the interval
to one key block counts a tile's kept pairs the same way (:func:`block_pair_counts`), which is what FlexAttention's
block masks need. One kept query-key pair costs ``4 * head_dim`` FLOPs (2 for QK^T, 2 for PV), per query head.

Hybrid models: only softmax-attention layers count (``kinds``, see :mod:`bsight.kernels.sparsity.layerkinds`);
a linear-attention / Mamba layer's row of kept pairs is zero, so it adds nothing to dense or sparse FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.layerkinds import is_softmax, resolve
from bsight.kernels.sparsity.layout import PromptLayout
from bsight.kernels.sparsity.metadata import LayoutMeta


class KeptPairs(NamedTuple):
    """Kept query-key pairs of one attention head per category; index with a :class:`Category`."""

    dense: int
    sink: int
    intra_image: int
    intra_image_sink: int


def pair_counts(layout: PromptLayout | LayoutMeta, window: int | None = None) -> KeptPairs:
    """Exact kept pairs per category for one prompt (one head, one layer with this sliding window)."""
    meta = layout if isinstance(layout, LayoutMeta) else LayoutMeta.build(layout.unpadded())
    rows = torch.arange(meta.length, device=meta.device, dtype=torch.int64)
    keys = torch.tensor([0, meta.length - 1], device=meta.device, dtype=torch.int64)
    kept = kept_in_keys(meta, rows, keys[0], keys[1], window)
    return KeptPairs(*(int(c) for c in kept.sum(dim=1)))


def kept_in_keys(
    meta: LayoutMeta, rows: torch.Tensor, key_lo: torch.Tensor, key_hi: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """``int64 [4, *shape]``: per category, how many keys in ``[key_lo, key_hi]`` query ``rows`` keeps (the three
    broadcast to ``shape``). With the whole sequence as key range this counts a row's kept pairs; with one key block
    per column it counts a block pair's (:func:`block_pair_counts`)."""
    if window is not None and window < 1:
        raise ValueError(f"sliding window must be >= 1 token, got {window}")
    S = meta.length
    pos = rows.long()
    lo = torch.zeros_like(pos) if window is None else (pos - window + 1).clamp_min(0)
    seg = meta.seg_id.long()[pos]
    group = meta.bidir_group.long()[pos]
    hi = pos if meta.num_images == 0 else torch.where(group >= 0, meta.bidir_end.long()[group.clamp_min(0)] - 1, pos)
    lo, hi = torch.maximum(lo, key_lo), torch.minimum(hi, key_hi)
    dense = (hi - lo + 1).clamp_min(0)
    if meta.num_images == 0:
        return dense.expand(len(Category), *dense.shape)
    img = seg >= 0
    text_cum, sink_cum = meta.key_prefix_counts

    def count(cum: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """How many marked positions lie in ``[a, b]`` (0 when the interval is empty)."""
        return torch.where(b >= a, cum[(b + 1).clamp(0, S)] - cum[a.clamp(0, S)], torch.zeros_like(a))

    start = meta.img_start.long()[seg.clamp_min(0)]
    end = meta.img_end.long()[seg.clamp_min(0)]
    own_lo, own_hi = torch.maximum(lo, start), torch.minimum(hi, end - 1)
    text = count(text_cum, lo, hi)
    own = (own_hi - own_lo + 1).clamp_min(0)
    sinks = count(sink_cum, lo, hi)
    own_sinks = count(sink_cum, own_lo, own_hi)
    itself = (~meta.is_sink[pos] & (lo <= pos) & (pos <= hi)).long()
    per_category = (
        dense,
        text + sinks + itself,  # sink: text, every visible sink, itself
        text + own,  # intra_image
        text + own + sinks - own_sinks,  # intra_image_sink
    )
    return torch.stack([torch.where(img, c, dense) for c in torch.broadcast_tensors(*per_category)])


def block_pair_counts(
    meta: LayoutMeta, block: int = 128, window: int | None = None, max_elements: int = 1 << 22
) -> torch.Tensor:
    """``int32 [4, q_blocks, kv_blocks]``: kept query-key pairs of every ``block x block`` tile, per category.

    Exact and O(S x kv_blocks) (each query row counts its kept keys in every key block in O(1) from prefix sums),
    so a block mask follows from the segment table without evaluating the S x S mask: 0 = empty, ``block**2`` =
    full (edge tiles past ``S`` are never full, as in FlexAttention's ``create_block_mask``). Query rows go in
    chunks of at most ``max_elements`` (row, key block) cells."""
    S = meta.length
    nk = -(-S // block)  # key blocks, and query blocks: the same tiling on both sides
    k_lo = torch.arange(nk, device=meta.device, dtype=torch.int64) * block
    k_hi = (k_lo + block - 1).clamp_max(S - 1)
    out = torch.empty(len(Category), nk, nk, dtype=torch.int32, device=meta.device)
    step = max(1, max_elements // (nk * block))  # query blocks per chunk
    for qb in range(0, nk, step):
        rows = torch.arange(qb * block, min((qb + step) * block, S), device=meta.device, dtype=torch.int64)
        kept = kept_in_keys(meta, rows[:, None], k_lo[None], k_hi[None], window)  # [4, rows, nk]
        kept = torch.nn.functional.pad(kept, (0, 0, 0, -rows.numel() % block))  # the edge block's missing rows
        out[:, qb : qb + step] = kept.view(len(Category), -1, block, nk).sum(dim=2, dtype=torch.int32)
    return out


def attention_flops(pairs: int | np.ndarray, head_dim: int) -> int | np.ndarray:
    """FLOPs of QK^T and PV over ``pairs`` kept query-key pairs of one head."""
    return 4 * head_dim * pairs


def layer_pair_table(
    layout: PromptLayout | LayoutMeta,
    windows: Sequence[int | None],
    kinds: Sequence[str] = (),
    bidirectional: Sequence[bool] = (),
) -> np.ndarray:
    """``int64 [layers, 4]``: kept pairs per category for each layer (layers differ by their window and, where
    ``bidirectional`` is given, by whether the layout's bidirectional image regions apply: Gemma 4 keeps its
    full-attention layers causal); zero rows for layers that are not softmax attention (``kinds``; empty = all
    softmax)."""
    meta = layout if isinstance(layout, LayoutMeta) else LayoutMeta.build(layout.unpadded())
    causal_meta = meta
    if bidirectional and not all(bidirectional):
        if isinstance(layout, LayoutMeta):
            raise ValueError("per-layer bidirectionality needs the PromptLayout, not prebuilt metadata")
        causal_meta = LayoutMeta.build(layout.unpadded().causal())
    softmax = [is_softmax(k) for k in resolve(kinds, len(windows))]
    bidir = list(bidirectional) if bidirectional else [True] * len(windows)
    if len(bidir) != len(windows):
        raise ValueError(f"{len(bidir)} bidirectionality flags for {len(windows)} layers")
    counts: dict[tuple[int | None, bool], KeptPairs] = {}
    zero = (0,) * len(Category)
    rows = []
    for w, keep, b in zip(windows, softmax, bidir):
        if not keep:
            rows.append(zero)
            continue
        if (w, b) not in counts:
            counts[(w, b)] = pair_counts(meta if b else causal_meta, w)
        rows.append(counts[(w, b)])
    return np.array(rows, dtype=np.int64).reshape(len(windows), len(Category))


def reduction_from_pairs(pairs: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Model-level FLOPs reduction per prompt: saved pairs over dense pairs, summed over layers and heads.

    ``pairs [P, L, 4]`` (or ``[L, 4]``) from :func:`layer_pair_table`; ``categories [L, H]`` of
    :class:`Category` values. Returns ``[P]`` (or a scalar) in [0, 1]. Head dim cancels out of the ratio.
    """
    pairs = np.asarray(pairs, dtype=np.float64)
    single = pairs.ndim == 2
    pairs = pairs[None] if single else pairs
    cats = np.asarray(categories, dtype=np.int64)
    if cats.ndim != 2 or cats.shape[0] != pairs.shape[1]:
        raise ValueError(f"categories must be [layers={pairs.shape[1]}, heads], got shape {cats.shape}")
    kept = np.take_along_axis(pairs, np.broadcast_to(cats[None], (pairs.shape[0], *cats.shape)), axis=2)  # [P, L, H]
    dense = pairs[:, :, Category.DENSE][:, :, None] * np.ones_like(kept)
    total = dense.sum(axis=(1, 2))
    out = np.where(total > 0, 1.0 - kept.sum(axis=(1, 2)) / np.where(total > 0, total, 1.0), 0.0)
    return out[0] if single else out


def model_flops(
    layout: PromptLayout | LayoutMeta,
    categories: np.ndarray | torch.Tensor,
    windows: Sequence[int | None],
    head_dim: int | Sequence[int],
    kinds: Sequence[str] = (),
    bidirectional: Sequence[bool] = (),
) -> dict[str, float]:
    """Dense and sparse attention FLOPs of a whole model on one prompt, and the reduction between them.

    ``categories [L, H]`` (e.g. ``np.array(head_map_categories)``), ``windows[l]`` the sliding window of
    layer ``l`` (None for full attention), ``head_dim`` one for all layers or one per layer (Gemma 4's global
    layers are wider), ``kinds`` the layer kinds (non-softmax layers count nothing; empty = all softmax),
    ``bidirectional`` per layer whether the layout's bidirectional regions apply (empty = everywhere).
    """
    cats = np.asarray(categories.cpu() if isinstance(categories, torch.Tensor) else categories, dtype=np.int64)
    if len(windows) != cats.shape[0]:
        raise ValueError(f"{len(windows)} layer windows for {cats.shape[0]} layers of categories")
    dims = np.full(len(windows), head_dim, dtype=np.int64) if np.isscalar(head_dim) else np.asarray(head_dim)
    if dims.shape != (len(windows),):
        raise ValueError(f"{dims.size} head dims for {len(windows)} layers")
    pairs = layer_pair_table(layout, windows, kinds, bidirectional)
    dense = float(attention_flops(pairs[:, Category.DENSE] * cats.shape[1], dims).sum())
    sparse = float(attention_flops(np.take_along_axis(pairs, cats, axis=1).sum(axis=1), dims).sum())
    return {"dense_flops": dense, "sparse_flops": sparse, "reduction": 1.0 - sparse / dense if dense else 0.0}


def dataset_reductions(
    layouts: Iterable[PromptLayout | LayoutMeta],
    categories: np.ndarray,
    windows: Sequence[int | None],
    kinds: Sequence[str] = (),
) -> np.ndarray:
    """Model-level FLOPs reduction of one head map (``categories [L, H]``) on each prompt: the data of the
    per-prompt FLOPs CDF (softmax-attention layers only, by ``kinds``)."""
    tables = [layer_pair_table(lay, windows, kinds) for lay in layouts]
    if not tables:
        return np.zeros(0)
    return reduction_from_pairs(np.stack(tables), categories)


def empirical_cdf(values: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` step points of the empirical CDF: ``y[i]`` = share of values <= ``x[i]``."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    return x, np.arange(1, x.size + 1, dtype=np.float64) / max(x.size, 1)
