"""Hypothesis strategies for random prompt layouts (needs the ``test`` extra: ``pip install bsight[test]``).

Shared by the tests of masks, FLOPs, the reference attention and the kernel, so that all of them are checked
on the same edge cases: images first or last, adjacent images with no text between, one image, no image,
1-token images, bidirectional images, fraction and fixed-offset sinks.
"""

from __future__ import annotations

from hypothesis import strategies as st

from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy


@st.composite
def sink_policies(draw: st.DrawFn, max_offset: int = 12) -> SinkPolicy:
    """Fraction policies (including 0: only the start token) and fixed-offset policies."""
    if draw(st.booleans()):
        return SinkPolicy(kind="fraction", fraction=draw(st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.5, 1.0])))
    offsets = draw(st.lists(st.integers(0, max_offset), min_size=1, max_size=4, unique=True))
    return SinkPolicy(kind="offsets", offsets=tuple(offsets))


@st.composite
def layouts(
    draw: st.DrawFn,
    max_tokens: int = 64,
    max_images: int = 5,
    bidirectional: bool | None = None,
) -> PromptLayout:
    """Unpadded layouts of about ``max_tokens`` tokens (at most one more): text runs around 0..max_images images."""
    n_images = draw(st.integers(0, max_images))
    budget = max_tokens
    parts: list[tuple[str, int]] = []
    for _ in range(n_images):
        text = draw(st.integers(0, max(0, min(6, budget - n_images))))
        image = draw(st.integers(1, max(1, min(16, budget - text - 1))))
        if text + image > budget:
            break
        parts += [("text", text), ("image", image)]
        budget -= text + image
    parts.append(("text", draw(st.integers(0 if parts else 1, max(1, min(6, budget))))))
    bidir = draw(st.booleans()) if bidirectional is None else bidirectional
    return PromptLayout.from_segments(parts, draw(sink_policies()), bidirectional=bidir)


def windows(max_window: int = 20) -> st.SearchStrategy[int | None]:
    """No sliding window, or a window of 1..max_window tokens."""
    return st.one_of(st.none(), st.integers(1, max_window))
