"""Plug BlindSight attention methods into transformers models through its attention registration.

We register one attention implementation, ``"bsight"``, in both of transformers' registries:

* ``AttentionInterface`` - :func:`attention_forward`. During a prefill run under :func:`active_method`, it
  slices each batch row to its non-padding range and hands ``q, k, v`` with the row's :class:`LayoutMeta` to
  the active :class:`AttentionMethod`. Everything else (decode steps, calls outside a prefill context) goes
  to transformers' own SDPA path with the mask transformers built, i.e. dense over the full KV cache.
* ``AttentionMaskInterface`` - :func:`mask_function`. Registering only the attention function would make
  transformers drop the model's masks (sliding window, Gemma 3's bidirectional images). Outside a prefill
  context it builds exactly what transformers builds for ``sdpa``; inside one it returns None, because the
  method applies the model's own mask itself from the layout (never materializing S x S).

Load a model with ``attn_implementation="bsight"`` for the language tower only (vision towers keep
``"sdpa"``). Methods are swapped per call, without reloading weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .interfaces import AttentionMethod, LayerCall
from .sparsity.layout import PromptLayout
from .sparsity.metadata import LayoutMeta

ATTN_IMPLEMENTATION = "bsight"


@dataclass
class PrefillContext:
    method: AttentionMethod
    layouts: Sequence[PromptLayout]
    _metas: dict[tuple[int, str], LayoutMeta] = field(default_factory=dict)

    def meta(self, row: int, device: torch.device) -> LayoutMeta:
        """Metadata of one row, built once per prompt and device and reused by every layer."""
        key = (row, str(device))
        if key not in self._metas:
            with self.method.overhead.measure("layout_metadata", device):
                self._metas[key] = LayoutMeta.build(self.layouts[row].unpadded(), device)
        return self._metas[key]


_ACTIVE: ContextVar[PrefillContext | None] = ContextVar("bsight_prefill", default=None)


@contextmanager
def active_method(method: AttentionMethod, layouts: Sequence[PromptLayout]) -> Iterator[PrefillContext]:
    """Route the prefill of prompts with these layouts (one per batch row) through ``method``."""
    ctx = PrefillContext(method, list(layouts))
    token = _ACTIVE.set(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.reset(token)


def _prefill_context(q_length: int, kv_length: int) -> PrefillContext | None:
    ctx = _ACTIVE.get()
    if ctx is None or q_length != kv_length or q_length != ctx.layouts[0].length:
        return None
    return ctx


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``query [B, Hq, S, D]`` -> ``([B, S, Hq, D], None)``."""
    ctx = _prefill_context(query.shape[2], key.shape[2])
    if ctx is None:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, sliding_window=sliding_window, **kwargs
        )
    B, Hq, S, D = query.shape
    scale = scaling if scaling is not None else D**-0.5
    call = LayerCall(layer_idx=int(getattr(module, "layer_idx", -1)), scale=float(scale), window=sliding_window)
    if len(ctx.layouts) != B:
        raise ValueError(f"{len(ctx.layouts)} layouts for a batch of {B}")
    out = query.new_zeros(B, S, Hq, D)
    for row, layout in enumerate(ctx.layouts):
        lo, hi = layout.valid_start, layout.valid_end
        o = ctx.method.prefill(query[row, :, lo:hi], key[row, :, lo:hi], value[row, :, lo:hi], ctx.meta(row, query.device), call)
        out[row, lo:hi] = o.transpose(0, 1).to(out.dtype)
    return out, None


def mask_function(*args, **kwargs):
    """transformers mask function: sdpa's mask, except None during a prefill that a method handles."""
    q_length = kwargs.get("q_length", args[1] if len(args) > 1 else None)
    kv_length = kwargs.get("kv_length", args[2] if len(args) > 2 else None)
    if q_length is not None and _prefill_context(q_length, kv_length) is not None:
        return None
    return ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)


def register() -> str:
    """Register ``"bsight"`` with transformers (idempotent); returns the implementation name."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, mask_function)
    return ATTN_IMPLEMENTATION
