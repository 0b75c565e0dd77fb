"""Method ``sink-window``: each query sees the first ``sinks`` tokens and the last ``window`` tokens
(StreamingLLM-style), computed for real with an explicit mask; small prompts only (it builds S x S)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.interfaces import AttentionMethod
from bsight.kernels.dispatch import LayerCall
from bsight.kernels.sparsity.metadata import LayoutMeta


class SinkWindowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sinks: int = Field(4, ge=0)
    window: int = Field(16, ge=1)


class SinkWindow(AttentionMethod):
    name = "sink-window"
    description = "Example external method: attention sinks plus a sliding window (dense mask, small prompts)"
    Options = SinkWindowOptions

    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall
    ) -> torch.Tensor:
        S = q.shape[1]
        with self.overhead.measure("mask", q.device):
            pos = torch.arange(S, device=q.device)
            causal = pos[:, None] >= pos[None, :]
            keep = causal & ((pos[None, :] < self.options.sinks) | (pos[:, None] - pos[None, :] < self.options.window))
        return F.scaled_dot_product_attention(
            q[None], k[None], v[None], attn_mask=keep, scale=call.scale, enable_gqa=True
        )[0]
