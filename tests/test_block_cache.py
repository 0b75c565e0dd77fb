"""The per-prompt mask cache (``LayoutMeta.blocks``): later layers reuse the masks bit for bit, and the budget
bounds what is kept."""

from __future__ import annotations

import pytest
import torch

from bsight.harness.characterize import layer_nmse
from bsight.kernels.reference import reference_attention
from bsight.kernels.sparsity.metadata import BlockCache, LayoutMeta
from bsight.kernels.sparsity.planted import realistic_layout


def _qkv(S: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, S, 32, generator=g), torch.randn(2, S, 32, generator=g), torch.randn(2, S, 32, generator=g))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("window", [None, 40])
def test_cached_masks_give_the_results_of_fresh_ones(bidirectional, window):
    layout = realistic_layout(4, 24, prefix_tokens=8, label_tokens=3, question_tokens=6, bidirectional=bidirectional)
    cached = LayoutMeta.build(layout.unpadded())
    cats = torch.tensor([0, 1, 2, 3])
    for seed in range(3):  # three "layers" over one meta: the later ones read the cache
        q, k, v = _qkv(cached.length, seed)
        fresh = LayoutMeta.build(layout.unpadded())
        for chunk in (7, 256):
            assert torch.equal(
                reference_attention(q, k, v, cached, cats, window=window, chunk_size=chunk),
                reference_attention(q, k, v, fresh, cats, window=window, chunk_size=chunk),
            )
            assert torch.equal(
                layer_nmse(q, k, v, cached, window=window, chunk_size=chunk).nmse,
                layer_nmse(q, k, v, fresh, window=window, chunk_size=chunk).nmse,
            )
    assert cached.blocks.nbytes > 0


def test_the_budget_bounds_what_is_kept():
    cache = BlockCache(budget=100)
    built = []

    def block(n):
        built.append(n)
        return torch.zeros(n, dtype=torch.uint8)

    cache.get("a", lambda: block(60))
    cache.get("a", lambda: block(60))
    assert built == [60] and cache.nbytes == 60
    cache.get("b", lambda: block(60))  # over budget: built, returned, not kept
    cache.get("b", lambda: block(60))
    assert built == [60, 60, 60] and cache.nbytes == 60
    t = cache.get("c", lambda: (torch.zeros(10, dtype=torch.float32), None))  # tuples count their tensors
    assert isinstance(t, tuple) and cache.nbytes == 100
