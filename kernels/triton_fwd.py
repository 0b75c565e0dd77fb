"""The Triton forward kernel of BlindSight prefill attention (one launch for every sparse and dense head).

One program computes one tile of query rows (see :mod:`bsight.kernels.plan`) for one query head. With one
online softmax it walks at most two key sources:

1. **gathered global keys** (image tiles of sparse heads): a contiguous prefix of a pre-gathered K/V buffer
   that holds the keys of ``text_idx`` followed by those of ``glob_idx``. ``intra_image`` reads the text
   part up to ``text_before[i]``; ``sink`` and ``intra_image_sink`` read the global part up to
   ``glob_before[i]`` (``sink`` also the image's own sinks, which follow in ``glob_idx``). No 128-key block
   is loaded for a 4-token sink or a 16-token label: every loaded key is a kept key (up to the tail block).
2. **a contiguous key range** of the full K/V: the image's own range for ``intra_image`` and
   ``intra_image_sink``, ``[0, q]`` for text tiles and dense heads; ``sink`` instead adds the diagonal
   (each row's own key) as one extra column.

Blocks whose every (row, key) pair is kept run without mask arithmetic; only the block straddling the
diagonal (or the window edge, or the end of a list) is masked with the model's own rule (causal, OR the
same bidirectional region, AND the sliding window). Lengths and counts are runtime integers, so a new
prompt length compiles nothing.

This module holds only ``@triton.jit`` code; the launch and the routing of dense heads are in
:mod:`bsight.kernels.blindsight_attention`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from bsight.harness.sparsity.categories import Category

DENSE: tl.constexpr = tl.constexpr(Category.DENSE.value)
SINK: tl.constexpr = tl.constexpr(Category.SINK.value)
INTRA_IMAGE: tl.constexpr = tl.constexpr(Category.INTRA_IMAGE.value)


@triton.jit
def _attend(
    acc, m_i, l_i, q, qpos, q_bidir, bs, be,
    k_base, v_base, stride_kn, stride_vn, pos_base, lo, hi, qk_scale, window,
    offs_n, offs_d, D: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, POS_LIST: tl.constexpr,
    HAS_BIDIR: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr,
):
    """Online-softmax update over keys ``[lo, hi)`` of one K/V source (positions from a list or implicit)."""
    dmask = offs_d < D
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        if MASKED:
            inb = cols < hi
            lmask = inb[:, None] & dmask[None, :]
            k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :], mask=lmask, other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=lmask, other=0.0)
        elif EVEN_D:
            k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :])
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :])
        else:
            k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :], mask=dmask[None, :], other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=dmask[None, :], other=0.0)
        if UPCAST:  # Triton's interpreter multiplies bfloat16 bit patterns as integers: multiply in fp32
            qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
        else:
            qk = tl.dot(q, tl.trans(k))
        if MASKED:
            if POS_LIST:
                kpos = tl.load(pos_base + cols, mask=inb, other=0)
            else:
                kpos = cols
            keep = kpos[None, :] <= qpos[:, None]
            if HAS_BIDIR:
                keep = keep | (q_bidir[:, None] & (kpos[None, :] >= bs) & (kpos[None, :] < be))
            if HAS_WINDOW:
                keep = keep & (kpos[None, :] > qpos[:, None] - window)
            keep = keep & inb[None, :]
            qk = tl.where(keep, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing kept so far
            p = tl.exp2(qk - m_use[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
            p = tl.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if UPCAST:
            acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["num_heads_run", "group", "num_text", "window"])
def bsight_fwd_kernel(
    Q, K, V, KG, VG, O,
    HEADS, CATS, TILES, KEY_POS, TEXT_IDX, IS_SINK,
    IMG_START, BIDIR_START, BIDIR_END, TEXT_BEFORE, GLOB_BEFORE, SINK_PTR,
    stride_qh, stride_qs, stride_kh, stride_ks, stride_vh, stride_vs,
    stride_kgh, stride_kgs, stride_vgh, stride_vgs, stride_oh, stride_os,
    num_heads_run, group, num_text, qk_scale, window,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIDIR: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    t = pid // num_heads_run
    h = tl.load(HEADS + pid % num_heads_run)
    cat = tl.load(CATS + h)
    kvh = (h // group).to(tl.int64)
    row = TILES + t * 6
    kind = tl.load(row)
    a = tl.load(row + 1)
    cnt = tl.load(row + 2)
    img = tl.load(row + 3)

    is_text = kind == 0
    is_img = kind == 1
    imgc = tl.maximum(img, 0)
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
    qmin = tl.min(qpos, 0)
    qmax = tl.max(qpos, 0)

    q_ptrs = Q + h.to(tl.int64) * stride_qh + qpos[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=valid[:, None] & dmask[None, :], other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    if HAS_BIDIR:
        bs = tl.load(BIDIR_START + imgc, mask=is_img, other=0)
        be = tl.load(BIDIR_END + imgc, mask=is_img, other=0)
    else:
        bs = 0
        be = 0
    q_bidir = (qpos >= bs) & (qpos < be)

    # 1. gathered global keys: earlier text (intra_image) or earlier text + sinks (sink, intra_image_sink)
    sparse = is_img & (cat != DENSE)
    use_text = cat == INTRA_IMAGE
    n_before = tl.where(use_text, tl.load(TEXT_BEFORE + imgc, mask=sparse, other=0), tl.load(GLOB_BEFORE + imgc, mask=sparse, other=0))
    own_sinks = tl.load(SINK_PTR + imgc + 1, mask=sparse, other=0) - tl.load(SINK_PTR + imgc, mask=sparse, other=0)
    n1 = tl.where(sparse, n_before + tl.where(cat == SINK, own_sinks, 0), 0)
    lo1 = tl.where(sparse, tl.load(row + tl.where(use_text, 4, 5)), 0)
    if HAS_WINDOW:
        full1 = lo1  # the window may cut into the list anywhere: mask every block
    else:
        full1 = lo1 + tl.maximum(n_before - lo1, 0) // BLOCK_N * BLOCK_N
    base = tl.where(use_text, 0, num_text)
    kg = KG + kvh * stride_kgh + base.to(tl.int64) * stride_kgs
    vg = VG + kvh * stride_vgh + base.to(tl.int64) * stride_vgs
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, qpos, q_bidir, bs, be, kg, vg, stride_kgs, stride_vgs, KEY_POS + base,
                            lo1, full1, qk_scale, window, offs_n, offs_d, D, BLOCK_N, False, True, HAS_BIDIR, HAS_WINDOW, EVEN_D, UPCAST)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, qpos, q_bidir, bs, be, kg, vg, stride_kgs, stride_vgs, KEY_POS + base,
                            full1, n1, qk_scale, window, offs_n, offs_d, D, BLOCK_N, True, True, HAS_BIDIR, HAS_WINDOW, EVEN_D, UPCAST)

    # 2. a contiguous key range: [0, q] (text tiles, dense heads) or the image's own range (intra_image*)
    is_sink_tile = is_img & (cat == SINK)
    lo2 = tl.where(sparse, tl.load(IMG_START + imgc, mask=sparse, other=0), 0)
    hi2 = qmax + 1
    if HAS_BIDIR:
        hi2 = tl.where(is_img & (qmin < be) & (qmax >= bs), tl.maximum(hi2, be), hi2)
    if HAS_WINDOW:
        lo2 = tl.maximum(lo2, qmin - window + 1)
        a2 = tl.minimum(tl.maximum(lo2, qmax - window + 1), hi2)
    else:
        a2 = lo2
    b2 = a2 + tl.maximum(qmin + 1 - a2, 0) // BLOCK_N * BLOCK_N  # keys <= qmin: causal for every row
    lo2 = tl.where(is_sink_tile, 0, lo2)
    a2 = tl.where(is_sink_tile, 0, a2)
    b2 = tl.where(is_sink_tile, 0, b2)
    hi2 = tl.where(is_sink_tile, 0, hi2)
    k_base = K + kvh * stride_kh
    v_base = V + kvh * stride_vh
    if HAS_WINDOW:
        acc, m_i, l_i = _attend(acc, m_i, l_i, q, qpos, q_bidir, bs, be, k_base, v_base, stride_ks, stride_vs, KEY_POS,
                                lo2, a2, qk_scale, window, offs_n, offs_d, D, BLOCK_N, True, False, HAS_BIDIR, HAS_WINDOW, EVEN_D, UPCAST)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, qpos, q_bidir, bs, be, k_base, v_base, stride_ks, stride_vs, KEY_POS,
                            a2, b2, qk_scale, window, offs_n, offs_d, D, BLOCK_N, False, False, HAS_BIDIR, HAS_WINDOW, EVEN_D, UPCAST)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, qpos, q_bidir, bs, be, k_base, v_base, stride_ks, stride_vs, KEY_POS,
                            b2, hi2, qk_scale, window, offs_n, offs_d, D, BLOCK_N, True, False, HAS_BIDIR, HAS_WINDOW, EVEN_D, UPCAST)

    # sink heads: each image row also sees its own key (a sink row already saw it in the list)
    if is_sink_tile:
        kd = tl.load(k_base + qpos[:, None] * stride_ks + offs_d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0)
        vd = tl.load(v_base + qpos[:, None] * stride_vs + offs_d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0)
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
    tl.store(O + h.to(tl.int64) * stride_oh + qpos[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty), mask=valid[:, None] & dmask[None, :])
