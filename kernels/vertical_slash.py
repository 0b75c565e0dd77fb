"""Index-based sparse attention for MInference / MMInference-style dynamic patterns, with its reference.

A group of query heads attends in one *coordinate space* (:class:`Space`): the prompt's own order, or
MMInference's modality-wise permutation (all text tokens in order, then all image tokens in order, each group
padded to a whole tile). In that space the kept set of head ``h`` is defined on 64-token tiles. With
``x, y`` the coordinates of a query and a key, ``m = x // 64`` and ``n = y // 64`` their tiles, and ``g`` the
row's index group (its modality when the head splits by modality, else 0), a pair is kept iff the model's own
mask keeps it (causal / bidirectional images / sliding window, on the original positions) and one of:

* **slash tiles**: ``m - n`` is in the head's relative tile offsets ``D[h, g]`` (a diagonal at element offset
  ``s = x - y`` is expanded to the tiles it crosses, as MInference's index conversion expands slashes to
  blocks);
* **vertical columns**: ``y`` is in ``V[h, g]`` (and its tile is not already a slash tile);
* **blocks**: ``n`` is in the head's per-query-tile list ``B[h, m]`` (block-sparse);
* **cross-modality** (modality space only): the key's modality differs from the row's (kept whole).

In the modality space the slash/vertical/block parts only reach keys of the row's own modality. The parts are
disjoint, so the Triton kernel visits every kept pair exactly once and also returns how many pairs each row
kept (exact FLOPs accounting). :func:`keep_mask` materializes the definition for a chunk of rows; the chunked
PyTorch path (:func:`sparse_attention_reference`) and the kernel (:func:`sparse_attention_triton`) must agree
with it. On CPU the kernel runs under ``TRITON_INTERPRET=1`` (set before this module is imported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bsight.kernels.sparsity.metadata import LayoutMeta

TILE = 64
_FAR = 1 << 30  # a position beyond any prompt: marks tiles without valid keys


# ------------------------------------------------------------------------------------------ spaces


@dataclass(frozen=True)
class Space:
    """Coordinates of one prompt in which sparse indices are defined, and the per-tile tables the kernel
    uses to skip tiles the model's own mask empties. ``coord[p]`` is the coordinate of position ``p``."""

    two_d: bool
    length: int  # S, prompt length
    size: int  # N, number of coordinates
    perm: torch.Tensor | None  # int64 [N]: position at each coordinate (padding -> 0); None = identity
    coord: torch.Tensor | None  # int64 [S]: coordinate of each position; None = identity
    pos: torch.Tensor  # int32 [N]: original position, -1 for padding
    group: torch.Tensor  # int32 [N]: modality, 0 text / 1 image
    bidir: torch.Tensor  # int32 [N]: bidirectional image group or -1
    window: int | None  # the layer's sliding window
    has_bidir: bool
    tile_bits: torch.Tensor  # int32 [NT]: bit0 text rows, bit1 image rows, bit2 any valid row
    reach: torch.Tensor  # int32 [NT]: largest key position any row of the tile may attend
    first: torch.Tensor  # int32 [NT]: smallest valid row position (sliding-window skip)
    kt_min: torch.Tensor  # int32 [NT]: smallest valid key position of the tile (_FAR if none)
    kt_max: torch.Tensor  # int32 [NT]: largest valid key position of the tile (-1 if none)
    group_tiles: torch.Tensor  # int32 [4]: text tiles [lo, hi), image tiles [lo, hi) (all tiles if not 2D)

    @property
    def num_tiles(self) -> int:
        return -(-self.size // TILE)

    @classmethod
    def build(cls, meta: LayoutMeta, window: int | None = None, two_d: bool = False) -> Space:
        """The prompt order (``two_d=False``) or MMInference's modality permutation (``two_d=True``)."""
        dev = meta.device
        S = meta.length
        window = window if window and window < S else None
        image = meta.seg_id >= 0
        if two_d:
            text_pos = meta.text_idx.long()
            img_pos = torch.nonzero(image).flatten()
            pt, pi = _round_up(text_pos.numel()), _round_up(img_pos.numel())
            pad_t = torch.full((pt - text_pos.numel(),), -1, dtype=torch.long, device=dev)
            pad_i = torch.full((pi - img_pos.numel(),), -1, dtype=torch.long, device=dev)
            pos = torch.cat([text_pos, pad_t, img_pos, pad_i])
            group = torch.cat(
                [torch.zeros(pt, dtype=torch.int32, device=dev), torch.ones(pi, dtype=torch.int32, device=dev)]
            )
            perm = pos.clamp(min=0)
            valid = pos >= 0
            coord = torch.empty(S, dtype=torch.long, device=dev)
            coord[pos[valid]] = torch.nonzero(valid).flatten()
            nt = (pt // TILE, pi // TILE)
            group_tiles = torch.tensor([0, nt[0], nt[0], nt[0] + nt[1]], dtype=torch.int32, device=dev)
            pos = pos.to(torch.int32)
        else:
            pos = torch.arange(S, dtype=torch.int32, device=dev)
            group = image.to(torch.int32)
            perm = coord = None
            ntiles = -(-S // TILE)
            group_tiles = torch.tensor([0, ntiles, 0, ntiles], dtype=torch.int32, device=dev)
        valid = pos >= 0
        posl = pos.long().clamp(min=0)
        bidir = torch.where(valid, meta.bidir_group[posl], -1).to(torch.int32)
        # largest position a row may attend: itself, or the end of its bidirectional region
        reach_row = pos
        if meta.has_bidirectional:
            b = bidir.long().clamp(min=0)
            reach_row = torch.where(bidir >= 0, torch.maximum(pos, meta.bidir_end[b] - 1), pos)
        reach_row = torch.where(valid, reach_row, -1)
        bits = (
            _tile_reduce(torch.where(valid & (group == 0), 1, 0), 0, "max")
            | _tile_reduce(torch.where(valid & (group == 1), 2, 0), 0, "max")
            | _tile_reduce(torch.where(valid, 4, 0), 0, "max")
        )
        smallest = _tile_reduce(torch.where(valid, pos, _FAR), _FAR, "min")
        return cls(
            two_d=two_d,
            length=S,
            size=pos.numel(),
            perm=perm,
            coord=coord,
            pos=pos,
            group=group,
            bidir=bidir,
            window=window,
            has_bidir=meta.has_bidirectional,
            tile_bits=bits,
            reach=_tile_reduce(reach_row, -1, "max"),
            first=smallest,
            kt_min=smallest,
            kt_max=_tile_reduce(torch.where(valid, pos, -1), -1, "max"),
            group_tiles=group_tiles,
        )

    def gather(self, x: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """``x[heads] [H, S, D]`` in this space's coordinates ``[H, N, D]`` (padding rows hold arbitrary
        values), in one gather; the identity space returns ``x`` itself (all heads)."""
        if self.perm is None:
            return x
        return x[:, self.perm] if heads is None else x[heads[:, None], self.perm[None, :]]

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """Back from coordinates ``[H, N, ...]`` to prompt order ``[H, S, ...]``."""
        return x if self.coord is None else x[:, self.coord]

    def base_keep(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's own mask between coordinates ``x [C]`` and ``y [K]`` -> bool ``[C, K]``."""
        qp, kp = self.pos[x][:, None].long(), self.pos[y][None, :].long()
        keep = kp <= qp
        if self.has_bidir:
            qb, kb = self.bidir[x][:, None], self.bidir[y][None, :]
            keep = keep | ((qb == kb) & (qb >= 0))
        if self.window:
            keep = keep & (kp > qp - self.window)
        return keep & (qp >= 0) & (kp >= 0)


def _round_up(n: int) -> int:
    return -(-n // TILE) * TILE


def _tile_reduce(t: torch.Tensor, fill: int, how: str) -> torch.Tensor:
    """Per-tile max or min of a per-coordinate table (the last tile padded with ``fill``) -> int32 ``[NT]``."""
    n = t.numel()
    padded = torch.full((-(-n // TILE) * TILE,), fill, dtype=t.dtype, device=t.device)
    padded[:n] = t
    tiles = padded.view(-1, TILE)
    return (tiles.amax(1) if how == "max" else tiles.amin(1)).to(torch.int32)


# ------------------------------------------------------------------------------------------ indices


@dataclass(frozen=True)
class SparseIndex:
    """Kept sets of ``Hl`` query heads in one :class:`Space` (see the module docstring for the definition).

    Index group ``g`` is the row's modality for heads with ``split[h] == 1`` (MMInference's boundary heads),
    else always 0. Lists are padded; counts say how many entries are real.
    """

    q_heads: torch.Tensor  # int32 [Hl]: head of each entry in the q tensor handed to the kernel
    kv_heads: torch.Tensor  # int32 [Hl]: its key/value head
    split: torch.Tensor  # int32 [Hl]
    offsets: torch.Tensor  # int32 [Hl, 2, NS]: relative tile offsets m - n, ascending
    offset_count: torch.Tensor  # int32 [Hl, 2]
    covered: torch.Tensor  # int8 [Hl, 2, 2*NT-1]: 1 where m - n (+ NT - 1) is a slash tile
    columns: torch.Tensor  # int32 [Hl, 2, NV]: vertical key coordinates, ascending
    column_count: torch.Tensor  # int32 [Hl, 2]
    blocks: torch.Tensor  # int32 [Hl, NT, NB]: key tiles per query tile, -1 = none

    @property
    def num_heads(self) -> int:
        return int(self.q_heads.numel())


def slash_tiles(
    offsets: torch.Tensor, valid: torch.Tensor, num_tiles: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Element diagonals ``s = x - y`` (``[..., K]``) -> the relative tile offsets they cross.

    Rows of tile ``m`` meet diagonal ``s = a*64 + b`` (``0 <= b < 64``) in key tiles ``m - a`` and, when
    ``b > 0``, ``m - a - 1``. Returns (offsets ``[..., NS]`` ascending, counts ``[...]``, covered bitmap
    ``[..., 2*NT-1]``)."""
    NT = num_tiles
    s = offsets.long()
    a = torch.div(s, TILE, rounding_mode="floor")
    b = s - a * TILE
    d = torch.cat([a, a + 1], -1)
    ok = torch.cat([valid, valid & (b > 0)], -1) & (d > -NT) & (d < NT)
    hits = torch.zeros(*s.shape[:-1], 2 * NT - 1, dtype=torch.int32, device=s.device)
    hits.scatter_add_(-1, torch.where(ok, d + NT - 1, 0), ok.to(torch.int32))
    covered = (hits > 0).to(torch.int8)
    count = covered.sum(-1, dtype=torch.int32)
    idx = torch.arange(2 * NT - 1, device=s.device)
    key = torch.where(covered.bool(), idx, 2 * NT)
    ns = max(int(count.max()) if count.numel() else 0, 1)
    lists = key.sort(-1).values[..., :ns]
    return (lists - (NT - 1)).to(torch.int32), count, covered


def distinct_sorted(values: torch.Tensor, valid: torch.Tensor, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct valid entries of ``[..., K]`` -> (ascending lists ``[..., K']`` padded with ``pad``, counts).
    Vertical columns and block lists go through here: the kernel must never visit a key twice."""
    key = torch.where(valid, values.long(), _FAR).sort(-1).values
    dup = torch.zeros_like(key, dtype=torch.bool)
    dup[..., 1:] = key[..., 1:] == key[..., :-1]
    key = torch.where(dup, _FAR, key).sort(-1).values
    count = (key < _FAR).sum(-1, dtype=torch.int32)
    width = max(int(count.max()) if count.numel() else 0, 1)
    key = key[..., :width]
    return torch.where(key < _FAR, key, pad).to(torch.int32), count


# --------------------------------------------------------------------------------------- reference


def keep_mask(space: Space, index: SparseIndex, rows: torch.Tensor) -> torch.Tensor:
    """The kept set, materialized for coordinates ``rows [C]`` against every key coordinate: bool ``[Hl, C, N]``.
    Only for tests and the chunked reference path (memory ``Hl x C x N``)."""
    N, NT = space.size, space.num_tiles
    dev = rows.device
    Hl = index.num_heads
    y = torch.arange(N, device=dev)
    m, n = rows // TILE, y // TILE
    hh = torch.arange(Hl, device=dev)[:, None, None]
    rg = (space.group[rows][None, :] * index.split[:, None]).long()  # [Hl, C]
    d = (m[:, None] - n[None, :] + NT - 1)[None]  # [1, C, N]
    slash = index.covered[hh, rg[:, :, None], d].bool()
    cols = index.columns.long()
    colok = torch.arange(cols.shape[-1], device=dev) < index.column_count[..., None]
    isv = (
        torch.zeros(Hl, 2, N, dtype=torch.int32, device=dev).scatter_add_(
            -1, torch.where(colok, cols, 0), colok.to(torch.int32)
        )
        > 0
    )
    column = isv[hh, rg[:, :, None], y[None, None, :]] & ~slash
    blk = torch.zeros(Hl, NT, NT + 1, dtype=torch.bool, device=dev)
    b = index.blocks.long()
    blk.scatter_(-1, torch.where(b >= 0, b, NT), True)
    block = blk[:, m][:, :, n]
    sparse = slash | column | block
    if space.two_d:
        same = space.group[y][None, None, :] == rg[:, :, None]
        sparse = (sparse & same) | ~same
    return space.base_keep(rows, y)[None] & sparse


def chunk_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scale: float
) -> torch.Tensor:
    """Masked softmax attention of a chunk: ``q [H, C, D]``, ``k, v [H, K, D]``, ``keep [H, C, K]`` (or
    broadcastable) -> ``[H, C, D]`` in float32 (float64 stays float64). Rows that keep nothing give zeros."""
    dt = torch.promote_types(q.dtype, torch.float32)
    s = torch.einsum("hcd,hkd->hck", q.to(dt), k.to(dt)) * scale
    s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("hck,hkd->hcd", p, v.to(dt))


def sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    space: Space,
    index: SparseIndex,
    scale: float,
    chunk: int = 4 * TILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked PyTorch path: ``q [*, N, D]`` indexed by ``index.q_heads``, ``k, v [*, N, D]`` by
    ``index.kv_heads``, all in ``space`` coordinates -> (out ``[Hl, N, D]`` in q's dtype, kept pairs per row
    ``[Hl, N]``)."""
    N = space.size
    qh, kh = index.q_heads.long(), index.kv_heads.long()
    kk, vv = k[kh], v[kh]
    out = torch.zeros(index.num_heads, N, q.shape[-1], dtype=q.dtype, device=q.device)
    kept = torch.zeros(index.num_heads, N, dtype=torch.int64, device=q.device)
    for r0 in range(0, N, chunk):
        rows = torch.arange(r0, min(N, r0 + chunk), device=q.device)
        keep = keep_mask(space, index, rows)
        out[:, rows] = chunk_attention(q[qh][:, rows], kk, vv, keep, scale).to(q.dtype)
        kept[:, rows] = keep.sum(-1)
    return out, kept


# ------------------------------------------------------------------------------------------ Triton


@triton.jit
def _base_keep(qpos, qbid, kpos, kbid, window, HAS_BIDIR: tl.constexpr, HAS_WINDOW: tl.constexpr):
    keep = kpos[None, :] <= qpos[:, None]
    if HAS_BIDIR:
        keep = keep | ((qbid[:, None] == kbid[None, :]) & (qbid[:, None] >= 0))
    if HAS_WINDOW:
        keep = keep & (kpos[None, :] > qpos[:, None] - window)
    return keep & (qpos[:, None] >= 0) & (kpos[None, :] >= 0)


@triton.jit
def _accumulate(acc, m_i, l_i, kept, q, k_ptrs, v_ptrs, load_ok, keep, qk_scale, FP32: tl.constexpr):
    """One online-softmax step over a [BM, BN] tile of gathered keys. ``FP32``: exact float32 products
    (float32 inputs; bfloat16 under Triton's interpreter, which multiplies bfloat16 bit patterns as integers)."""
    k = tl.load(k_ptrs, mask=load_ok[None, :], other=0.0)
    v = tl.load(v_ptrs, mask=load_ok[:, None], other=0.0)
    if FP32:
        s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee")
    else:
        s = tl.dot(q, k)
    s = tl.where(keep, s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if FP32:
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    kept += tl.sum(keep.to(tl.int32), 1)
    return acc, m_new, l_i, kept


@triton.jit
def _tile_live(n, reach, first, kt_min_ptr, kt_max_ptr, window, HAS_WINDOW: tl.constexpr):
    live = tl.load(kt_min_ptr + n) <= reach
    if HAS_WINDOW:
        live = live & (tl.load(kt_max_ptr + n) > first - window)
    return live


@triton.jit
def _sparse_fwd(
    Q,
    K,
    V,
    O,
    CNT,
    qh_ptr,
    kvh_ptr,
    split_ptr,
    pos_ptr,
    grp_ptr,
    bid_ptr,
    bits_ptr,
    reach_ptr,
    first_ptr,
    kt_min_ptr,
    kt_max_ptr,
    grange_ptr,
    off_ptr,
    offcnt_ptr,
    cov_ptr,
    col_ptr,
    colcnt_ptr,
    blk_ptr,
    N,
    NT,
    NS,
    NV,
    NB,
    window,
    qk_scale,
    stride_qh,
    stride_qn,
    stride_kh,
    stride_kn,
    stride_vh,
    stride_vn,
    stride_oh,
    stride_on,
    D: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    TWO_D: tl.constexpr,
    HAS_BIDIR: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    FP32: tl.constexpr,
):
    m = tl.program_id(0)
    hl = tl.program_id(1).to(tl.int64)
    qh = tl.load(qh_ptr + hl).to(tl.int64)
    kvh = tl.load(kvh_ptr + hl).to(tl.int64)
    split = tl.load(split_ptr + hl)
    rows = m * BM + tl.arange(0, BM)
    row_in = rows < N
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BN)
    qpos = tl.load(pos_ptr + rows, mask=row_in, other=-1)
    qgrp = tl.load(grp_ptr + rows, mask=row_in, other=0)
    qbid = tl.load(bid_ptr + rows, mask=row_in, other=-1)
    rgrp = qgrp * split
    q = tl.load(
        Q + qh * stride_qh + rows[:, None].to(tl.int64) * stride_qn + offs_d[None, :], mask=row_in[:, None], other=0.0
    )
    Kh = K + kvh * stride_kh
    Vh = V + kvh * stride_vh
    bits = tl.load(bits_ptr + m)
    reach = tl.load(reach_ptr + m)
    first = tl.load(first_ptr + m)

    acc = tl.zeros([BM, D], dtype=tl.float32)
    m_i = tl.zeros([BM], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BM], dtype=tl.float32)
    kept = tl.zeros([BM], dtype=tl.int32)

    for g in tl.static_range(2):
        # rows of index group g: any valid row when the head does not split (g == 0 only), else rows of modality g
        has_rows = tl.where(split == 0, (bits >> 2) * (1 - g), bits >> g) & 1
        if has_rows != 0:
            row_sel = (rgrp == g) & (qpos >= 0)
            glo = tl.load(grange_ptr + 2 * g)
            ghi = tl.load(grange_ptr + 2 * g + 1)
            # slash tiles: key tile n = m - d
            n_off = tl.load(offcnt_ptr + hl * 2 + g)
            for i in range(n_off):
                n = m - tl.load(off_ptr + (hl * 2 + g) * NS + i)
                ok = (n >= 0) & (n < NT)
                if TWO_D:
                    ok = ok & (n >= glo) & (n < ghi)
                if ok:
                    if _tile_live(n, reach, first, kt_min_ptr, kt_max_ptr, window, HAS_WINDOW):
                        cols = n * BN + offs_n
                        c_in = cols < N
                        kpos = tl.load(pos_ptr + cols, mask=c_in, other=-1)
                        kbid = tl.load(bid_ptr + cols, mask=c_in, other=-1)
                        keep = _base_keep(qpos, qbid, kpos, kbid, window, HAS_BIDIR, HAS_WINDOW) & row_sel[:, None]
                        c64 = cols.to(tl.int64)
                        acc, m_i, l_i, kept = _accumulate(
                            acc,
                            m_i,
                            l_i,
                            kept,
                            q,
                            Kh + c64[None, :] * stride_kn + offs_d[:, None],
                            Vh + c64[:, None] * stride_vn + offs_d[None, :],
                            c_in,
                            keep,
                            qk_scale,
                            FP32,
                        )
            # vertical columns not inside a slash tile
            n_col = tl.load(colcnt_ptr + hl * 2 + g)
            for c0 in range(0, n_col, BN):
                idx = c0 + offs_n
                c_ok = idx < n_col
                cols = tl.load(col_ptr + (hl * 2 + g) * NV + idx, mask=c_ok, other=0)
                kpos = tl.load(pos_ptr + cols, mask=c_ok, other=-1)
                if tl.min(tl.where(kpos >= 0, kpos, 1 << 30)) <= reach:
                    kbid = tl.load(bid_ptr + cols, mask=c_ok, other=-1)
                    dd = m - cols // BN + NT - 1
                    cov = tl.load(cov_ptr + (hl * 2 + g) * (2 * NT - 1) + dd, mask=c_ok, other=1)
                    keep = _base_keep(qpos, qbid, kpos, kbid, window, HAS_BIDIR, HAS_WINDOW) & row_sel[:, None]
                    keep = keep & (cov == 0)[None, :]
                    if TWO_D:
                        kgrp = tl.load(grp_ptr + cols, mask=c_ok, other=0)
                        keep = keep & (kgrp == g)[None, :]
                    c64 = cols.to(tl.int64)
                    acc, m_i, l_i, kept = _accumulate(
                        acc,
                        m_i,
                        l_i,
                        kept,
                        q,
                        Kh + c64[None, :] * stride_kn + offs_d[:, None],
                        Vh + c64[:, None] * stride_vn + offs_d[None, :],
                        c_ok,
                        keep,
                        qk_scale,
                        FP32,
                    )
    # block-sparse lists
    for i in range(NB):
        n = tl.load(blk_ptr + (hl * NT + m) * NB + i)
        if n >= 0:
            if _tile_live(n, reach, first, kt_min_ptr, kt_max_ptr, window, HAS_WINDOW):
                cols = n * BN + offs_n
                c_in = cols < N
                kpos = tl.load(pos_ptr + cols, mask=c_in, other=-1)
                kbid = tl.load(bid_ptr + cols, mask=c_in, other=-1)
                keep = _base_keep(qpos, qbid, kpos, kbid, window, HAS_BIDIR, HAS_WINDOW) & (qpos >= 0)[:, None]
                if TWO_D:
                    kgrp = tl.load(grp_ptr + cols, mask=c_in, other=0)
                    keep = keep & (kgrp[None, :] == rgrp[:, None])
                c64 = cols.to(tl.int64)
                acc, m_i, l_i, kept = _accumulate(
                    acc,
                    m_i,
                    l_i,
                    kept,
                    q,
                    Kh + c64[None, :] * stride_kn + offs_d[:, None],
                    Vh + c64[:, None] * stride_vn + offs_d[None, :],
                    c_in,
                    keep,
                    qk_scale,
                    FP32,
                )
    # modality space: the other modality's keys are kept whole (tiles hold one modality each)
    if TWO_D:
        if (bits & 4) != 0:
            other = 1 - ((bits >> 1) & 1)
            lo = tl.load(grange_ptr + 2 * other)
            hi = tl.load(grange_ptr + 2 * other + 1)
            for n in range(lo, hi):
                if _tile_live(n, reach, first, kt_min_ptr, kt_max_ptr, window, HAS_WINDOW):
                    cols = n * BN + offs_n
                    c_in = cols < N
                    kpos = tl.load(pos_ptr + cols, mask=c_in, other=-1)
                    kbid = tl.load(bid_ptr + cols, mask=c_in, other=-1)
                    keep = _base_keep(qpos, qbid, kpos, kbid, window, HAS_BIDIR, HAS_WINDOW)
                    c64 = cols.to(tl.int64)
                    acc, m_i, l_i, kept = _accumulate(
                        acc,
                        m_i,
                        l_i,
                        kept,
                        q,
                        Kh + c64[None, :] * stride_kn + offs_d[:, None],
                        Vh + c64[:, None] * stride_vn + offs_d[None, :],
                        c_in,
                        keep,
                        qk_scale,
                        FP32,
                    )

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        O + hl * stride_oh + rows[:, None].to(tl.int64) * stride_on + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=row_in[:, None],
    )
    tl.store(CNT + hl * N + rows, kept, mask=row_in)


def _is_interpreted() -> bool:
    return type(_sparse_fwd).__name__ == "InterpretedFunction"


def sparse_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, space: Space, index: SparseIndex, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel; same contract as :func:`sparse_attention_reference` (kept counts as int32 rows)."""
    D = q.shape[-1]
    if D < 16 or D & (D - 1):
        raise ValueError(f"the vertical-slash kernel needs a power-of-two head_dim >= 16, got {D}")
    if q.device.type != "cuda" and not _is_interpreted():
        raise RuntimeError(
            "the vertical-slash kernel runs on CPU only with TRITON_INTERPRET=1 set before "
            "bsight.kernels.vertical_slash is imported"
        )
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    N, NT, Hl = space.size, space.num_tiles, index.num_heads
    out = torch.empty(Hl, N, D, dtype=q.dtype, device=q.device)
    cnt = torch.empty(Hl, N, dtype=torch.int32, device=q.device)
    i32 = lambda t: t.to(device=q.device, dtype=torch.int32).contiguous()  # noqa: E731
    _sparse_fwd[(NT, Hl)](
        q,
        k,
        v,
        out,
        cnt,
        i32(index.q_heads),
        i32(index.kv_heads),
        i32(index.split),
        i32(space.pos),
        i32(space.group),
        i32(space.bidir),
        i32(space.tile_bits),
        i32(space.reach),
        i32(space.first),
        i32(space.kt_min),
        i32(space.kt_max),
        i32(space.group_tiles),
        i32(index.offsets),
        i32(index.offset_count),
        index.covered.to(device=q.device, dtype=torch.int8).contiguous(),
        i32(index.columns),
        i32(index.column_count),
        i32(index.blocks),
        N,
        NT,
        index.offsets.shape[-1],
        index.columns.shape[-1],
        index.blocks.shape[-1],
        space.window or 0,
        scale * math.log2(math.e),
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        D=D,
        BM=TILE,
        BN=TILE,
        TWO_D=space.two_d,
        HAS_BIDIR=space.has_bidir,
        HAS_WINDOW=space.window is not None,
        FP32=q.dtype == torch.float32 or (_is_interpreted() and q.dtype == torch.bfloat16),
        num_warps=4,
        num_stages=2,
    )
    return out, cnt


def check_index(space: Space, index: SparseIndex) -> None:
    """Shapes agree with the space; modality-space heads split by modality (their cross part needs it)."""
    NT = space.num_tiles
    if index.covered.shape[-1] != 2 * NT - 1 or index.blocks.shape[1] != NT:
        raise ValueError(f"index built for {(index.covered.shape[-1] + 1) // 2} tiles, the space has {NT}")
    if space.two_d and not bool((index.split == 1).all()):
        raise ValueError("heads in the modality (2D-boundary) space must have split == 1")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    space: Space,
    index: SparseIndex,
    scale: float,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: ``"triton"``, ``"reference"``, or ``"auto"`` (Triton on CUDA with a power-of-two head_dim)."""
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"unknown backend {backend!r}; allowed: auto, triton, reference")
    check_index(space, index)
    D = q.shape[-1]
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda and D >= 16 and not D & (D - 1))
    if use_triton:
        return sparse_attention_triton(q, k, v, space, index, scale)
    return sparse_attention_reference(q, k, v, space, index, scale)


def base_pair_count(meta: LayoutMeta, window: int | None = None) -> int:
    """Pairs the model's own mask keeps (causal, bidirectional images, sliding window), in O(S + images).

    Causal rows keep ``min(i + 1, window)`` keys; each bidirectional region of length ``L`` adds the
    ``L (L - 1) / 2`` forward pairs inside it (forward keys are never outside a backward window)."""
    S = meta.length
    i = torch.arange(S, dtype=torch.int64)
    causal = torch.minimum(i + 1, torch.tensor(window)) if window else i + 1
    L = (meta.bidir_end - meta.bidir_start).long().cpu()
    return int(causal.sum()) + int((L * (L - 1) // 2).sum())
