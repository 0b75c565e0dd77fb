"""Layouts from token ids: segments, sinks, bidirectional regions, padding, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bsight.kernels.sparsity.layout import (
    LayoutError,
    LayoutSpec,
    PromptLayout,
    SinkPolicy,
    Span,
    layout_from_ids,
    layouts_from_batch,
)

START, END, PAD_IMG, PAD = 90, 91, 92, 0
TEXT_IDS = st.integers(1, 80)


def spec(bidirectional: bool = False, sinks: SinkPolicy = SinkPolicy(fraction=0.1), inner: bool = True) -> LayoutSpec:
    return LayoutSpec(
        start_ids=(START,),
        end_ids=(END,),
        inner_ids=(PAD_IMG,) if inner else (),
        bidirectional=bidirectional,
        sinks=sinks,
    )


@st.composite
def prompts(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids with images; returns the ids and each image's [start, end) (boundary tokens included)."""
    ids: list[int] = []
    spans = []
    for _ in range(draw(st.integers(0, 5))):
        ids += draw(st.lists(TEXT_IDS, max_size=4))  # 0 text tokens: adjacent images / image first
        inner = draw(st.integers(0, 9))
        spans.append((len(ids), len(ids) + inner + 2))
        ids += [START] + [PAD_IMG] * inner + [END]
    ids += draw(st.lists(TEXT_IDS, min_size=0 if spans else 1, max_size=4))  # 0: image last
    return ids, spans


@settings(max_examples=150, deadline=None)
@given(
    prompts(), st.booleans(), st.sampled_from([0.0, 0.1, 0.5]), st.integers(0, 3), st.sampled_from(["left", "right"])
)
def test_layout_from_ids_finds_every_image(prompt, bidirectional, fraction, pad, side):
    ids, spans = prompt
    mask = [1] * len(ids)
    if side == "left":
        ids, mask, off = [PAD] * pad + ids, [0] * pad + mask, pad
    else:
        ids, mask, off = ids + [PAD] * pad, mask + [0] * pad, 0
    sinks = SinkPolicy(fraction=fraction)
    lay = layout_from_ids(ids, spec(bidirectional, sinks), attention_mask=mask)
    assert (lay.valid_start, lay.valid_end, lay.length) == (off, off + len(ids) - pad, len(ids))
    assert [(s.start, s.end) for s in lay.spans] == [(a + off, b + off) for a, b in spans]
    for s in lay.spans:
        n = s.end - s.start
        assert s.sinks == tuple(range(s.start, s.start + max(1, math.ceil(round(fraction * n, 9)))))
        assert s.bidir == ((s.start + 1, s.end - 1) if bidirectional and n > 2 else None)
    assert lay.num_image_tokens + lay.num_text_tokens == len(ids) - pad
    flat = lay.unpadded()
    assert flat.valid_start == 0 and flat.length == len(ids) - pad
    assert [(s.start, s.end) for s in flat.spans] == spans
    # the same structure built from segment lengths gives the same layout
    parts, pos = [], 0
    for a, b in spans:
        parts += [("text", a - pos), ("image", b - a)]
        pos = b
    parts.append(("text", flat.length - pos))
    assert PromptLayout.from_segments(parts, sinks, bidirectional) == flat


def test_no_image_one_image_and_huge_image():
    assert layout_from_ids([5, 6, 7], spec()).spans == ()
    one = layout_from_ids([5, START, PAD_IMG, END], spec())  # image last, 1 image token
    assert [(s.start, s.end) for s in one.spans] == [(1, 4)]
    n = 16384
    big = layout_from_ids([START] + [PAD_IMG] * n + [END, 7], spec(True, SinkPolicy(fraction=0.01)), expected_inner=[n])
    (s,) = big.spans
    assert (s.start, s.end, s.bidir) == (0, n + 2, (1, n + 1))
    assert len(s.sinks) == math.ceil(0.01 * (n + 2))


def test_video_frames_split_one_segment():
    ids = [1, START] + [PAD_IMG] * 6 + [END, 2]
    lay = layout_from_ids(ids, spec(), frame_splits={0: [3, 3, 2]}, expected_inner=[6])
    assert [(s.start, s.end) for s in lay.spans] == [(1, 4), (4, 7), (7, 9)]
    assert [s.sinks[0] for s in lay.spans] == [1, 4, 7]
    with pytest.raises(LayoutError, match="does not cover"):
        layout_from_ids(ids, spec(), frame_splits={0: [3, 3]})
    with pytest.raises(LayoutError, match="frame splits for images \\[1\\]"):
        layout_from_ids(ids, spec(), frame_splits={1: [8]})
    with pytest.raises(LayoutError, match="bidirectional"):
        layout_from_ids(ids, spec(bidirectional=True), frame_splits={0: [4, 4]})


