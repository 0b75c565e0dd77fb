"""Tile tables of the BlindSight kernel, derived from a :class:`LayoutMeta` on its device.

A *tile* is up to ``block_m`` query rows that share one key plan:

* an **image tile** holds consecutive rows of one image (tiles never straddle images), so every row sees
  the same gathered global keys (earlier text, or earlier text + sinks) and the same own-image key range;
* a **text tile** holds ``block_m`` consecutive entries of ``meta.text_idx`` (text rows of several text
  segments gathered together); text rows are dense in every category, so they only need causal keys.

The table is built with a handful of vectorized device ops and **no host synchronization**: the number of
tiles is bounded from host-known sizes (``S``, ``len(text_idx)``, ``num_images``), and slots past the real
count are marked empty (kind ``-1``, no rows). Tiles are sorted by estimated work, longest first, so the long text
tiles near the end of the prompt start first and the short image tiles fill the gaps (LPT scheduling).

Each row carries every per-image value the kernel needs (copied from the image's entries of the meta
tables), so a kernel program reads its tile with one round of independent loads instead of a chain of
dependent ones (tile -> image -> image tables). Columns of :attr:`TilePlan.tiles` (int32):

====  ======================================================================================
0     kind: 0 text tile, 1 image tile, -1 empty slot
1     first row: position ``q0`` (image tile) or offset into ``text_idx`` (text tile)
2     number of rows (<= 0 on an empty slot)
3     image index (image tiles), -1 otherwise
4     first entry of ``text_idx`` inside the sliding window of the tile's first row (0 without a window)
5     first entry of ``glob_idx`` inside that window (0 without a window)
6     ``text_before`` of the image (earlier text keys)
7     ``glob_before`` of the image (earlier text + earlier sinks)
8     number of the image's own sinks
9     image start position
10    bidirectional region start of the image (= its start when it has none)
11    bidirectional region end of the image
12    smallest query position of the tile
13    largest query position of the tile (< column 12 on an empty slot)
14-15 zero (rows padded to 64 bytes)
====  ======================================================================================
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bsight.kernels.sparsity.metadata import LayoutMeta

TILE_COLUMNS = 16
_CHUNK = 1024  # slots (and images) handled per vector step of the plan program


@dataclass(frozen=True)
class TilePlan:
    """Per-prompt kernel tables; O(S / block_m) for the tiles plus O(S) for the key lists."""

    block_m: int
    window: int | None
    tiles: torch.Tensor  # int32 [num_tiles, TILE_COLUMNS]
    num_tiles: int  # host-known upper bound on the real tile count
    key_pos: torch.Tensor  # int32 [T + G]: text_idx, then glob_idx (positions of the gathered key lists)
    num_text: int  # T


@triton.jit
def _search(TABLE, n, steps, x, mask):
    """Per lane: the number of entries of the sorted ``TABLE[:n]`` that are <= ``x`` (``steps`` >= bits of n)."""
    lo = x * 0
    hi = lo + n
    for _ in range(0, steps):
        open_ = (lo < hi) & mask
        mid = (lo + hi) // 2
        right = tl.load(TABLE + mid, mask=open_, other=0) <= x
        lo = tl.where(open_ & right, mid + 1, lo)
        hi = tl.where(open_ & (right == 0), mid, hi)
    return lo


@triton.jit(
    do_not_specialize=[
        "num_text",
        "num_glob",
        "num_images",
        "n_text_tiles",
        "n_slots",
        "steps_img",
        "steps_text",
        "steps_glob",
        "window",
    ],
    # the metadata tables are slices of one packed buffer, 16-byte aligned or not depending on the image
    # count: specializing on their alignment would compile a new variant for some new layouts
    do_not_specialize_on_alignment=[
        "TEXT_IDX",
        "GLOB_IDX",
        "IMG_START",
        "IMG_END",
        "TEXT_BEFORE",
        "GLOB_BEFORE",
        "SINK_PTR",
        "BIDIR_START",
        "BIDIR_END",
    ],
)
def _plan_kernel(
    TILES,
    WORK,
    CUM,
    TEXT_IDX,
    GLOB_IDX,
    IMG_START,
    IMG_END,
    TEXT_BEFORE,
    GLOB_BEFORE,
    SINK_PTR,
    BIDIR_START,
    BIDIR_END,
    num_text,
    num_glob,
    num_images,
    n_text_tiles,
    n_slots,
    steps_img,
    steps_text,
    steps_glob,
    window,
    BLOCK_M: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """One program writes every row of the tile table (columns in :mod:`bsight.kernels.plan`) and its work."""
    offs = tl.arange(0, CHUNK)
    # 1. CUM[i]: tiles of images 0..i (a running sum over chunks of images)
    carry = tl.sum(offs * 0, 0)
    for c0 in range(0, num_images, CHUNK):
        i = c0 + offs
        m = i < num_images
        cnt = (tl.load(IMG_END + i, mask=m, other=0) - tl.load(IMG_START + i, mask=m, other=0) + BLOCK_M - 1) // BLOCK_M
        tl.store(CUM + i, tl.cumsum(cnt, 0) + carry, mask=m)
        carry += tl.sum(cnt, 0)
    tl.debug_barrier()  # CUM is read back by other lanes below
    # 2. text tiles: BLOCK_M consecutive entries of TEXT_IDX each
    for t0 in range(0, n_text_tiles, CHUNK):
        t = t0 + offs
        m = t < n_text_tiles
        first = t * BLOCK_M
        last = tl.minimum(first + BLOCK_M, num_text) - 1
        qmax = tl.load(TEXT_IDX + last, mask=m, other=0)
        row = TILES + t * 16
        z = t * 0
        for c in tl.static_range(16):
            if c == 1:
                val = first
            elif c == 2:
                val = last + 1 - first
            elif c == 3:
                val = z - 1
            elif c == 12:
                val = tl.load(TEXT_IDX + first, mask=m, other=0)
            elif c == 13:
                val = qmax
            else:
                val = z
            tl.store(row + c, val, mask=m)
        tl.store(WORK + t, qmax, mask=m)
    # 3. image tiles: slot s belongs to the first image whose CUM exceeds s
    for s0 in range(0, n_slots, CHUNK):
        s = s0 + offs
        m = s < n_slots
        img = _search(CUM, num_images, steps_img, s, m)
        live = m & (img < num_images)
        start = tl.load(IMG_START + img, mask=live, other=0)
        end = tl.load(IMG_END + img, mask=live, other=0)
        before = tl.load(CUM + img, mask=live, other=0) - (end - start + BLOCK_M - 1) // BLOCK_M
        q0 = start + (s - before) * BLOCK_M
        rows = tl.minimum(q0 + BLOCK_M, end) - q0
        glob_before = tl.load(GLOB_BEFORE + img, mask=live, other=0).to(tl.int32)
        if HAS_WINDOW:  # first list entries inside the window of the tile's first row
            lo_text = _search(TEXT_IDX, num_text, steps_text, q0 - window, live)
            lo_glob = _search(GLOB_IDX, num_glob, steps_glob, q0 - window, live)
        else:
            lo_text = s * 0
            lo_glob = s * 0
        row = TILES + (n_text_tiles + s) * 16
        z = s * 0
        for c in tl.static_range(16):
            if c == 0:
                val = z + 1
            elif c == 1:
                val = q0
            elif c == 2:
                val = rows
            elif c == 3:
                val = img
            elif c == 4:
                val = lo_text
            elif c == 5:
                val = lo_glob
            elif c == 6:
                val = tl.load(TEXT_BEFORE + img, mask=live, other=0).to(tl.int32)
            elif c == 7:
                val = glob_before
            elif c == 8:
                val = tl.load(SINK_PTR + img + 1, mask=live, other=0) - tl.load(SINK_PTR + img, mask=live, other=0)
            elif c == 9:
                val = start
            elif c == 10:
                val = tl.load(BIDIR_START + img, mask=live, other=0)
            elif c == 11:
                val = tl.load(BIDIR_END + img, mask=live, other=0)
            elif c == 12:
                val = q0
            elif c == 13:
                val = q0 + rows - 1
            else:
                val = z
            if c == 0 or c == 3 or c == 13:  # an empty slot: kind -1, no image, qmax -1 < qmin 0, no rows
                tl.store(row + c, tl.where(live, val, -1), mask=m)
            else:
                tl.store(row + c, tl.where(live, val, 0), mask=m)
        tl.store(WORK + n_text_tiles + s, tl.where(live, glob_before + q0 + rows - 1 - start, -2), mask=m)


def build_plan(meta: LayoutMeta, block_m: int, window: int | None = None) -> TilePlan:
    """Tile table for one prompt and row-block size (and sliding window, which moves list start points).

    One Triton program writes the table (tile counts per image, text tiles, image tiles found by binary
    search over the running tile count), then a sort orders it: four device launches in all, no host sync.
    """
    if block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two >= 16, got {block_m}")
    dev = meta.device
    if dev.type != "cuda" and isinstance(_plan_kernel, triton.runtime.jit.JITFunction):
        raise NotImplementedError(
            "build_plan runs on CUDA (or under Triton's interpreter: TRITON_INTERPRET=1 before triton is "
            f"imported), not on {dev.type}"
        )
    S, n = meta.length, meta.num_images
    T, G = int(meta.text_idx.numel()), int(meta.glob_idx.numel())
    n_text_tiles = -(-T // block_m)
    # each image of L tokens has ceil(L / block_m) tiles <= (L + block_m - 1) / block_m: bound the total
    n_slots = (S - T + n * (block_m - 1)) // block_m if n else 0
    total = n_text_tiles + n_slots
    key_pos = torch.cat([meta.text_idx, meta.glob_idx]).to(torch.int32)
    if total == 0:
        return TilePlan(block_m, window, torch.zeros(0, TILE_COLUMNS, dtype=torch.int32, device=dev), 0, key_pos, T)
    tiles = torch.empty(total, TILE_COLUMNS, dtype=torch.int32, device=dev)
    work = torch.empty(total, dtype=torch.int32, device=dev)
    cum = torch.empty(max(n, 1), dtype=torch.int32, device=dev)
    one = (
        torch.zeros(1, dtype=torch.int32, device=dev) if min(n, T, G) == 0 else None
    )  # a real pointer for empty tables

    def ptr(t: torch.Tensor) -> torch.Tensor:
        return t if t.numel() else one

    _plan_kernel[(1,)](
        tiles,
        work,
        cum,
        ptr(meta.text_idx),
        ptr(meta.glob_idx),
        ptr(meta.img_start),
        ptr(meta.img_end),
        ptr(meta.text_before),
        ptr(meta.glob_before),
        meta.sink_ptr,
        ptr(meta.bidir_start),
        ptr(meta.bidir_end),
        T,
        G,
        n,
        n_text_tiles,
        n_slots,
        n.bit_length() + 1,
        T.bit_length() + 1,
        G.bit_length() + 1,
        window or 0,
        BLOCK_M=block_m,
        HAS_WINDOW=window is not None,
        CHUNK=_CHUNK,
        num_warps=4,
    )
    tiles = tiles[torch.sort(work, descending=True, stable=True).indices]
    return TilePlan(block_m, window, tiles, total, key_pos, T)


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
