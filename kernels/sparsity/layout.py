"""Prompt layout: where a prompt's image (or passage) segments are, read from token ids alone.

The layout is all BlindSight needs at run time: no tokenizer and no attention scores. An adapter supplies a
:class:`LayoutSpec` (special-token ids, sink policy, bidirectional image attention); :func:`layout_from_ids`
turns one row of token ids into a :class:`PromptLayout`, and :func:`layouts_from_batch` does so for a padded
batch. Positions are absolute in the (possibly padded) row; :meth:`PromptLayout.unpadded` re-bases them on the
first non-padding token, which is what the attention paths consume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class LayoutError(ValueError):
    """A prompt's token ids do not form a valid layout; the message names the offending position."""


class SinkPolicy(BaseModel):
    """Which tokens of each segment are its attention sinks.

    ``fraction`` (Qwen family): the first ``ceil(fraction * len)`` tokens, at least one (the start token).
    ``offsets`` (Gemma 3): fixed offsets from the segment's start token, found by characterization;
    offsets beyond a segment's length are dropped.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field("fraction", pattern="^(fraction|offsets)$")
    fraction: float = Field(0.01, ge=0.0, le=1.0)
    offsets: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> SinkPolicy:
        if self.kind == "offsets" and not self.offsets:
            raise ValueError("sink policy 'offsets' needs at least one offset")
        if self.kind == "fraction" and self.offsets:
            raise ValueError("sink offsets are only used with kind 'offsets'")
        if any(o < 0 for o in self.offsets):
            raise ValueError("sink offsets must be >= 0")
        return self

    def sink_offsets(self, length: int) -> tuple[int, ...]:
        """Offsets (from the segment start) of the sinks of a segment of ``length`` tokens."""
        if length <= 0:
            return ()
        if self.kind == "fraction":
            # round() first so that e.g. 0.3 * 10 = 3.0000000000000004 gives 3 sinks, not 4
            n = max(1, math.ceil(round(self.fraction * length, 9)))
            return tuple(range(min(n, length)))
        return tuple(sorted({o for o in self.offsets if o < length}))


class LayoutSpec(BaseModel):
    """How an adapter's token ids delimit segments.

    A segment runs from a start token to the matching end token, both included. When ``inner_ids`` is
    given, every token strictly inside must be one of them (image pads / soft tokens). With
    ``bidirectional``, the tokens strictly inside a segment attend to each other bidirectionally (Gemma 3
    images); the boundary tokens stay causal, as in transformers' own mask.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    inner_ids: tuple[int, ...] = ()
    bidirectional: bool = False
    sinks: SinkPolicy = SinkPolicy()

    @model_validator(mode="after")
    def _check(self) -> LayoutSpec:
        if not self.start_ids or not self.end_ids:
            raise ValueError("a layout spec needs at least one start id and one end id")
        if set(self.start_ids) & set(self.end_ids):
            raise ValueError("start and end ids must differ")
        return self


