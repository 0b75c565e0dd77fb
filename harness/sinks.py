"""Sink-offset discovery for models whose image sinks sit at fixed offsets inside the image (Gemma 3).

From dense attention of image queries, each (head, query) votes for the offsets (from the segment's start
token) of the keys it attends to most among the tokens of earlier images. Across layers, heads and prompts
the most frequent offsets are the sinks; they become a ``SinkPolicy(kind="offsets")``. Only a sample of the
query rows of each image is scored, in chunks, so discovery costs a small fraction of a dense prefill.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Prepared
from bsight.kernels.dispatch import LayerCall, dense_prefill
from bsight.kernels.reference import accumulation_dtype, check_shapes
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.masks import base_mask
from bsight.kernels.sparsity.metadata import LayoutMeta


def sink_offset_votes(
    q: torch.Tensor,
    k: torch.Tensor,
    meta: LayoutMeta,
    *,
    scale: float | None = None,
    window: int | None = None,
    queries_per_image: int = 16,
    top_per_query: int = 1,
    chunk_size: int = 256,
) -> torch.Tensor:
    """``int64 [longest image]`` counts: how often each in-image offset was a top key of an image query
    among the keys of earlier images. ``queries_per_image`` rows per image, evenly spaced, are scored."""
    Hq, S, D = q.shape
    Hkv = k.shape[0]
    check_shapes(q, k, k, meta)
    starts, ends, _ = meta.host_tables
    longest = max((e - a for a, e in zip(starts, ends)), default=0)
    votes = torch.zeros(longest, dtype=torch.int64)
    if meta.num_images < 2:
        return votes
    rows = torch.cat(
        [
            torch.linspace(a, e - 1, min(queries_per_image, e - a)).round().long().unique()
            for a, e in zip(starts[1:], ends[1:])
        ]
    ).to(q.device)
    G, acc = Hq // Hkv, accumulation_dtype(q.dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    mod = base_mask(meta, window)
    seg = meta.seg_id.long()
    z = torch.zeros((), dtype=torch.long, device=q.device)
    for c0 in range(0, rows.numel(), chunk_size):
        r = rows[c0 : c0 + chunk_size]
        kend = int(meta.img_end[seg[r].max()].item())  # no key past the last queried image is visible
        cols = torch.arange(kend, device=q.device)
        s = torch.einsum("hgcd,hkd->hgck", q[:, r].to(acc).view(Hkv, G, r.numel(), D), k[:, :kend].to(acc)) * scale
        p = torch.softmax(s.masked_fill(~mod(z, z, r[:, None], cols[None, :]), float("-inf")), dim=-1).reshape(
            Hq, r.numel(), kend
        )
        earlier = (seg[:kend][None, :] >= 0) & (seg[:kend][None, :] < seg[r][:, None])  # [C, K]
        p = p.masked_fill(~earlier, -1.0)
        top = p.topk(min(top_per_query, kend), dim=-1)
        hit = top.indices[top.values > 0]
        votes += torch.bincount((hit - meta.img_start.long()[seg[hit]]).cpu(), minlength=longest)[:longest]
    return votes


def top_offsets(votes: torch.Tensor, top_k: int) -> SinkPolicy:
    """The ``top_k`` most voted offsets as a sink policy (ties to the smaller offset)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if int(votes.sum()) == 0:
        raise ValueError("no sink votes: characterize prompts with at least two images")
    order = sorted(range(votes.numel()), key=lambda o: (-int(votes[o]), o))
    return SinkPolicy(kind="offsets", offsets=tuple(sorted(o for o in order[:top_k] if votes[o] > 0)))


class SinkProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries_per_image: int = Field(16, ge=1)
    top_per_query: int = Field(1, ge=1)
    chunk_size: int = Field(256, ge=1)


class SinkOffsetProbe(AttentionMethod):
    """Accumulates sink-offset votes over every layer and prompt it sees; returns dense attention."""

    name = "sink_offset_probe"
    description = "Sink-offset discovery probe: dense output, votes for high-attention in-image offsets"
    Options = SinkProbeOptions

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.votes = torch.zeros(0, dtype=torch.int64)

    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall
    ) -> torch.Tensor:
        o = self.options
        new = sink_offset_votes(
            q,
            k,
            meta,
            scale=call.scale,
            window=call.window,
            queries_per_image=o.queries_per_image,
            top_per_query=o.top_per_query,
            chunk_size=o.chunk_size,
        )
        self.votes = _add_padded(self.votes, new)
        return dense_prefill(q, k, v, meta, call)


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = max(a.numel(), b.numel())
    return torch.nn.functional.pad(a, (0, n - a.numel())) + torch.nn.functional.pad(b, (0, n - b.numel()))


def discover_sink_offsets(
    adapter: ModelAdapter,
    prompts: Iterable[Prepared],
    *,
    top_k: int = 4,
    run: Callable[[Prepared, AttentionMethod], Any] | None = None,
    **options: Any,
) -> tuple[SinkPolicy, torch.Tensor]:
    """Run the probe over prompts (default runner ``adapter.logits``); returns the policy and the votes."""
    probe = SinkOffsetProbe(options)
    probe.setup(adapter.info)
    run = run or adapter.logits
    for prepared in prompts:
        with torch.no_grad():
            run(prepared, probe)
    return top_offsets(probe.votes, top_k), probe.votes
