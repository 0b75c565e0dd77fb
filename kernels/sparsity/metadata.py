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

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cached_property

import torch

from bsight.kernels.sparsity.layout import LayoutError, PromptLayout


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
    def blocks(self) -> BlockCache:
        """Per-prompt cache of mask blocks that depend only on the layout (see :class:`BlockCache`): every layer
        of a prompt applies the same masks, so the CPU paths evaluate each mask predicate once per prompt."""
        return BlockCache()

    @cached_property
    def key_prefix_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(text, sinks)``, int64 ``[S + 1]``: ``text[x]`` text tokens and ``sinks[x]`` sinks in ``[0, x)``, so any
        interval's count is one subtraction (the FLOPs and block-mask counts read them for every query chunk)."""
        pad = torch.nn.functional.pad
        return pad(torch.cumsum((self.seg_id < 0).long(), 0), (1, 0)), pad(torch.cumsum(self.is_sink.long(), 0), (1, 0))

    @cached_property
    def host_tables(self) -> tuple[list[int], list[int], list[int]]:
        """``img_start``, ``img_end`` and ``glob_before`` as Python lists, for host loops over images."""
        return self.img_start.tolist(), self.img_end.tolist(), self.glob_before.tolist()

    @classmethod
    def build(cls, layout: PromptLayout, device: torch.device | str = "cpu") -> LayoutMeta:
        """Tables for an unpadded layout. The O(images) tables cross to the device in one copy, and every size
        is known on the host, so building needs no device-to-host sync (<= 2 ms at 300K tokens on a GPU)."""
        if layout.valid_start != 0 or layout.valid_end != layout.length:
            raise LayoutError("LayoutMeta describes one unpadded sequence; call layout.unpadded() first")
        S, n = layout.length, layout.num_images
        spans = layout.spans
        nsinks = [len(s.sinks) for s in spans]
        img_tokens = sum(s.length for s in spans)
        bidir_tokens = sum(s.bidir[1] - s.bidir[0] for s in spans if s.bidir)
        host = torch.tensor(
            [s.start for s in spans]
            + [s.end for s in spans]
            + [s.bidir[0] if s.bidir else s.start for s in spans]
            + [s.bidir[1] if s.bidir else s.start for s in spans]
            + [0, *_cumsum(nsinks)]
            + [p for s in spans for p in s.sinks],
            dtype=torch.int32,
        )
        packed = (host.pin_memory() if torch.device(device).type == "cuda" else host).to(device, non_blocking=True)
        start, end, bstart, bend = (packed[i * n : (i + 1) * n] for i in range(4))
        sink_ptr, sink_idx = packed[4 * n : 5 * n + 1], packed[5 * n + 1 :]

        seg_id = _fill_ranges(S, start, end, img_tokens)
        bidir_group = _fill_ranges(S, bstart, bend, bidir_tokens)
        is_sink = torch.zeros(S, dtype=torch.bool, device=device)
        if sink_idx.numel():
            is_sink[sink_idx.long()] = True

        lengths = end - start
        img_before = torch.cumsum(lengths, 0, dtype=torch.int32) - lengths  # image tokens before image i
        text_before = start - img_before
        text_idx = torch.nonzero_static(seg_id < 0, size=S - img_tokens).flatten().to(torch.int32)
        glob_idx = (
            torch.nonzero_static((seg_id < 0) | is_sink, size=S - img_tokens + sum(nsinks)).flatten().to(torch.int32)
        )
        glob_before = text_before + sink_ptr[:-1]
        meta = cls(
            S,
            n,
            seg_id,
            is_sink,
            bidir_group,
            start,
            end,
            bstart,
            bend,
            text_idx,
            text_before,
            glob_idx,
            glob_before,
            sink_idx,
            sink_ptr,
        )
        # known on the host already: prime the cached properties so that reading them never syncs
        meta.__dict__["has_bidirectional"] = bidir_tokens > 0
        text_so_far = [s.start - b for s, b in zip(spans, [0, *_cumsum([s.length for s in spans])])]
        meta.__dict__["host_tables"] = (
            [s.start for s in spans],
            [s.end for s in spans],
            [t + p for t, p in zip(text_so_far, [0, *_cumsum(nsinks)])],
        )
        return meta


Block = torch.Tensor | tuple[torch.Tensor | None, ...]


class BlockCache:
    """Tensors built from the layout alone (boolean mask blocks of one query chunk), kept for the prompt's later
    layers. Bounded: once ``budget`` bytes are held, further blocks are built on every call and not kept, so the
    cache never grows past the budget whatever the length (the callers' memory stays O(chunk x keys) beyond it).
    """

    BUDGET = 512 * 2**20  # bytes per prompt

    def __init__(self, budget: int | None = None) -> None:
        self.budget = self.BUDGET if budget is None else budget
        self.nbytes = 0
        self._blocks: dict[Hashable, Block] = {}

    def get(self, key: Hashable, build: Callable[[], Block]) -> Block:
        """The block stored under ``key``, else ``build()`` (stored when it fits the budget). A block is a tensor
        or a tuple of tensors (None entries allowed). Keys must name everything the block depends on besides the
        layout (the user, the window, the chunk's rows and keys)."""
        hit = self._blocks.get(key)
        if hit is not None:
            return hit
        block = build()
        parts = block if isinstance(block, tuple) else (block,)
        size = sum(t.numel() * t.element_size() for t in parts if t is not None)
        if self.nbytes + size <= self.budget:
            self._blocks[key] = block
            self.nbytes += size
        return block


def _cumsum(xs: list[int]) -> list[int]:
    out, t = [], 0
    for x in xs:
        t += x
        out.append(t)
    return out


def _fill_ranges(S: int, start: torch.Tensor, end: torch.Tensor, total: int) -> torch.Tensor:
    """int32 [S] holding i on [start[i], end[i]) and -1 elsewhere (ranges disjoint, ``total`` tokens in all),
    without a host loop or a sync."""
    out = torch.full((S,), -1, dtype=torch.int32, device=start.device)
    if total == 0:
        return out
    lengths = (end - start).long()
    owner = torch.repeat_interleave(torch.arange(len(start), device=start.device), lengths, output_size=total)
    offset = torch.arange(total, device=start.device) - (torch.cumsum(lengths, 0) - lengths)[owner]
    out[start.long()[owner] + offset] = owner.to(torch.int32)
    return out