@dataclass(frozen=True)
class Span:
    """One image (or passage) segment: ``[start, end)``, boundary tokens included."""

    start: int
    end: int
    sinks: tuple[int, ...]  # absolute positions, sorted, inside [start, end)
    bidir: tuple[int, int] | None = None  # [start, end) of the bidirectional region, if any

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class PromptLayout:
    """Segments of one prompt row. Everything in ``[valid_start, valid_end)`` outside a span is text."""

    length: int
    spans: tuple[Span, ...] = ()
    valid_start: int = 0
    valid_end: int = -1  # -1 means ``length``

    def __post_init__(self) -> None:
        if self.valid_end == -1:
            object.__setattr__(self, "valid_end", self.length)
        if not 0 <= self.valid_start <= self.valid_end <= self.length:
            raise LayoutError(f"valid range [{self.valid_start}, {self.valid_end}) outside a row of {self.length}")
        prev = self.valid_start
        for s in self.spans:
            if s.start < prev or s.end > self.valid_end or s.end <= s.start:
                raise LayoutError(f"segment [{s.start}, {s.end}) overlaps another or leaves the valid range")
            if any(not s.start <= p < s.end for p in s.sinks) or list(s.sinks) != sorted(set(s.sinks)):
                raise LayoutError(
                    f"sinks {s.sinks} of segment [{s.start}, {s.end}) must be sorted, distinct and inside it"
                )
            if s.bidir is not None and not s.start <= s.bidir[0] < s.bidir[1] <= s.end:
                raise LayoutError(
                    f"bidirectional region {s.bidir} of segment [{s.start}, {s.end}) must be non-empty and inside it"
                )
            prev = s.end

    @property
    def num_images(self) -> int:
        return len(self.spans)

    @property
    def num_valid(self) -> int:
        return self.valid_end - self.valid_start

    @property
    def num_image_tokens(self) -> int:
        return sum(s.length for s in self.spans)

    @property
    def num_text_tokens(self) -> int:
        return self.num_valid - self.num_image_tokens

    def unpadded(self) -> PromptLayout:
        """The same layout re-based so that position 0 is the first non-padding token."""
        o = self.valid_start
        if o == 0 and self.valid_end == self.length:
            return self
        spans = tuple(
            Span(
                s.start - o,
                s.end - o,
                tuple(p - o for p in s.sinks),
                None if s.bidir is None else (s.bidir[0] - o, s.bidir[1] - o),
            )
            for s in self.spans
        )
        return PromptLayout(length=self.num_valid, spans=spans)

    def causal(self) -> PromptLayout:
        """The same segments and sinks without bidirectional regions: what a layer that keeps image attention
        causal sees (Gemma 4's full-attention layers, while its sliding layers see images bidirectionally)."""
        if all(s.bidir is None for s in self.spans):
            return self
        spans = tuple(Span(s.start, s.end, s.sinks) for s in self.spans)
        return PromptLayout(self.length, spans, self.valid_start, self.valid_end)

    def with_sinks(self, policy: SinkPolicy) -> PromptLayout:
        """The same segments with sinks recomputed under another policy (config overrides, sweeps)."""
        spans = tuple(
            Span(s.start, s.end, tuple(s.start + o for o in policy.sink_offsets(s.length)), s.bidir) for s in self.spans
        )
        return PromptLayout(self.length, spans, self.valid_start, self.valid_end)

    @classmethod
    def from_segments(
        cls,
        kinds_and_lengths: Sequence[tuple[str, int]],
        sinks: SinkPolicy = SinkPolicy(),
        bidirectional: bool = False,
    ) -> PromptLayout:
        """Build a layout from ``[("text", 64), ("image", 1024), ...]`` (benchmarks, tests, synthetic data).

        Image segments are taken to include their boundary tokens; with ``bidirectional`` the tokens strictly
        inside attend bidirectionally, as :func:`layout_from_ids` would produce for a Gemma-style spec.
        """
        pos, spans = 0, []
        for i, (kind, n) in enumerate(kinds_and_lengths):
            if kind not in ("text", "image") or n < 0 or (kind == "image" and n == 0):
                raise LayoutError(
                    f"segment {i} {(kind, n)!r}: kind must be 'text' or 'image', text length >= 0, image length >= 1"
                )
            if kind == "image":
                bidir = (pos + 1, pos + n - 1) if bidirectional and n > 2 else None
                spans.append(Span(pos, pos + n, tuple(pos + o for o in sinks.sink_offsets(n)), bidir))
            pos += n
        return cls(length=pos, spans=tuple(spans))


def _valid_range(mask: np.ndarray | None, length: int, row: int) -> tuple[int, int]:
    if mask is None:
        return 0, length
    nz = np.flatnonzero(mask)
    if nz.size == 0:
        return 0, 0
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    if nz.size != hi - lo:
        hole = int(np.flatnonzero(~mask[lo:hi].astype(bool))[0]) + lo
        raise LayoutError(
            f"row {row}: padding at position {hole} is inside the prompt; only left or right padding is supported"
        )
    return lo, hi


def layout_from_ids(
    ids: Sequence[int] | np.ndarray,
    spec: LayoutSpec,
    attention_mask: Sequence[int] | np.ndarray | None = None,
    expected_inner: Sequence[int] | None = None,
    frame_splits: dict[int, Sequence[int]] | None = None,
    row: int = 0,
) -> PromptLayout:
    """Read one row's segments from its token ids.

    ``expected_inner[i]``, when given, is the number of tokens the model's grid says image ``i`` holds
    between its boundary tokens; a mismatch is an error. ``frame_splits[i]`` splits image ``i`` into
    consecutive segments of the given lengths (video frames that share one pair of boundary tokens; the
    first frame holds the start token, the last the end token). With ``spec.inner_ids``, an image token
    outside every segment is an error too: the model would fill it with image features that the layout
    would treat as text.
    """
    ids = np.asarray(ids)
    n = int(ids.shape[0])
    mask = None if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask is not None and mask.shape != ids.shape:
        raise LayoutError(f"row {row}: attention mask of shape {mask.shape} for ids of shape {ids.shape}")
    lo, hi = _valid_range(mask, n, row)
    body = ids[lo:hi]
    starts = np.flatnonzero(np.isin(body, spec.start_ids)) + lo
    ends = np.flatnonzero(np.isin(body, spec.end_ids)) + lo
    events = sorted([(int(p), 0) for p in starts] + [(int(p), 1) for p in ends])
    bounds: list[tuple[int, int]] = []  # (start token, end token) of each image
    open_at: int | None = None
    for pos, is_end in events:
        if not is_end:
            if open_at is not None:
                raise LayoutError(
                    f"row {row}: segment start at position {pos} inside the segment opened at {open_at} (no "
                    "end token between)"
                )
            open_at = pos
            continue
        if open_at is None:
            raise LayoutError(f"row {row}: segment end at position {pos} without a start token")
        bounds.append((open_at, pos))
        open_at = None
    if open_at is not None:
        raise LayoutError(f"row {row}: segment start at position {open_at} has no end token")
    if expected_inner is not None and len(expected_inner) != len(bounds):
        raise LayoutError(
            f"row {row}: {len(expected_inner)} images expected from the grid, {len(bounds)} found in the ids"
        )
    bad_keys = sorted(set(frame_splits or {}) - set(range(len(bounds))))
    if bad_keys:
        raise LayoutError(f"row {row}: frame splits for images {bad_keys}, but the row has {len(bounds)} images")
    if spec.inner_ids:
        _check_no_stray_image_tokens(ids, spec, lo, hi, bounds, row)
    spans: list[Span] = []
    for index, (start, end_tok) in enumerate(bounds):
        inner = None if expected_inner is None else expected_inner[index]
        split = None if frame_splits is None else frame_splits.get(index)
        spans.extend(_close_span(ids, spec, start, end_tok, inner, split, row))
    return PromptLayout(length=n, spans=tuple(spans), valid_start=lo, valid_end=hi)


