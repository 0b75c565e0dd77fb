"""The Triton forward kernel of BlindSight prefill attention (one launch for every sparse and dense head).

One program computes one tile of query rows (see :mod:`bsight.kernels.plan`) for one query head. With one
online softmax it walks the key blocks of at most two sources as ONE block sequence:

1. **gathered global keys** (image tiles of sparse heads): a contiguous range of a pre-gathered K/V buffer
   that holds the keys of ``text_idx`` followed by those of ``glob_idx``. ``intra_image`` reads the text
   part up to ``text_before[i]``; ``sink`` and ``intra_image_sink`` read the global part up to
   ``glob_before[i]`` (``sink`` also the image's own sinks, which follow in ``glob_idx``). No 128-key block
   is loaded for a 4-token sink or a 16-token label: every loaded key is a kept key (up to the tail block).
2. **a contiguous key range** of the full K/V: the image's own range for ``intra_image`` and
   ``intra_image_sink``, ``[0, q]`` for text tiles and dense heads; ``sink`` instead adds the diagonal
   (each row's own key) as one extra column.

The blocks whose every (row, key) pair is kept (the full blocks of both sources) come first, in one
software-pipelined loop without mask arithmetic; both sources have one row stride (the launcher gathers the
list that way), so a block's source is a scalar base pointer and the per-thread offsets stay loop-invariant
(picking strides too cost ~8% more instructions per block). The few edge blocks (the list's tail, the
window edge, the diagonal) follow in a second loop, masked with the model's own rule (causal, OR the same
bidirectional region, AND the sliding window). A tile thus pays two pipeline start-ups, not one per key
range. (Edge blocks masked under a branch inside the first loop were if-converted by the compiler: the
mask code then ran on every block.) Lengths and counts are runtime integers, so a new prompt length
compiles nothing.

This module holds only ``@triton.jit`` code; the launch and the routing of dense heads are in
:mod:`bsight.kernels.blindsight_attention`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from bsight.kernels.sparsity.categories import Category

DENSE: tl.constexpr = tl.constexpr(Category.DENSE.value)
SINK: tl.constexpr = tl.constexpr(Category.SINK.value)
INTRA_IMAGE: tl.constexpr = tl.constexpr(Category.INTRA_IMAGE.value)


@triton.jit
def _scores(q, k, UPCAST: tl.constexpr):
    """Unscaled logits of one K/V block (the scale is applied in the softmax step, fused into one FMA)."""
    if UPCAST:  # Triton's interpreter multiplies bfloat16 bit patterns as integers: multiply in fp32
        return tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
    return tl.dot(q, tl.trans(k))


@triton.jit
def _softmax_step(acc, m_i, l_i, qk, v, qk_scale, MAY_BE_EMPTY: tl.constexpr, UPCAST: tl.constexpr):
    """One online-softmax update with logits ``qk`` (-inf where a pair is not kept; ``qk_scale`` > 0 turns
    them into base-2 exponents) and a V block. MAY_BE_EMPTY: some row may have no kept key so far (its
    max is then -inf and must not be subtracted)."""
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    if MAY_BE_EMPTY:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    p = tl.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if UPCAST:
        acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _edge_block(j, n_tail, n_edge, full1, n1, lo2, a2, b2, hi2, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Masked block ``j``: (first key, key bound, from the gathered list?) among the list's tail blocks,
    the window-edge blocks of the range and the diagonal blocks of the range, in that order."""
    in_list = j < n_tail
    if HAS_WINDOW:
        in_edge = (j >= n_tail) & (j < n_tail + n_edge)
        start = tl.where(
            in_list,
            full1 + j * BLOCK_N,
            tl.where(in_edge, lo2 + (j - n_tail) * BLOCK_N, b2 + (j - n_tail - n_edge) * BLOCK_N),
        )
        hi = tl.where(in_list, n1, tl.where(in_edge, a2, hi2))
    else:
        start = tl.where(in_list, full1 + j * BLOCK_N, b2 + (j - n_tail) * BLOCK_N)
        hi = tl.where(in_list, n1, hi2)
    return start, hi, in_list