@pytest.mark.parametrize(
    "ids, kwargs, message",
    [
        ([1, START, PAD_IMG, PAD_IMG, 2], {}, "start at position 1 has no end token"),
        ([1, PAD_IMG, END, 2], {}, "end at position 2 without a start token"),
        ([START, PAD_IMG, START, END], {}, "start at position 2 inside the segment opened at 0"),
        ([START, PAD_IMG, 7, END], {}, "token 7 at position 2 inside the segment opened at 0"),
        (
            [1, START, PAD_IMG, PAD_IMG, PAD_IMG, END],
            {"expected_inner": [2]},
            "opened at position 1 holds 3 tokens but the model's grid says 2",
        ),
        ([START, PAD_IMG, END], {"expected_inner": [1, 4]}, "2 images expected from the grid, 1 found"),
        ([1, PAD_IMG, START, PAD_IMG, END], {}, "image token 92 at position 1 is outside every image segment"),
        ([1, 2, 3, 4], {"attention_mask": [1, 0, 1, 1]}, "padding at position 1 is inside the prompt"),
    ],
)
def test_malformed_ids_name_the_position(ids, kwargs, message):
    with pytest.raises(LayoutError, match=message):
        layout_from_ids(ids, spec(), **kwargs)


def test_batch_with_left_and_right_padding():
    rows = [[PAD, PAD, 3, START, PAD_IMG, END, 4], [3, START, PAD_IMG, PAD_IMG, END, 4, PAD]]
    mask = [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]]
    left, right = layouts_from_batch(np.array(rows), spec(), np.array(mask), expected_inner=[[1], [2]])
    assert (left.valid_start, left.valid_end, [(s.start, s.end) for s in left.spans]) == (2, 7, [(3, 6)])
    assert (right.valid_start, right.valid_end, [(s.start, s.end) for s in right.spans]) == (0, 6, [(1, 5)])
    assert left.unpadded().spans[0].start == 1
    with pytest.raises(LayoutError, match="row 1: the image opened at position 1 holds 2"):
        layouts_from_batch(rows, spec(), mask, expected_inner=[[1], [1]])
    with pytest.raises(LayoutError, match="expected_inner has 1 rows for a batch of 2"):
        layouts_from_batch(rows, spec(), mask, expected_inner=[[1]])


def test_sink_policies():
    frac = SinkPolicy(fraction=0.3)
    assert frac.sink_offsets(10) == (0, 1, 2)  # 0.3 * 10 is 3, not ceil(3.0000000000000004)
    assert SinkPolicy(fraction=0.0).sink_offsets(5) == (0,)
    assert SinkPolicy(fraction=1.0).sink_offsets(4) == (0, 1, 2, 3)
    assert SinkPolicy(kind="offsets", offsets=(9, 2, 40)).sink_offsets(20) == (2, 9)
    for bad in (
        {"kind": "offsets"},
        {"kind": "offsets", "offsets": (-1,)},
        {"kind": "fraction", "offsets": (1,)},
        {"kind": "pct"},
        {"fraction": 1.5},
    ):
        with pytest.raises(ValueError):
            SinkPolicy(**bad)
    lay = PromptLayout.from_segments([("text", 2), ("image", 10)], frac)
    assert lay.with_sinks(SinkPolicy(kind="offsets", offsets=(4,))).spans[0].sinks == (6,)


def test_spec_and_layout_validation():
    with pytest.raises(ValueError, match="start and end ids must differ"):
        LayoutSpec(start_ids=(1,), end_ids=(1,))
    with pytest.raises(LayoutError, match="overlaps"):
        PromptLayout(10, (Span(0, 5, (0,)), Span(4, 8, (4,))))
    with pytest.raises(LayoutError, match="sinks"):
        PromptLayout(10, (Span(0, 5, (6,)),))
    with pytest.raises(LayoutError, match="bidirectional region"):
        PromptLayout(10, (Span(2, 5, (2,), (1, 4)),))
    with pytest.raises(LayoutError, match="image length >= 1"):
        PromptLayout.from_segments([("text", 2), ("image", 0)])
    assert layout_from_ids([START, 7, END], spec(inner=False)).spans[0].bidir is None
