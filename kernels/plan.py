"""Tile tables of the BlindSight kernel, derived from a :class:`LayoutMeta` on its device.

A *tile* is up to ``block_m`` query rows that share one key plan:

* an **image tile** holds consecutive rows of one image (tiles never straddle images), so every row sees
  the same gathered global keys (earlier text, or earlier text + sinks) and the same own-image key range;
* a **text tile** holds ``block_m`` consecutive entries of ``meta.text_idx`` (text rows of several text
  segments gathered together); text rows are dense in every category, so they only need causal keys.

The table is built with a handful of vectorized device ops and **no host synchronization**: the number of
tiles is bounded from host-known sizes (``S``, ``len(text_idx)``, ``num_images``), and slots past the real
count are marked empty (kind ``-1``). Tiles are sorted by estimated work, longest first, so the long text
tiles near the end of the prompt start first and the short image tiles fill the gaps (LPT scheduling).

Columns of :attr:`TilePlan.tiles` (int32):

====  ======================================================================================
0     kind: 0 text tile, 1 image tile, -1 empty slot
1     first row: position ``q0`` (image tile) or offset into ``text_idx`` (text tile)
2     number of rows
3     image index (image tiles), -1 otherwise
4     first entry of ``text_idx`` inside the sliding window of the tile's first row (0 without a window)
5     first entry of ``glob_idx`` inside that window (0 without a window)
====  ======================================================================================
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from bsight.harness.sparsity.metadata import LayoutMeta

TILE_COLUMNS = 6


@dataclass(frozen=True)
class TilePlan:
    """Per-prompt kernel tables; O(S / block_m) for the tiles plus O(S) for the key lists."""

    block_m: int
    window: int | None
    tiles: torch.Tensor  # int32 [num_tiles, TILE_COLUMNS]
    num_tiles: int  # host-known upper bound on the real tile count
    key_pos: torch.Tensor  # int32 [T + G]: text_idx, then glob_idx (positions of the gathered key lists)
    key_index: torch.Tensor  # int64 copy of key_pos, for index_select of K and V
    num_text: int  # T
    is_sink: torch.Tensor  # int8 [S]


def build_plan(meta: LayoutMeta, block_m: int, window: int | None = None) -> TilePlan:
    """Tile table for one prompt and row-block size (and sliding window, which moves list start points)."""
    if block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two >= 16, got {block_m}")
    dev = meta.device
    i32 = dict(dtype=torch.int32, device=dev)
    S, n = meta.length, meta.num_images
    T = int(meta.text_idx.numel())
    parts = []

    n_text_tiles = -(-T // block_m)
    if n_text_tiles:
        off = torch.arange(n_text_tiles, dtype=torch.int64, device=dev) * block_m
        cnt = torch.clamp(T - off, max=block_m)
        qmax = meta.text_idx[off + cnt - 1].to(torch.int64)
        zeros = torch.zeros_like(off)
        text = torch.stack([zeros, off, cnt, zeros - 1, zeros, zeros], 1)
        parts.append((text, qmax + 1))

    # each image of L tokens has ceil(L / block_m) tiles <= (L + block_m - 1) / block_m: bound the total
    bound = (S - T + n * (block_m - 1)) // block_m if n else 0
    if bound:
        start, end = meta.img_start, meta.img_end
        cnt_img = (end - start + block_m - 1) // block_m
        cum = torch.cumsum(cnt_img.long(), 0)
        slot = torch.arange(bound, dtype=torch.int64, device=dev)
        img = torch.searchsorted(cum, slot, right=True)
        valid = img < n
        imgc = torch.clamp(img, max=n - 1)
        j = slot - (cum - cnt_img)[imgc]
        q0 = start[imgc] + j * block_m
        rows = torch.minimum(q0 + block_m, end[imgc]) - q0
        lo_text = torch.zeros_like(q0)
        lo_glob = torch.zeros_like(q0)
        if window is not None:
            first = (q0 - window + 1).to(torch.int32)  # keys at positions >= first are in row q0's window
            lo_text = torch.searchsorted(meta.text_idx, first).to(torch.int64)
            lo_glob = torch.searchsorted(meta.glob_idx, first).to(torch.int64)
        kind = torch.where(valid, 1, -1)
        table = torch.stack([kind, torch.where(valid, q0, 0), torch.where(valid, rows, 0), torch.where(valid, img, -1), lo_text, lo_glob], 1)
        work = torch.where(valid, meta.glob_before[imgc].to(torch.int64) + (q0 + rows - start[imgc]), -1)
        parts.append((table, work))

    if parts:
        tiles = torch.cat([p[0] for p in parts]).to(torch.int32)
        work = torch.cat([p[1] for p in parts])
        order = torch.sort(work, descending=True, stable=True).indices
        tiles = tiles[order].contiguous()
    else:
        tiles = torch.zeros(0, TILE_COLUMNS, **i32)
    key_pos = torch.cat([meta.text_idx, meta.glob_idx]).to(torch.int32).contiguous()
    return TilePlan(
        block_m=block_m,
        window=window,
        tiles=tiles,
        num_tiles=int(tiles.shape[0]),
        key_pos=key_pos,
        key_index=key_pos.long(),
        num_text=T,
        is_sink=meta.is_sink.to(torch.int8),
    )


class PlanCache:
    """Plans keyed on the identity of a live :class:`LayoutMeta` (one per prompt, reused by every layer).

    Entries die with their meta, so a long evaluation does not accumulate tables of finished prompts.
    """

    def __init__(self) -> None:
        self._plans: dict[int, tuple[weakref.ref, dict[tuple[int, int | None], TilePlan]]] = {}

    def get(self, meta: LayoutMeta, block_m: int, window: int | None) -> TilePlan:
        key = id(meta)
        entry = self._plans.get(key)
        if entry is None or entry[0]() is not meta:
            entry = (weakref.ref(meta, lambda _ref, key=key: self._plans.pop(key, None)), {})
            self._plans[key] = entry
        plans = entry[1]
        if (block_m, window) not in plans:
            plans[(block_m, window)] = build_plan(meta, block_m, window)
        return plans[(block_m, window)]

    def __len__(self) -> int:
        return len(self._plans)
