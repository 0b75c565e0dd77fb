"""Method ``dense``: the model's own attention, the reference every other method is compared with."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod
from bsight.kernels.dispatch import SdpaBackend, dense_prefill
from bsight.kernels.sparsity.categories import Category


class DenseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: SdpaBackend = "auto"  # SDPA backend of plain causal layers ("auto": DensePolicy, per length)
    expand_kv: bool = False  # repeat K/V to every query head instead of SDPA's enable_gqa


class Dense(AttentionMethod):
    name = "dense"
    is_reference = True
    description = "The model's own mask (causal; Gemma 3 bidirectional inside images; sliding windows kept)"
    Options = DenseOptions

    def prefill(self, q, k, v, meta, call):
        return dense_prefill(q, k, v, meta, call, self.options.backend, self.options.expand_kv)

    def head_categories(self, layer_idx: int) -> torch.Tensor | None:
        assert self.model is not None, "setup() first"
        return torch.full((self.model.num_heads,), Category.DENSE.value, dtype=torch.int32)


@hookimpl
def bsight_attention_methods():
    return [Dense]
