"""Attention FLOPs of one prompt under a method: a library of the job types (``flops``, ``baselines``).

Static head categories are counted exactly from the prompt's layout (:mod:`bsight.kernels.sparsity.flops`); a
dynamic method's are the query-key pairs it logged while it ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.flops import attention_flops, layer_pair_table, model_flops
from bsight.kernels.sparsity.layout import PromptLayout
from bsight.kernels.sparsity.metadata import LayoutMeta

if TYPE_CHECKING:
    from bsight.harness.interfaces import ModelInfo


def prompt_flops(
    meta: LayoutMeta | PromptLayout, info: ModelInfo, cats: np.ndarray | None, kept: list | None, who: str
) -> tuple[float, float, str]:
    """(dense FLOPs, method FLOPs, source) of one prompt: static head categories are counted from the layout
    (``layout``); a dynamic method's are the pairs it logged during the prefill (``kept``, one entry per layer:
    ``measured``). ``who`` names the sample and method in errors."""
    if cats is not None:
        counted = model_flops(
            meta, cats, info.sliding_windows, info.layer_head_dims(), info.kinds(), info.bidirectional_layers
        )
        return counted["dense_flops"], counted["sparse_flops"], "layout"
    kept = kept or []
    seen = sorted({lp.layer for lp in kept})
    attention = info.attention_layers()  # linear layers (hybrid models) make no attention call
    if seen != attention or len(kept) != len(attention):
        raise RuntimeError(
            f"{who} logged pairs for layers {seen} in {len(kept)} calls, expected each of the "
            f"{len(attention)} softmax-attention layers {attention} once"
        )
    dims = np.asarray(info.layer_head_dims())
    table = layer_pair_table(meta, info.sliding_windows, info.kinds(), info.bidirectional_layers)
    dense_pairs = table[:, Category.DENSE] * info.num_heads
    return (
        float(attention_flops(dense_pairs, dims).sum()),
        float(sum(attention_flops(int(lp.pairs.sum()), int(dims[lp.layer])) for lp in kept)),
        "measured",
    )
