"""The chunked reference attention against SDPA with an explicit boolean mask, in float64."""

from __future__ import annotations

import secrets

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bsight.kernels.reference import reference_attention
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.masks import head_mask, materialize
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.sparsity.planted import realistic_layout
from bsight.kernels.sparsity.strategies import layouts, windows


def explicit(q, k, v, meta, cats, window, scale):
    """SDPA over the materialized S x S mask, GQA by repeating k and v."""
    G = q.shape[0] // k.shape[0]
    mask = materialize(head_mask(meta, cats, window), meta.length, q.shape[0])
    return F.scaled_dot_product_attention(
        q, k.repeat_interleave(G, 0), v.repeat_interleave(G, 0), attn_mask=mask, scale=scale
    )


@settings(max_examples=60, deadline=None)
@given(
    layouts(max_tokens=48, max_images=5),
    windows(16),
    st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 3), (4, 4)]),
    st.integers(1, 40),
    st.data(),
)
def test_matches_explicit_mask_sdpa(lay, window, heads, chunk, data):
    Hq, Hkv = heads
    cats = torch.tensor(data.draw(st.lists(st.sampled_from([c.value for c in Category]), min_size=Hq, max_size=Hq)))
    meta = LayoutMeta.build(lay)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    D, S = 8, lay.length
    q, k, v = (torch.randn(h, S, D, generator=g, dtype=torch.float64) * 2 for h in (Hq, Hkv, Hkv))
    out = reference_attention(q, k, v, meta, cats, window=window, chunk_size=chunk, scale=0.4)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, explicit(q, k, v, meta, cats, window, 0.4), rtol=1e-10, atol=1e-10)


def test_half_precision_inputs_accumulate_in_float32():
    lay = realistic_layout(5, 24, prefix_tokens=9, label_tokens=3, question_tokens=11)
    meta = LayoutMeta.build(lay)
    seed = secrets.randbits(31)
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(h, lay.length, 16, generator=g, dtype=torch.float64) for h in (4, 2, 2))
    cats = torch.tensor([0, 1, 2, 3])
    want = explicit(q, k, v, meta, cats, None, 0.25)
    got = reference_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), meta, cats, scale=0.25, chunk_size=64)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=0.05, atol=0.05)


def test_never_builds_a_sequence_by_sequence_tensor(monkeypatch):
    """Every score tensor is [.., chunk, keys]: the chunk bounds the query dimension at any length."""
    lay = realistic_layout(8, 30, prefix_tokens=5, label_tokens=0, question_tokens=7, bidirectional=True)
    meta = LayoutMeta.build(lay)
    q, k, v = (torch.randn(h, lay.length, 8) for h in (4, 2, 2))
    shapes = []
    einsum = torch.einsum

    def spy(eq, *ops):
        out = einsum(eq, *ops)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "einsum", spy)
    reference_attention(q, k, v, meta, torch.tensor([0, 1, 2, 3]), chunk_size=16)
    assert shapes and all(s[2] <= 16 for s in shapes)


def test_rejects_mismatched_inputs():
    lay = realistic_layout(2, 6, prefix_tokens=3, label_tokens=1, question_tokens=2)
    meta = LayoutMeta.build(lay)
    S = lay.length
    q, kv = torch.randn(4, S, 8), torch.randn(3, S, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        reference_attention(q, kv, kv, meta, torch.zeros(4, dtype=torch.int32))
    kv = torch.randn(2, S, 8)
    with pytest.raises(ValueError, match="3 head categories for 4 query heads"):
        reference_attention(q, kv, kv, meta, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="does not match the layout"):
        reference_attention(q[:, :-1], kv[:, :-1], kv[:, :-1], meta, torch.zeros(4, dtype=torch.int32))