@triton.jit
def _keep(
    cols, in_list, hi, pos_list, qpos, q_bidir, bs, be, window, HAS_BIDIR: tl.constexpr, HAS_WINDOW: tl.constexpr
):
    """Kept (row, key) pairs of an edge block: the model's rule on key positions, and keys inside the range."""
    inb = cols < hi
    from_list = (cols * 0 + in_list.to(tl.int32)) != 0  # (a scalar & a vector mask trips Triton's interpreter)
    kpos = tl.where(from_list, tl.load(pos_list + cols, mask=inb & from_list, other=0), cols)
    keep = kpos[None, :] <= qpos[:, None]
    if HAS_BIDIR:
        keep = keep | (q_bidir[:, None] & (kpos[None, :] >= bs) & (kpos[None, :] < be))
    if HAS_WINDOW:
        keep = keep & (kpos[None, :] > qpos[:, None] - window)
    return keep & inb[None, :]


@triton.jit(
    do_not_specialize=["num_heads_run", "group", "num_text", "window"],
    do_not_specialize_on_alignment=["TEXT_IDX", "KEY_POS", "IS_SINK"],  # metadata tables: alignment varies by layout
)
def bsight_fwd_kernel(
    Q,
    K,
    V,
    KG,
    VG,
    O,
    HEADS,
    CATS,
    TILES,
    KEY_POS,
    TEXT_IDX,
    IS_SINK,
    stride_qh,
    stride_qs,
    stride_kh,
    stride_kgh,
    stride_kn,
    stride_vh,
    stride_vgh,
    stride_vn,
    stride_oh,
    stride_os,
    num_heads_run,
    group,
    num_text,
    qk_scale,
    window,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIDIR: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    t = pid // num_heads_run
    h = tl.load(HEADS + pid % num_heads_run)
    cat = tl.load(CATS + pid % num_heads_run)  # this run-head's category (not indexed by h: no load chain)
    kvh = (h // group).to(tl.int64)
    row = TILES + t * 16
    kind = tl.load(row)
    a = tl.load(row + 1)
    cnt = tl.load(row + 2)
    lo_text = tl.load(row + 4)
    lo_glob = tl.load(row + 5)
    text_before = tl.load(row + 6)
    glob_before = tl.load(row + 7)
    own_sinks = tl.load(row + 8)
    img_start = tl.load(row + 9)
    bs = tl.load(row + 10)
    be = tl.load(row + 11)
    qmin = tl.load(row + 12)
    qmax = tl.load(row + 13)

    live = cnt > 0  # an empty slot (past the last real tile) has no rows and gets no key blocks
    is_text = kind == 0
    is_img = (kind == 1) & live
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    EVEN_D: tl.constexpr = BLOCK_D == D
    dmask = offs_d < D
    valid = offs_m < cnt
    r = tl.minimum(offs_m, cnt - 1)
    text_rows = valid & (kind + 0 * offs_m == 0)  # (a scalar & a vector mask trips Triton's interpreter)
    text_pos = tl.load(TEXT_IDX + a + r, mask=text_rows, other=0)
    qpos = tl.where(is_text, text_pos, a + r)

    q_ptrs = Q + h.to(tl.int64) * stride_qh + qpos[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=valid[:, None] & dmask[None, :], other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_BIDIR:
        bs = tl.where(is_img, bs, 0)
        be = tl.where(is_img, be, 0)
    q_bidir = (qpos >= bs) & (qpos < be)

    # source 1, the gathered list: earlier text (intra_image) or earlier text + sinks (sink, intra_image_sink)
    sparse = is_img & (cat != DENSE)
    use_text = cat == INTRA_IMAGE
    n_before = tl.where(sparse, tl.where(use_text, text_before, glob_before), 0)
    n1 = n_before + tl.where(sparse & (cat == SINK), own_sinks, 0)
    lo1 = tl.where(sparse, tl.where(use_text, lo_text, lo_glob), 0)
    if HAS_WINDOW:
        full1 = lo1  # the window may cut into the list anywhere: mask every block
    else:
        full1 = lo1 + tl.maximum(n_before - lo1, 0) // BLOCK_N * BLOCK_N
    base = tl.where(use_text, 0, num_text)
    kg = KG + kvh * stride_kgh + base.to(tl.int64) * stride_kn
    vg = VG + kvh * stride_vgh + base.to(tl.int64) * stride_vn
    pos_list = KEY_POS + base

    # source 2, a contiguous range: [0, q] (text tiles, dense heads) or the image's own range (intra_image*)
    is_sink_tile = is_img & (cat == SINK)
    lo2 = tl.where(sparse, img_start, 0)
    hi2 = qmax + 1
    if HAS_BIDIR:
        hi2 = tl.where(is_img & (qmin < be) & (qmax >= bs), tl.maximum(hi2, be), hi2)
    if HAS_WINDOW:
        lo2 = tl.maximum(lo2, qmin - window + 1)
        a2 = tl.minimum(tl.maximum(lo2, qmax - window + 1), hi2)  # keys >= a2 are in every row's window
    else:
        a2 = lo2
    b2 = a2 + tl.maximum(qmin + 1 - a2, 0) // BLOCK_N * BLOCK_N  # keys < b2 are <= qmin: causal for every row
    hi2 = tl.where(is_sink_tile, 0, hi2)
    lo2 = tl.where(is_sink_tile, 0, lo2)
    a2 = tl.where(is_sink_tile, 0, a2)
    b2 = tl.where(is_sink_tile, 0, b2)
    k_rng = K + kvh * stride_kh
    v_rng = V + kvh * stride_vh

    # the block sequence: full list blocks, full range blocks, then the edge blocks (masked). Both sources
    # share one row stride (the launcher gathers the list with K's and V's), so a block's source changes
    # only a scalar base pointer: the per-thread offsets below stay loop-invariant.
    k_off = offs_n[:, None] * stride_kn + offs_d[None, :]
    v_off = offs_n[:, None] * stride_vn + offs_d[None, :]
    n_full1 = (full1 - lo1) // BLOCK_N
    n_full = tl.where(live, n_full1 + (b2 - a2) // BLOCK_N, 0)
    n_tail = (tl.maximum(n1 - full1, 0) + BLOCK_N - 1) // BLOCK_N
    n_edge = 0
    if HAS_WINDOW:
        n_edge = (a2 - lo2 + BLOCK_N - 1) // BLOCK_N
    n_masked = tl.where(live, n_tail + n_edge + (hi2 - b2 + BLOCK_N - 1) // BLOCK_N, 0)
    # the base pointers walk the list, then jump once to the range (loop-carried: no per-block address math)
    k_range0 = k_rng + a2.to(tl.int64) * stride_kn
    v_range0 = v_rng + a2.to(tl.int64) * stride_vn
    kb = tl.where(n_full1 > 0, kg + lo1.to(tl.int64) * stride_kn, k_range0)
    vb = tl.where(n_full1 > 0, vg + lo1.to(tl.int64) * stride_vn, v_range0)
    for j in range(0, n_full):
        if EVEN_D:
            k = tl.load(kb + k_off)
            v = tl.load(vb + v_off)
        else:
            k = tl.load(kb + k_off, mask=dmask[None, :], other=0.0)
            v = tl.load(vb + v_off, mask=dmask[None, :], other=0.0)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, _scores(q, k, UPCAST), v, qk_scale, False, UPCAST)
        jump = j + 1 == n_full1
        kb = tl.where(jump, k_range0, kb + BLOCK_N * stride_kn)
        vb = tl.where(jump, v_range0, vb + BLOCK_N * stride_vn)
    for j in range(0, n_masked):
        start, hi, in_list = _edge_block(j, n_tail, n_edge, full1, n1, lo2, a2, b2, hi2, BLOCK_N, HAS_WINDOW)
        cols = start + offs_n
        lmask = (offs_n < hi - start)[:, None] & dmask[None, :]
        k = tl.load(tl.where(in_list, kg, k_rng) + start.to(tl.int64) * stride_kn + k_off, mask=lmask, other=0.0)
        v = tl.load(tl.where(in_list, vg, v_rng) + start.to(tl.int64) * stride_vn + v_off, mask=lmask, other=0.0)
        keep = _keep(cols, in_list, hi, pos_list, qpos, q_bidir, bs, be, window, HAS_BIDIR, HAS_WINDOW)
        qk = tl.where(keep, _scores(q, k, UPCAST), float("-inf"))
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, qk, v, qk_scale, True, UPCAST)

    # sink heads: each image row also sees its own key (a sink row already saw it in the list)
    if is_sink_tile:
        kd = tl.load(
            k_rng + qpos[:, None] * stride_kn + offs_d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0
        )
        vd = tl.load(
            v_rng + qpos[:, None] * stride_vn + offs_d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0
        )
        qd = tl.load(q_ptrs, mask=valid[:, None] & dmask[None, :], other=0.0)  # reloaded: q stays out of registers
        s = tl.sum(qd.to(tl.float32) * kd.to(tl.float32), 1) * qk_scale
        s = tl.where(tl.load(IS_SINK + qpos) != 0, float("-inf"), s)
        m_new = tl.maximum(m_i, s)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * vd.to(tl.float32)
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l_i = 0 only on rows of an empty tile, never stored
    tl.store(
        O + h.to(tl.int64) * stride_oh + qpos[:, None] * stride_os + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=valid[:, None] & dmask[None, :],
    )
