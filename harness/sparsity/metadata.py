"""Per-prompt layout metadata on the tensor's device, in O(S) memory.

One :class:`LayoutMeta` drives every attention path: the mask predicates (reference attention and the
FlexAttention baseline read ``seg_id``/``is_sink``/``bidir_group``), and the Triton kernel (reads the
segment tables and the gathered global-key lists). It describes one unpadded sequence (position 0 is the
first real token); build it with :meth:`LayoutMeta.build` once per prompt and reuse it for every layer.

Gathered key lists, both sorted by position and prefix-closed per image:

* ``text_idx`` - positions of all text tokens; image ``i`` sees ``text_idx[:text_before[i]]`` as its
  earlier text (``intra_image``).
* ``glob_idx`` - positions of all text tokens and all sinks; image ``i`` sees ``glob_idx[:glob_before[i]]``
  (earlier text plus earlier images' sinks: ``sink`` and ``intra_image_sink``).
* ``sink_idx[sink_ptr[i]:sink_ptr[i+1]]`` - image ``i``'s own sinks (``sink``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .layout import LayoutError, PromptLayout


@dataclass(frozen=True)
class LayoutMeta:
    length: int
    num_images: int
    seg_id: torch.Tensor  # int32 [S]: image index, -1 for text
    is_sink: torch.Tensor  # bool [S]
    bidir_group: torch.Tensor  # int32 [S]: image index inside a bidirectional region, else -1
    img_start: torch.Tensor  # int32 [n]
    img_end: torch.Tensor  # int32 [n] (exclusive)
    bidir_start: torch.Tensor  # int32 [n]; == bidir_end when the image has no bidirectional region
    bidir_end: torch.Tensor  # int32 [n]
    text_idx: torch.Tensor  # int32 [T]
    text_before: torch.Tensor  # int32 [n]
    glob_idx: torch.Tensor  # int32 [G]
    glob_before: torch.Tensor  # int32 [n]
    sink_idx: torch.Tensor  # int32 [total sinks]
    sink_ptr: torch.Tensor  # int32 [n + 1]

    @property
    def device(self) -> torch.device:
        return self.seg_id.device

    @cached_property
    def has_bidirectional(self) -> bool:
        """Whether any image attends bidirectionally (read once: on a GPU this is a host sync)."""
        return bool(self.num_images) and bool((self.bidir_end > self.bidir_start).any())

    @cached_property
    def host_tables(self) -> tuple[list[int], list[int], list[int]]:
        """``img_start``, ``img_end`` and ``glob_before`` as Python lists, for host loops over images."""
        return self.img_start.tolist(), self.img_end.tolist(), self.glob_before.tolist()

    @classmethod
    def build(cls, layout: PromptLayout, device: torch.device | str = "cpu") -> LayoutMeta:
        """Tables for an unpadded layout. Only O(images) values cross from host to device."""
        if layout.valid_start != 0 or layout.valid_end != layout.length:
            raise LayoutError("LayoutMeta describes one unpadded sequence; call layout.unpadded() first")
        S, n = layout.length, layout.num_images
        i32 = dict(dtype=torch.int32, device=device)
        spans = layout.spans
        start = torch.tensor([s.start for s in spans], **i32)
        end = torch.tensor([s.end for s in spans], **i32)
        bstart = torch.tensor([s.bidir[0] if s.bidir else s.start for s in spans], **i32)
        bend = torch.tensor([s.bidir[1] if s.bidir else s.start for s in spans], **i32)
        nsinks = [len(s.sinks) for s in spans]
        sink_idx = torch.tensor([p for s in spans for p in s.sinks], **i32)
        sink_ptr = torch.tensor([0] + list(_cumsum(nsinks)), **i32)

        seg_id = _fill_ranges(S, start, end, device)
        bidir_group = _fill_ranges(S, bstart, bend, device)
        is_sink = torch.zeros(S, dtype=torch.bool, device=device)
        if sink_idx.numel():
            is_sink[sink_idx.long()] = True

        lengths = end - start
        img_before = torch.cumsum(lengths, 0) - lengths  # image tokens before image i
        text_before = start - img_before
        text_idx = torch.nonzero(seg_id < 0).flatten().to(torch.int32)
        glob_idx = torch.nonzero((seg_id < 0) | is_sink).flatten().to(torch.int32)
        glob_before = text_before + sink_ptr[:-1]
        return cls(S, n, seg_id, is_sink, bidir_group, start, end, bstart, bend, text_idx, text_before, glob_idx, glob_before, sink_idx, sink_ptr)


def _cumsum(xs: list[int]) -> list[int]:
    out, t = [], 0
    for x in xs:
        t += x
        out.append(t)
    return out


def _fill_ranges(S: int, start: torch.Tensor, end: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """int32 [S] holding i on [start[i], end[i]) and -1 elsewhere (ranges disjoint), without a host loop."""
    out = torch.full((S,), -1, dtype=torch.int32, device=device)
    lengths = (end - start).long()
    total = int(lengths.sum()) if lengths.numel() else 0
    if total == 0:
        return out
    owner = torch.repeat_interleave(torch.arange(len(start), device=device), lengths, output_size=total)
    offset = torch.arange(total, device=device) - (torch.cumsum(lengths, 0) - lengths)[owner]
    out[start.long()[owner] + offset] = owner.to(torch.int32)
    return out
