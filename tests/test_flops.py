"""Exact kept-pair counts against brute-force counting of materialized masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bsight.harness.figures import flops_cdf
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.flops import (
    KeptPairs,
    block_pair_counts,
    dataset_reductions,
    empirical_cdf,
    layer_pair_table,
    model_flops,
    pair_counts,
    reduction_from_pairs,
)
from bsight.kernels.sparsity.layout import PromptLayout
from bsight.kernels.sparsity.masks import head_mask, materialize
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.sparsity.planted import realistic_layout
from bsight.kernels.sparsity.strategies import layouts, windows

ALL = torch.tensor([c.value for c in Category])


def brute(lay: PromptLayout, window: int | None) -> list[int]:
    return materialize(head_mask(LayoutMeta.build(lay), ALL, window), lay.length, len(ALL)).sum((1, 2)).tolist()


@settings(max_examples=200, deadline=None)
@given(layouts(max_tokens=70, max_images=6), windows(30))
def test_pair_counts_equal_brute_force(lay, window):
    assert list(pair_counts(lay, window)) == brute(lay, window)


@settings(max_examples=200, deadline=None)
@given(layouts(max_tokens=70, max_images=6), windows(30), st.integers(1, 16), st.integers(1, 1 << 12))
def test_block_pair_counts_equal_brute_force(lay, window, block, max_elements):
    """Kept pairs of every block x block tile (the edge tiles' missing rows and keys count as masked), per
    category, in query chunks of any size, equal the materialized mask's sums over each tile."""
    S = lay.length
    mask = materialize(head_mask(LayoutMeta.build(lay), ALL, window), S, len(ALL))
    pad = -S % block
    tiles = torch.nn.functional.pad(mask, (0, pad, 0, pad)).view(len(ALL), -1, block, (S + pad) // block, block)
    got = block_pair_counts(LayoutMeta.build(lay), block, window, max_elements)
    assert torch.equal(got, tiles.sum((2, 4), dtype=torch.int32))


def test_known_values():
    causal = PromptLayout.from_segments([("text", 10)])
    assert pair_counts(causal) == KeptPairs(55, 55, 55, 55)
    assert pair_counts(causal, window=3) == KeptPairs(*[1 + 2 + 3 * 8] * 4)
    # two 4-token images, sink = first token: the second image's queries lose the first image's other tokens
    lay = PromptLayout.from_segments([("image", 4), ("image", 4)])
    dense, sink, intra, both = pair_counts(lay)
    assert dense == 36 and intra == 10 + 10 and both == 10 + 10 + 4
    # sink: each query sees the start tokens (the sinks) of its own and earlier images, plus itself
    assert sink == (1 + 2 + 2 + 2) + (2 + 3 + 3 + 3)


@settings(max_examples=40, deadline=None)
@given(
    layouts(max_tokens=50, max_images=5), st.lists(windows(20), min_size=1, max_size=3), st.integers(1, 4), st.data()
)
def test_model_reduction_equals_per_head_brute_force(lay, layer_windows, heads, data):
    cats = np.array(
        data.draw(
            st.lists(
                st.lists(st.sampled_from(list(range(4))), min_size=heads, max_size=heads),
                min_size=len(layer_windows),
                max_size=len(layer_windows),
            )
        )
    )
    meta = LayoutMeta.build(lay)
    kept = dense = 0
    for layer, w in enumerate(layer_windows):
        m = materialize(head_mask(meta, torch.tensor(cats[layer]), w), lay.length, heads)
        kept += int(m.sum())
        dense += heads * brute(lay, w)[0]
    out = model_flops(lay, cats, layer_windows, head_dim=64)
    assert out["dense_flops"] == 4 * 64 * dense and out["sparse_flops"] == 4 * 64 * kept
    assert out["reduction"] == pytest.approx(1 - kept / dense)
    table = layer_pair_table(lay, layer_windows)
    assert reduction_from_pairs(table, cats) == pytest.approx(1 - kept / dense)
    assert reduction_from_pairs(np.stack([table, table]), cats) == pytest.approx([1 - kept / dense] * 2)
    assert dataset_reductions([lay, lay], cats, layer_windows) == pytest.approx([1 - kept / dense] * 2)


def test_realistic_prompt_saves_most_image_to_image_work():
    """36 images of 1024 tokens: intra_image keeps about 1/36 of the image-image work, so >90% savings."""
    lay = realistic_layout(36, 1024, label_tokens=16)
    p = pair_counts(lay)
    assert 1 - p.intra_image / p.dense > 0.9
    assert p.sink < p.intra_image < p.intra_image_sink < p.dense


def test_padded_layout_counts_the_unpadded_prompt():
    flat = PromptLayout.from_segments([("text", 3), ("image", 5), ("text", 2)])
    padded = PromptLayout(
        13, tuple(type(s)(s.start + 3, s.end + 3, tuple(x + 3 for x in s.sinks)) for s in flat.spans), 3, 13
    )
    assert pair_counts(padded) == pair_counts(flat)


def test_cdf_and_figure():
    x, y = empirical_cdf([0.5, 0.1, 0.3, 0.3])
    assert x.tolist() == [0.1, 0.3, 0.3, 0.5] and y.tolist() == [0.25, 0.5, 0.75, 1.0]
    fig = flops_cdf({"a": [0.1, 0.4], "b": [0.2]})
    assert len(fig.axes[0].lines) == 2
    with pytest.raises(ValueError, match="categories must be"):
        reduction_from_pairs(np.ones((3, 4)), np.zeros((2, 5), dtype=int))