def _check_no_stray_image_tokens(
    ids: np.ndarray, spec: LayoutSpec, lo: int, hi: int, bounds: list[tuple[int, int]], row: int
) -> None:
    inside = np.zeros(hi - lo, dtype=bool)
    for a, b in bounds:
        inside[a - lo : b + 1 - lo] = True
    stray = np.flatnonzero(np.isin(ids[lo:hi], spec.inner_ids) & ~inside)
    if stray.size:
        p = int(stray[0]) + lo
        raise LayoutError(
            f"row {row}: image token {int(ids[p])} at position {p} is outside every image segment (start/end "
            "tokens missing?)"
        )


def _close_span(
    ids: np.ndarray,
    spec: LayoutSpec,
    start: int,
    end_tok: int,
    expected_inner: int | None,
    frame_split: Sequence[int] | None,
    row: int,
) -> list[Span]:
    end = end_tok + 1
    inner = end_tok - start - 1
    if spec.inner_ids:
        bad = np.flatnonzero(~np.isin(ids[start + 1 : end_tok], spec.inner_ids))
        if bad.size:
            p = int(bad[0]) + start + 1
            raise LayoutError(
                f"row {row}: token {int(ids[p])} at position {p} inside the segment opened at {start} is not "
                "an image token"
            )
    if expected_inner is not None and inner != expected_inner:
        raise LayoutError(
            f"row {row}: the image opened at position {start} holds {inner} tokens but the model's grid says "
            f"{expected_inner}"
        )
    lengths = [end - start] if frame_split is None else [int(x) for x in frame_split]
    if sum(lengths) != end - start or any(x <= 0 for x in lengths):
        raise LayoutError(f"row {row}: frame split {lengths} does not cover the segment [{start}, {end})")
    if spec.bidirectional and len(lengths) > 1:
        # the model's bidirectional region would span several segments, which no category can express
        raise LayoutError(f"row {row}: frame split of the segment opened at {start} under a bidirectional layout spec")
    out, pos = [], start
    for n in lengths:
        bidir = (start + 1, end - 1) if spec.bidirectional and inner > 0 else None
        out.append(Span(pos, pos + n, tuple(pos + o for o in spec.sinks.sink_offsets(n)), bidir))
        pos += n
    return out


def layouts_from_batch(
    input_ids: np.ndarray | Sequence[Sequence[int]],
    spec: LayoutSpec,
    attention_mask: np.ndarray | Sequence[Sequence[int]] | None = None,
    expected_inner: Sequence[Sequence[int]] | None = None,
    frame_splits: Sequence[dict[int, Sequence[int]] | None] | None = None,
) -> list[PromptLayout]:
    """One layout per row of a (left- or right-) padded batch. Accepts numpy arrays or torch tensors."""
    ids = np.asarray(input_ids.cpu() if hasattr(input_ids, "cpu") else input_ids)
    if ids.ndim != 2:
        raise LayoutError(f"input_ids must be [batch, length], got shape {ids.shape}")
    mask = (
        None
        if attention_mask is None
        else np.asarray(attention_mask.cpu() if hasattr(attention_mask, "cpu") else attention_mask)
    )
    for name, per_row in (("expected_inner", expected_inner), ("frame_splits", frame_splits)):
        if per_row is not None and len(per_row) != ids.shape[0]:
            raise LayoutError(f"{name} has {len(per_row)} rows for a batch of {ids.shape[0]}")
    return [
        layout_from_ids(
            ids[r],
            spec,
            None if mask is None else mask[r],
            None if expected_inner is None else expected_inner[r],
            None if frame_splits is None else frame_splits[r],
            row=r,
        )
        for r in range(ids.shape[0])
    ]
