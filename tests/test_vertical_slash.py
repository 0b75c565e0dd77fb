"""The index-based sparse attention of the MInference/MMInference baseline: its kept-set definition, the
chunked reference against SDPA under the explicit mask (float64), and the Triton kernel (interpreted on CPU)
against the reference, counts included."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # effective only before triton is first imported

from bsight.kernels import vertical_slash as _vs
from bsight.kernels.dispatch import LayerCall
from bsight.kernels.sparsity.layout import PromptLayout
from bsight.kernels.sparsity.masks import base_mask, materialize
from bsight.kernels.sparsity.metadata import LayoutMeta

TILE = _vs.TILE
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernel tests run compiled on a GPU, interpreted here


@pytest.fixture(scope="module")
def vs():
    """The kernel module; without a GPU its Triton kernel must be interpreted."""
    if not torch.cuda.is_available() and not _vs._is_interpreted():
        pytest.fail(
            "no GPU and the Triton kernel is compiled: set TRITON_INTERPRET=1 before triton is first imported "
            "(e.g. in CI's env)"
        )
    return _vs


def _layout(gen: torch.Generator, bidirectional: bool = False) -> PromptLayout:
    """Text and image segments of random lengths: ~250-400 tokens, 2-3 images, unaligned with tiles."""
    n = int(torch.randint(2, 4, (1,), generator=gen))
    segs = [("text", int(torch.randint(5, 40, (1,), generator=gen)))]
    for _ in range(n):
        segs += [
            ("image", int(torch.randint(40, 110, (1,), generator=gen))),
            ("text", int(torch.randint(3, 30, (1,), generator=gen))),
        ]
    return PromptLayout.from_segments(segs, bidirectional=bidirectional)


def _meta(gen: torch.Generator, bidirectional: bool = False) -> LayoutMeta:
    return LayoutMeta.build(_layout(gen, bidirectional))


def _index(vs, space, gen: torch.Generator, heads: int, group: int, split: list[int], block_heads: set[int]):
    """A random index: slash/vertical heads and block-sparse heads (every list free of duplicates)."""
    NT, N = space.num_tiles, space.size
    s = torch.randint(-TILE, N, (heads, 2, 5), generator=gen)
    offsets, offset_count, covered = vs.slash_tiles(s, torch.rand(heads, 2, 5, generator=gen) < 0.7, NT)
    columns, column_count = vs.distinct_sorted(
        torch.randint(0, N, (heads, 2, 12), generator=gen), torch.rand(heads, 2, 12, generator=gen) < 0.7
    )
    raw = torch.stack([torch.randperm(NT, generator=gen)[:2] for _ in range(heads * NT)]).view(heads, NT, 2)
    blocks, _ = vs.distinct_sorted(raw, torch.rand(heads, NT, 2, generator=gen) < 0.8, pad=-1)
    for h in range(heads):
        if h in block_heads:
            offset_count[h], column_count[h], covered[h] = 0, 0, 0
        else:
            blocks[h] = -1
    hs = torch.arange(heads, dtype=torch.int32)
    parts = (
        hs,
        hs // group,
        torch.tensor(split, dtype=torch.int32),
        offsets,
        offset_count,
        covered,
        columns,
        column_count,
        blocks,
    )
    return vs.SparseIndex(*(t.to(space.pos.device) for t in parts))


def _definition(space, index, h: int, x: int, y: int) -> bool:
    """The module docstring's kept-set definition, pair by pair."""
    pos, grp, bid = space.pos.tolist(), space.group.tolist(), space.bidir.tolist()
    qp, kp = pos[x], pos[y]
    if qp < 0 or kp < 0:
        return False
    base = kp <= qp or (bid[x] >= 0 and bid[x] == bid[y])
    if space.window:
        base = base and kp > qp - space.window
    if not base:
        return False
    g = grp[x] if int(index.split[h]) else 0
    if space.two_d and grp[y] != g:
        return True  # the other modality is kept whole
    m, n = x // TILE, y // TILE
    slash = (m - n) in index.offsets[h, g, : int(index.offset_count[h, g])].tolist()
    column = y in index.columns[h, g, : int(index.column_count[h, g])].tolist()
    block = n in index.blocks[h, m].tolist()
    return slash or column or block


