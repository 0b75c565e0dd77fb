"""Plug BlindSight attention methods into transformers models through its attention registration.

We register one attention implementation, ``"bsight"``, in both of transformers' registries:

* ``AttentionInterface`` - :func:`attention_forward`. During a prefill run under :func:`active_method`, it
  slices each batch row to its non-padding range and hands ``q, k, v`` with the row's :class:`LayoutMeta` to
  the active :class:`AttentionMethod`. Everything else (decode steps, calls outside a prefill context, and
  non-causal callers such as vision towers) goes to transformers' own SDPA path with the mask transformers
  built, i.e. dense over the full KV cache.
* ``AttentionMaskInterface`` - :func:`mask_function`. Registering only the attention function would make
  transformers drop the model's masks (sliding window, Gemma 3's bidirectional images). Outside a prefill
  context it builds exactly what transformers builds for ``sdpa``; inside one it returns None, because the
  method applies the model's own mask itself from the layout (causality included; never materializing S x S).

Load a model with ``attn_implementation="bsight"`` for the language tower only (vision towers keep
``"sdpa"``). Methods are swapped per call, without reloading weights.

A method may carry a ``sink_policy`` attribute (a :class:`SinkPolicy`, e.g. the one its head map was
characterized with); when it is not None, the layouts' sinks are recomputed with it before the metadata is
built, so the sinks the method sees are the ones its head map assumes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from bsight.harness.interfaces import AttentionMethod
from bsight.kernels.dispatch import LayerCall, sdpa_policy
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta

ATTN_IMPLEMENTATION = "bsight"


@dataclass
class AttentionTimer:
    """Time spent inside the bridge's prefill attention calls (all layers, all rows), for "attention share
    of TTFT". On CUDA it records events around each call and sums them after one synchronization, so timing
    does not serialize the prefill."""

    calls: int = 0
    _cpu_s: float = 0.0
    _events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = field(default_factory=list)

    @contextmanager
    def time(self, device: torch.device) -> Iterator[None]:
        self.calls += 1
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._cpu_s += time.perf_counter() - t0

    def total_ms(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
        return 1e3 * self._cpu_s + sum(s.elapsed_time(e) for s, e in self._events)


@dataclass
class PrefillContext:
    method: AttentionMethod
    layouts: Sequence[PromptLayout]
    timer: AttentionTimer | None = None
    _metas: dict[tuple[int, str], LayoutMeta] = field(default_factory=dict)

    def layout(self, row: int, causal: bool = False) -> PromptLayout:
        """The row's unpadded layout, with sinks under the method's own policy if it has one; ``causal`` drops
        its bidirectional regions (layers where the model keeps image attention causal)."""
        policy: SinkPolicy | None = getattr(self.method, "sink_policy", None)
        layout = self.layouts[row].unpadded()
        layout = layout.causal() if causal else layout
        return layout.with_sinks(policy) if policy is not None else layout

    def meta(self, row: int, device: torch.device, causal: bool = False) -> LayoutMeta:
        """Metadata of one row, built once per prompt and device (and causality) and reused by every layer."""
        key = (row, str(device), causal)
        if key not in self._metas:
            with self.method.overhead.measure("layout_metadata", device):
                self._metas[key] = LayoutMeta.build(self.layout(row, causal), device)
        return self._metas[key]


_ACTIVE: ContextVar[PrefillContext | None] = ContextVar("bsight_prefill", default=None)


@contextmanager
def active_method(
    method: AttentionMethod, layouts: Sequence[PromptLayout], timer: AttentionTimer | None = None
) -> Iterator[PrefillContext]:
    """Route the prefill of prompts with these layouts (one per batch row) through ``method``.

    Pass an :class:`AttentionTimer` to measure the time spent in prefill attention.
    """
    layouts = list(layouts)
    if not layouts:
        raise ValueError("active_method needs one layout per batch row, got none")
    if len({lay.length for lay in layouts}) != 1:
        raise ValueError(
            f"layouts of one batch must have one (padded) length, got {sorted({lay.length for lay in layouts})}"
        )
    ctx = PrefillContext(method, layouts, timer)
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
    """transformers attention function: ``query [B, Hq, S, D]``, ``key, value [B, Hkv, S, D]`` (not expanded
    for GQA) -> ``([B, S, Hq, D], None)``."""
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    suffix = _suffix_context(query.shape[2], key.shape[2]) if causal else None
    if suffix is not None:  # a prefill layer that computes only the last queries (Gemma 4's KV-shared layers)
        return _suffix_attention(suffix, module, query, key, value, scaling, sliding_window), None
    ctx = _prefill_context(query.shape[2], key.shape[2]) if causal else None
    if ctx is None:  # decode steps (flash: no per-KV-length cost) and prefills no method handles, as dense does
        with sdpa_policy(query.shape[2], key.shape[2], query.device):
            return ALL_ATTENTION_FUNCTIONS["sdpa"](
                module,
                query,
                key,
                value,
                attention_mask,
                scaling=scaling,
                dropout=dropout,
                sliding_window=sliding_window,
                **kwargs,
            )
    if attention_mask is not None:  # our mask function returned None: this mask was built elsewhere and would be lost
        raise ValueError(
            "a precomputed attention mask reached a bsight prefill; methods apply the model's mask from the layout, "
            "so pass only a 2-D padding mask (attention_mask [B, S]) to the model"
        )
    if kwargs.get("softcap") is not None:
        raise NotImplementedError(
            f"attention logit soft-capping (softcap={kwargs['softcap']}) is not supported by bsight methods"
        )
    if dropout:
        raise NotImplementedError("bsight methods run inference only; attention dropout must be 0 (call model.eval())")
    B, Hq, S, D = query.shape
    if len(ctx.layouts) != B:
        raise ValueError(f"{len(ctx.layouts)} layouts for a batch of {B}")
    scale = scaling if scaling is not None else D**-0.5
    call = LayerCall(layer_idx=int(getattr(module, "layer_idx", -1)), scale=float(scale), window=sliding_window)
    info = ctx.method.model  # per-layer bidirectionality (Gemma 4: images are bidirectional in sliding layers only)
    causal_layer = info is not None and not info.layer_is_bidirectional(call.layer_idx)
    timing = ctx.timer.time(query.device) if ctx.timer is not None else _no_timer()
    with timing:
        out = query.new_zeros(B, S, Hq, D)
        for row, layout in enumerate(ctx.layouts):
            lo, hi = layout.valid_start, layout.valid_end
            if hi == lo:
                continue
            o = ctx.method.prefill(
                query[row, :, lo:hi],
                key[row, :, lo:hi],
                value[row, :, lo:hi],
                ctx.meta(row, query.device, causal_layer),
                call,
            )
            if o.shape != (Hq, hi - lo, D):
                raise ValueError(
                    f"method {ctx.method.name!r} returned {tuple(o.shape)} for layer {call.layer_idx}, "
                    f"expected {(Hq, hi - lo, D)}"
                )
            out[row, lo:hi] = o.transpose(0, 1).to(out.dtype)
    return out, None


def _suffix_context(q_length: int, kv_length: int) -> PrefillContext | None:
    """The active prefill when a layer computes only the prompt's last ``q_length`` queries over all its keys:
    transformers' Gemma 4 does this in its KV-shared layers under an integer ``logits_to_keep`` (generation), since
    their keys and values come from earlier layers. Our mask function returned None for this prefill, so the
    model's mask must be rebuilt here."""
    ctx = _ACTIVE.get()
    if ctx is None or not 0 < q_length < kv_length or kv_length != ctx.layouts[0].length:
        return None
    return ctx


