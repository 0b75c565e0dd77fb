"""Method ``dense``: the model's own attention, the reference every other method is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod, LayerCall
from bsight.harness.sparsity.categories import Category
from bsight.harness.sparsity.metadata import LayoutMeta
from bsight.kernels.reference import reference_attention


def dense_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall) -> torch.Tensor:
    """Dense prefill under the model's own mask. Plain causal layers take SDPA's fastest backend (cuDNN or
    flash on GPU); bidirectional images or a sliding window that the prompt reaches need a mask, which the
    chunked reference applies without materializing S x S."""
    if not meta.has_bidirectional and (call.window is None or call.window >= meta.length):
        return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=call.scale, enable_gqa=True)[0]
    cats = torch.full((q.shape[0],), Category.DENSE.value, dtype=torch.int32, device=q.device)
    return reference_attention(q, k, v, meta, cats, scale=call.scale, window=call.window)


class Dense(AttentionMethod):
    name = "dense"
    description = "The model's own mask (causal; Gemma 3 bidirectional inside images; sliding windows kept)"

    def prefill(self, q, k, v, meta, call):
        return dense_prefill(q, k, v, meta, call)

    def head_categories(self, layer_idx: int) -> torch.Tensor | None:
        assert self.model is not None, "setup() first"
        return torch.full((self.model.num_heads,), Category.DENSE.value, dtype=torch.int32)


@hookimpl
def bsight_attention_methods():
    return [Dense]
