"""LayoutMeta: the O(S) tables every attention path reads, checked against a direct reading of the layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from bsight.kernels.sparsity.layout import LayoutError, PromptLayout
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.sparsity.strategies import layouts


@settings(max_examples=150, deadline=None)
@given(layouts(max_tokens=80, max_images=6))
def test_tables_match_the_layout(lay: PromptLayout):
    m = LayoutMeta.build(lay)
    S, n = lay.length, lay.num_images
    seg = [-1] * S
    group = [-1] * S
    sink = [False] * S
    for i, s in enumerate(lay.spans):
        for p in range(s.start, s.end):
            seg[p] = i
        if s.bidir:
            for p in range(*s.bidir):
                group[p] = i
        for p in s.sinks:
            sink[p] = True
    assert m.seg_id.tolist() == seg and m.bidir_group.tolist() == group and m.is_sink.tolist() == sink
    assert m.img_start.tolist() == [s.start for s in lay.spans] and m.img_end.tolist() == [s.end for s in lay.spans]
    assert m.has_bidirectional == any(s.bidir for s in lay.spans)
    # the host copies primed at build time agree with the device tables they stand for
    assert m.host_tables == (m.img_start.tolist(), m.img_end.tolist(), m.glob_before.tolist())
    assert all(t.dtype == torch.int32 for t in (m.text_before, m.glob_before, m.sink_ptr, m.text_idx, m.glob_idx))
    text = [p for p in range(S) if seg[p] < 0]
    assert m.text_idx.tolist() == text
    glob = m.glob_idx.tolist()
    assert glob == [p for p in range(S) if seg[p] < 0 or sink[p]]
    for i, s in enumerate(lay.spans):
        # image i's gathered lists are prefixes: earlier text, and earlier text plus earlier images' sinks
        assert m.text_idx[: m.text_before[i]].tolist() == [p for p in text if p < s.start]
        assert glob[: m.glob_before[i]] == [p for p in range(s.start) if seg[p] < 0 or (sink[p] and seg[p] < i)]
        assert m.sink_idx[m.sink_ptr[i] : m.sink_ptr[i + 1]].tolist() == list(s.sinks)
    assert all(
        t.dtype == torch.int32 for t in (m.seg_id, m.bidir_group, m.text_idx, m.glob_idx, m.sink_idx, m.sink_ptr)
    )
    # O(S) memory: no table is larger than the sequence plus the image count
    tables = [m.seg_id, m.is_sink, m.bidir_group, m.img_start, m.img_end, m.bidir_start, m.bidir_end, m.text_idx]
    tables += [m.text_before, m.glob_idx, m.glob_before, m.sink_idx, m.sink_ptr]
    assert max(t.numel() for t in tables) <= S + n + 1


def test_padded_layout_is_rejected_until_unpadded():
    lay = PromptLayout(
        8, PromptLayout.from_segments([("text", 1), ("image", 3), ("text", 1)]).spans, valid_start=0, valid_end=5
    )
    with pytest.raises(LayoutError, match="unpadded"):
        LayoutMeta.build(lay)
    assert LayoutMeta.build(lay.unpadded()).length == 5


def test_no_images():
    m = LayoutMeta.build(PromptLayout.from_segments([("text", 7)]))
    assert m.num_images == 0 and not m.has_bidirectional
    assert m.seg_id.tolist() == [-1] * 7 and m.glob_idx.tolist() == list(range(7)) and m.sink_ptr.tolist() == [0]