def _suffix_attention(
    ctx: PrefillContext,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float | None,
    window: int | None,
) -> torch.Tensor:
    """Dense attention of the last queries under the model's own mask from the layout (these queries are not the
    method's: a prefill method sees whole prompts; the last prompt positions are text, dense in every category)."""
    from bsight.kernels.sparsity.masks import base_mask

    B, Hq, n, D = query.shape
    S, Hkv = key.shape[2], key.shape[1]
    layer = int(getattr(module, "layer_idx", -1))
    info = ctx.method.model
    causal_layer = info is not None and not info.layer_is_bidirectional(layer)
    out = query.new_zeros(B, n, Hq, D)
    for row, layout in enumerate(ctx.layouts):
        lo, hi = layout.valid_start, layout.valid_end
        rows = torch.arange(S - n, S, device=query.device)
        keep = (rows >= lo) & (rows < hi)
        if not bool(keep.any()):
            continue
        meta = ctx.meta(row, query.device, causal_layer)
        q_pos = (rows[keep] - lo)[:, None]
        k_pos = torch.arange(hi - lo, device=query.device)[None, :]
        mask = base_mask(meta, window)(0, 0, q_pos, k_pos)
        k = key[row, :, lo:hi].repeat_interleave(Hq // Hkv, dim=0)
        v = value[row, :, lo:hi].repeat_interleave(Hq // Hkv, dim=0)
        o = torch.nn.functional.scaled_dot_product_attention(
            query[row][:, keep], k, v, attn_mask=mask[None], scale=scaling
        )
        out[row, keep] = o.transpose(0, 1).to(out.dtype)
    return out


@contextmanager
def _no_timer() -> Iterator[None]:
    yield


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
