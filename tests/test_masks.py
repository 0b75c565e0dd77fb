"""Mask predicates against the rules of DESIGN.md section 1, written out pair by pair."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_mask

from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.layout import PromptLayout
from bsight.kernels.sparsity.masks import base_mask, category_mask, head_mask, materialize, sliding_window
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.sparsity.strategies import layouts, windows


def design_mask(lay: PromptLayout, cat: Category, window: int | None) -> torch.Tensor:
    """The mask a head applies, straight from the design, pair by pair: model mask AND category rule."""
    seg = {p: i for i, s in enumerate(lay.spans) for p in range(s.start, s.end)}
    region = {p: i for i, s in enumerate(lay.spans) if s.bidir for p in range(*s.bidir)}
    sinks = {p for s in lay.spans for p in s.sinks}

    def keep(q: int, kv: int) -> bool:
        model = (kv <= q or (q in region and region.get(kv) == region[q])) and (window is None or kv > q - window)
        if not model:
            return False
        if q not in seg or kv not in seg or cat is Category.DENSE:  # text queries and text keys are always kept
            return True
        same = seg[q] == seg[kv]
        if cat is Category.INTRA_IMAGE:
            return same
        if cat is Category.INTRA_IMAGE_SINK:
            return same or kv in sinks
        return kv in sinks or kv == q  # sink: every visible sink (earlier images' and its own), itself

    return torch.tensor([[keep(q, kv) for kv in range(lay.length)] for q in range(lay.length)])


@settings(max_examples=60, deadline=None)
@given(layouts(max_tokens=40), windows(12))
def test_head_mask_follows_the_design(lay, window):
    meta = LayoutMeta.build(lay)
    cats = torch.tensor([c.value for c in Category])
    got = materialize(head_mask(meta, cats, window), lay.length, len(cats))
    S = lay.length
    for c in Category:
        want = design_mask(lay, c, window)
        assert torch.equal(got[c.value], want), c
        # the single-category form agrees with the per-head form
        single = materialize(
            lambda b, h, q, kv: base_mask(meta, window)(b, h, q, kv) & category_mask(meta, c)(b, h, q, kv), S
        )[0]
        assert torch.equal(single, want)
    dense, sink, intra, both = got
    assert bool((sink <= both).all() and (intra <= both).all() and (both <= dense).all())
    assert bool(got.diagonal(dim1=1, dim2=2).all())  # every query sees itself: no empty softmax row


@settings(max_examples=25, deadline=None)
@given(layouts(max_tokens=32), windows(8), st.lists(st.sampled_from(list(Category)), min_size=1, max_size=5))
def test_mask_mods_run_under_flex_attention_vmap(lay, window, heads):
    """FlexAttention evaluates mask mods on scalar indices under vmap; results match the broadcast form."""
    meta = LayoutMeta.build(lay)
    cats = torch.tensor([c.value for c in heads])
    mod = head_mask(meta, cats, window)
    flex = create_mask(mod, 1, len(heads), lay.length, lay.length, device="cpu")[0]
    assert torch.equal(flex, materialize(mod, lay.length, len(heads)))


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="sliding window must be >= 1"):
        sliding_window(0)