@pytest.mark.parametrize(
    "two_d,bidirectional,window", [(False, False, None), (True, False, None), (False, True, 70), (True, True, None)]
)
def test_keep_mask_is_the_documented_definition(vs, two_d, bidirectional, window):
    gen = torch.Generator().manual_seed(11 + 7 * two_d + 3 * bidirectional)
    meta = _meta(gen, bidirectional)
    space = vs.Space.build(meta, window, two_d)
    index = _index(vs, space, gen, heads=3, group=1, split=[1, 1, 1] if two_d else [0, 1, 0], block_heads={2})
    got = vs.keep_mask(space, index, torch.arange(space.size))
    rows = torch.randint(0, space.size, (40,), generator=gen).tolist()
    for h in range(3):
        for x in rows:
            want = [_definition(space, index, h, x, y) for y in range(space.size)]
            assert got[h, x].tolist() == want, f"head {h} row {x}"
    # the model's own mask bounds every kept pair
    own = materialize(base_mask(meta, window), meta.length)[0]
    orig = got if space.coord is None else got[:, space.coord][:, :, space.coord]
    assert not (orig & ~own).any()


def test_slash_tiles_are_the_tiles_a_diagonal_crosses(vs):
    gen = torch.Generator().manual_seed(3)
    NT = 9
    s = torch.randint(-2 * TILE, NT * TILE, (4, 6), generator=gen)
    offsets, count, covered = vs.slash_tiles(s, torch.ones_like(s, dtype=torch.bool), NT)
    for r in range(4):
        want = set()
        for diag in s[r].tolist():
            for m in range(NT):
                for x in range(m * TILE, (m + 1) * TILE):
                    want.add(m - (x - diag) // TILE)
        want = {d for d in want if -NT < d < NT}
        got = offsets[r, : int(count[r])].tolist()
        assert got == sorted(want)
        assert torch.nonzero(covered[r]).flatten().sub(NT - 1).tolist() == sorted(want)


def test_distinct_sorted_drops_duplicates_and_invalid(vs):
    vals = torch.tensor([[5, 3, 5, 9, 3], [1, 1, 1, 1, 1]])
    ok = torch.tensor([[True, True, True, False, True], [True, False, True, True, False]])
    lists, count = vs.distinct_sorted(vals, ok, pad=-1)
    assert count.tolist() == [2, 1]
    assert lists[0, :2].tolist() == [3, 5] and lists[1, 0] == 1 and lists[1, 1] == -1


@pytest.mark.parametrize("two_d", [False, True])
def test_reference_equals_sdpa_under_the_explicit_mask(vs, two_d):
    gen = torch.Generator().manual_seed(21 + two_d)
    meta = _meta(gen)
    space = vs.Space.build(meta, None, two_d)
    Hq, Hkv, D, S = 4, 2, 16, meta.length
    index = _index(
        vs, space, gen, heads=Hq, group=Hq // Hkv, split=[1] * Hq if two_d else [0, 1, 1, 0], block_heads={3}
    )
    q, k, v = (torch.randn(h, S, D, generator=gen, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    out, kept = vs.sparse_attention(
        space.gather(q), space.gather(k), space.gather(v), space, index, 0.3, backend="reference"
    )
    out, kept = space.scatter(out), space.scatter(kept)
    mask = vs.keep_mask(space, index, torch.arange(space.size))
    if space.coord is not None:
        mask = mask[:, space.coord][:, :, space.coord]
    assert torch.equal(kept, mask.sum(-1))
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 0), v.repeat_interleave(2, 0), attn_mask=mask, scale=0.3
    )
    live = mask.any(-1)
    torch.testing.assert_close(out[live], ref[live], rtol=1e-10, atol=1e-10)
    assert not out[~live].any()  # a row that keeps no key gives zeros


@pytest.mark.parametrize(
    "two_d,bidirectional,window,dtype",
    [
        (False, False, None, torch.float32),
        (True, False, 90, torch.float32),
        (False, True, None, torch.bfloat16),
        (True, False, None, torch.float16),
        (True, True, 60, torch.float32),
    ],
)
def test_triton_kernel_matches_reference(vs, two_d, bidirectional, window, dtype):
    gen = torch.Generator().manual_seed(31 + 2 * two_d + bidirectional)
    meta = LayoutMeta.build(_layout(gen, bidirectional), DEVICE)
    Hq, Hkv, D, S = 4, 2, 32, meta.length
    space = vs.Space.build(meta, window, two_d)
    index = _index(
        vs, space, gen, heads=Hq, group=Hq // Hkv, split=[1] * Hq if two_d else [1, 0, 1, 0], block_heads={2}
    )
    q, k, v = (space.gather(torch.randn(h, S, D, generator=gen).to(DEVICE, dtype)) for h in (Hq, Hkv, Hkv))
    ref, kept_ref = vs.sparse_attention(q.float(), k.float(), v.float(), space, index, 0.25, backend="reference")
    out, kept = vs.sparse_attention(q, k, v, space, index, 0.25, backend="triton")
    assert torch.equal(kept.long(), kept_ref)
    valid = space.pos >= 0
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out[:, valid].float(), ref[:, valid], **tol)


