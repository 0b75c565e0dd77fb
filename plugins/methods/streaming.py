"""Method ``streaming``: StreamingLLM-style static attention - the prompt's first ``n_sink`` tokens plus a
local window, for every query, inside the model's own mask.

A query ``i`` keeps key ``j`` iff the model's own mask keeps it (causal / bidirectional images / the layer's
sliding window) and ``j < n_sink`` or ``|i - j| < window`` (for causal pairs: the ``window`` most recent
keys, the query itself included; for Gemma 3's bidirectional images the window is symmetric). Defaults are
MInference's A-shape baseline budget (128 initial tokens, 3968 local). On CUDA it runs through FlexAttention
(the A-shape block mask is very sparse); elsewhere through a chunked path that gathers only each chunk's sink
and window keys, O(S x (n_sink + window)). ``self.kept`` logs the kept pairs per layer call as method
``mminference`` does (exact, counted on the same chunks).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod, NoOptions
from bsight.kernels.sparsity.masks import MaskMod, and_masks, base_mask
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.vertical_slash import chunk_attention
from bsight.plugins.methods.flex import CompileMode, FlexRunner
from bsight.plugins.methods.mminference import LayerPairs


def streaming_mask(meta: LayoutMeta, n_sink: int, window: int, model_window: int | None = None) -> MaskMod:
    """Sinks plus local window, intersected with the model's own mask."""

    def sink_or_local(b, h, q, kv):
        return (kv < n_sink) | ((q - kv).abs() < window)

    return and_masks(base_mask(meta, model_window), sink_or_local)


def _chunks(meta: LayoutMeta, n_sink: int, window: int, model_window: int | None, chunk: int):
    """Per query chunk: (rows, candidate keys, keep ``[C, K]``); candidates are the sinks and the window."""
    S, dev = meta.length, meta.device
    mod = streaming_mask(meta, n_sink, window, model_window)
    b = torch.zeros((), dtype=torch.long, device=dev)
    for q0 in range(0, S, chunk):
        q1 = min(S, q0 + chunk)
        lo = max(0, q0 - window + 1)
        hi = min(S, q1 + window - 1) if meta.has_bidirectional else q1
        keys = torch.cat([torch.arange(min(n_sink, lo), device=dev), torch.arange(lo, hi, device=dev)])
        rows = torch.arange(q0, q1, device=dev)
        yield rows, keys, mod(b, b, rows[:, None], keys[None, :])


def streaming_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: LayoutMeta,
    n_sink: int,
    window: int,
    model_window: int | None,
    scale: float,
    chunk: int = 1024,
) -> tuple[torch.Tensor, int]:
    """``q [Hq, S, D]``, ``k, v [Hkv, S, D]`` -> (out ``[Hq, S, D]``, kept pairs per head)."""
    Hq, S, D = q.shape
    Hkv = k.shape[0]
    G = Hq // Hkv
    out = torch.empty_like(q)
    kept = 0
    for rows, keys, keep in _chunks(meta, n_sink, window, model_window, chunk):
        C = rows.numel()
        qc = q[:, rows].reshape(Hkv, G * C, D)
        o = chunk_attention(qc, k[:, keys], v[:, keys], keep.repeat(G, 1)[None], scale)
        out[:, rows] = o.reshape(Hq, C, D).to(q.dtype)
        kept += int(keep.sum())
    return out, kept


def streaming_pair_count(
    meta: LayoutMeta, n_sink: int, window: int, model_window: int | None = None, chunk: int = 4096
) -> int:
    """Exact kept pairs per head, on the chunked path's candidate keys (no S x S)."""
    return sum(int(keep.sum()) for _, _, keep in _chunks(meta, n_sink, window, model_window, chunk))


class Streaming(AttentionMethod):
    """Static sinks + local window for every head and query. FLOPs: ``self.kept`` / :meth:`take_kept` as
    method ``mminference`` (``LayerPairs(layer, pairs [Hq])``); overhead: ``mask_building`` (Flex path)."""

    name = "streaming"
    description = "StreamingLLM-style static sinks + local window (A-shape), inside the model's own mask"

    class Options(NoOptions):
        n_sink: int = Field(128, ge=0, description="leading prompt tokens every query keeps")
        window: int = Field(3968, ge=1, description="local window, the query itself included")
        backend: Literal["auto", "flex", "chunked"] = "auto"
        chunk_size: int = Field(1024, ge=1)
        compile: CompileMode = "auto"
        block_size: int = Field(128, ge=16)

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.kept: list[LayerPairs] = []
        self.runner = FlexRunner(self.options.compile, self.options.block_size, self.overhead)
        self._count_meta: LayoutMeta | None = None
        self._counts: dict[int | None, int] = {}

    def take_kept(self) -> list[LayerPairs]:
        out, self.kept = self.kept, []
        return out

    def prefill(self, q, k, v, meta, call):
        o = self.options
        if o.backend == "flex" or (o.backend == "auto" and q.is_cuda):
            key = ("streaming", o.n_sink, o.window, call.window)
            bm = self.runner.block_mask(meta, key, lambda m: streaming_mask(m, o.n_sink, o.window, call.window), None)
            out = self.runner.attend(q, k, v, bm, call.scale)
            if meta is not self._count_meta:
                self._count_meta, self._counts = meta, {}
            if call.window not in self._counts:
                self._counts[call.window] = streaming_pair_count(meta, o.n_sink, o.window, call.window)
            pairs = self._counts[call.window]
        else:
            out, pairs = streaming_chunked(q, k, v, meta, o.n_sink, o.window, call.window, call.scale, o.chunk_size)
        self.kept.append(LayerPairs(call.layer_idx, torch.full((q.shape[0],), pairs, dtype=torch.int64)))
        return out


@hookimpl
def bsight_attention_methods():
    return [Streaming]