def test_mminference_through_the_triton_kernel(vs):
    from bsight.plugins.methods.mminference import HeadPattern, MMInference

    gen = torch.Generator().manual_seed(5)
    meta = LayoutMeta.build(_layout(gen), DEVICE)
    Hq, Hkv, D, S = 4, 2, 32, meta.length
    q, k, v = (torch.randn(h, S, D, generator=gen).to(DEVICE) for h in (Hq, Hkv, Hkv))
    pats = [
        HeadPattern(boundary="2d_boundary", vertical_size=8, slash_size=20),
        HeadPattern(boundary="q_boundary", vertical_size=8, slash_size=20),
        HeadPattern(pattern="block_sparse", boundary="none", top_k=2),
        HeadPattern(pattern="dense"),
    ]
    call = LayerCall(layer_idx=0, scale=D**-0.5)
    opts = {"local_slashes": 4, "init_verticals": 2}
    ref, kept_ref = MMInference({**opts, "backend": "reference"}).attend(pats, q, k, v, meta, call)
    out, kept = MMInference({**opts, "backend": "triton"}).attend(pats, q, k, v, meta, call)
    assert torch.equal(kept, kept_ref)
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=2e-5)


def test_base_pair_count_matches_the_materialized_mask(vs):
    gen = torch.Generator().manual_seed(8)
    for bidirectional in (False, True):
        meta = _meta(gen, bidirectional)
        for window in (None, 1, 37, meta.length + 5):
            want = int(materialize(base_mask(meta, window), meta.length)[0].sum())
            assert vs.base_pair_count(meta, window) == want


def test_bad_inputs_are_named(vs):
    gen = torch.Generator().manual_seed(2)
    meta = _meta(gen)
    space = vs.Space.build(meta, None, True)
    index = _index(vs, space, gen, heads=2, group=1, split=[0, 1], block_heads=set())
    q = torch.randn(2, space.size, 16)
    with pytest.raises(ValueError, match="split == 1"):
        vs.sparse_attention(q, q, q, space, index, 1.0, backend="reference")
    good = _index(vs, space, gen, heads=2, group=1, split=[1, 1], block_heads=set())
    with pytest.raises(ValueError, match="backend"):
        vs.sparse_attention(q, q, q, space, good, 1.0, backend="cuda")
    with pytest.raises(ValueError, match="head_dim"):
        vs.sparse_attention_triton(
            torch.randn(2, space.size, 24),
            torch.randn(2, space.size, 24),
            torch.randn(2, space.size, 24),
            space,
            good,
            1.0,
        )
    longer = vs.Space.build(LayoutMeta.build(PromptLayout.from_segments([("text", 20 * TILE)])), None, True)
    with pytest.raises(ValueError, match="tiles"):
        vs.sparse_attention(q, q, q, longer, good, 1.0, backend="reference")
