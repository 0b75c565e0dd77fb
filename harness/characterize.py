"""Prompt-level characterization: per layer and head, how far each sparse mask's output is from dense.

For every attention layer, :func:`layer_nmse` runs dense attention (the model's own mask) and the three
sparse categories on the same q, k, v and returns, per query head,
``NMSE = ||O_mask - O_dense||^2 / ||O_dense||^2`` over the image-query rows (text rows are identical in every
category). Image queries are processed image by image in chunks: a chunk of image ``i`` only ever needs the
keys a sparse mask can keep (earlier text, earlier sinks, image ``i`` itself: the kernel's gathered global
list plus the image's own range), so the three categories share one small Q K^T and nothing is S x S. The
chunks' masks depend only on the layout, so they are built once per prompt and kept for its later layers
(``meta.blocks``, bounded). The dense output comes from the model's own dense path (SDPA, or the chunked reference
when a mask is needed).

:class:`CharacterizationProbe` is an :class:`AttentionMethod` that does this inside a real model run and
returns the dense output, so the model runs on unchanged. :func:`characterize_model` drives it over a
dataset and keeps the per-prompt NMSE tables, so that any tau can be re-selected later without re-running the
model (:func:`select_categories`, ``aggregate`` and ``sweep`` work on the stored tables).

Hybrid models: layers that are not softmax attention (``ModelInfo.layer_kinds``: linear attention, Mamba)
make no attention call and are skipped - recorded with empty NMSE rows and zero pairs, and logged - while
``shared_kv`` layers (softmax over another layer's keys and values, own queries) are characterized like any.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Prepared
from bsight.kernels.dispatch import LayerCall, dense_prefill
from bsight.kernels.reference import accumulation_dtype, check_shapes
from bsight.kernels.sparsity.artifacts import tool_version
from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES
from bsight.kernels.sparsity.characterization import CharacterizationResult, PromptRecord, SkippedPrompt
from bsight.kernels.sparsity.flops import KeptPairs, pair_counts
from bsight.kernels.sparsity.headmap import DatasetInfo
from bsight.kernels.sparsity.layerkinds import describe, is_softmax, require_softmax, resolve
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.kernels.sparsity.masks import base_mask, category_mask
from bsight.kernels.sparsity.metadata import LayoutMeta

log = logging.getLogger(__name__)

RESULT_SCHEMA_VERSION = 1
_TINY = 1e-30
_UNDERFLOW = 1e-30  # kept softmax mass below this, relative to the visible max, is recomputed exactly


class LayerNMSE(NamedTuple):
    nmse: torch.Tensor  # float64 [Hq, 3] on the CPU, columns in SPARSE_CATEGORIES order
    dense: torch.Tensor  # [Hq, S, D] in q.dtype: the model's own attention output
    image_queries: int  # rows the NMSE is taken over


def layer_nmse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: LayoutMeta,
    *,
    scale: float | None = None,
    window: int | None = None,
    chunk_size: int = 256,
    dense: torch.Tensor | None = None,
) -> LayerNMSE:
    """NMSE of each sparse category per query head for one layer of one unpadded prompt.

    ``q [Hq, S, D]``, ``k, v [Hkv, S, D]``; ``dense`` may be passed when the caller already has the dense
    output. Sparse outputs are computed in float32 (float64 for float64 inputs). A prompt without image
    tokens gives NMSE 0 over zero rows (``image_queries == 0``): callers should skip it.
    """
    Hq, Hkv, S, D = check_shapes(q, k, v, meta)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if dense is None:
        dense = dense_prefill(q, k, v, meta, LayerCall(layer_idx=-1, scale=scale, window=window))
    acc = accumulation_dtype(q.dtype)
    dev = q.device
    err = torch.zeros(Hq, len(SPARSE_CATEGORIES), dtype=torch.float64, device=dev)
    ref = torch.zeros(Hq, dtype=torch.float64, device=dev)
    # the masks depend only on the layout: built once per prompt (meta.blocks) and reused by every layer
    blocks = meta.blocks
    starts, ends, glob_before = meta.host_tables
    for i, (a, e) in enumerate(zip(starts, ends)):
        # every key a sparse mask can keep for image i: earlier text and sinks, then the image itself
        cols = blocks.get(("nmse_cols", i, window), lambda: _image_cols(meta, i, window))
        kc, vc = k[:, cols].to(acc), v[:, cols].to(acc)
        for r0 in range(a, e, chunk_size):
            r1 = min(e, r0 + chunk_size)
            bias, *keeps = blocks.get(
                ("nmse_masks", i, r0, r1, window), lambda: _chunk_masks(meta, window, r0, r1, cols)
            )
            qc = q[:, r0:r1].to(acc).view(Hkv, G, r1 - r0, D)
            od = dense[:, r0:r1].to(acc)
            ref += od.pow(2).sum((1, 2)).double()
            # one exp for all categories: every category keeps a subset of the visible keys, so subtracting
            # the max over the visible keys never overflows; a category whose kept mass underflows is redone
            s = torch.einsum("hgcd,hkd->hgck", qc, kc).mul_(scale)
            s.add_(bias)  # -inf where the model's own mask hides the key (as masked_fill, bit for bit)
            w_all = s.sub_(s.amax(dim=-1, keepdim=True)).exp_()
            for j, keep in enumerate(keeps):
                w = w_all if keep is None else w_all * keep  # hidden keys are 0 in w_all already
                mass = w.sum(dim=-1, keepdim=True)
                if bool((mass < _UNDERFLOW).any()):
                    visible = torch.isfinite(bias) if keep is None else keep.bool()
                    w = _exact_weights(qc, kc, scale, visible)
                    mass = w.sum(dim=-1, keepdim=True)
                o = torch.einsum("hgck,hkd->hgcd", w, vc).div_(mass).reshape(Hq, r1 - r0, D)
                err[:, j] += (o - od).pow(2).sum((1, 2)).double()
    nmse = (err / ref.clamp_min(_TINY)[:, None]).cpu()
    return LayerNMSE(nmse, dense, sum(e - a for a, e in zip(starts, ends)))


def _image_cols(meta: LayoutMeta, i: int, window: int | None) -> torch.Tensor:
    """Image ``i``'s candidate keys: earlier text and sinks, then the image itself (within the window)."""
    a, e = meta.host_tables[0][i], meta.host_tables[1][i]
    cols = torch.cat([meta.glob_idx[: meta.host_tables[2][i]].long(), torch.arange(a, e, device=meta.device)])
    return cols if window is None else cols[cols > a - window]


def _chunk_masks(
    meta: LayoutMeta, window: int | None, r0: int, r1: int, cols: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """For query rows ``r0:r1`` against keys ``cols``: the model's own mask as an additive float32 bias
    ``[c, K]`` (0 kept, -inf hidden), then per sparse category (SPARSE_CATEGORIES order) its keep mask within
    the own mask as float32 1/0, or None where the category keeps every key the own mask keeps."""
    b = h = torch.zeros((), dtype=torch.long, device=meta.device)
    rows, keys = torch.arange(r0, r1, device=meta.device)[:, None], cols[None, :]
    base = base_mask(meta, window)(b, h, rows, keys)
    bias = torch.zeros(base.shape, dtype=torch.float32, device=meta.device).masked_fill_(~base, float("-inf"))
    keeps: list[torch.Tensor | None] = []
    for c in SPARSE_CATEGORIES:
        keep = category_mask(meta, c)(b, h, rows, keys) & base
        keeps.append(None if torch.equal(keep, base) else keep.to(torch.float32))
    return (bias, *keeps)


def _exact_weights(qc: torch.Tensor, kc: torch.Tensor, scale: float, keep: torch.Tensor) -> torch.Tensor:
    """Softmax weights over the kept keys with their own max (the rare path where a shared max underflows)."""
    s = torch.einsum("hgcd,hkd->hgck", qc, kc).mul_(scale).masked_fill_(~keep, float("-inf"))
    return torch.softmax(s, dim=-1)


# --------------------------------------------------------------------------------------------- probe


class ProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunk_size: int = Field(256, ge=1, description="image-query rows per chunk")


class CharacterizationProbe(AttentionMethod):
    """Records per-layer NMSE tables during a prefill and returns dense attention (not a registered plugin).

    Under a batch, the bridge calls each layer once per row in row order; the probe counts calls per layer
    to know the row. Call :meth:`take` after each forward.
    """

    name = "characterization_probe"
    description = "Characterization probe: dense output, per-head NMSE of each sparse mask"
    Options = ProbeOptions

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._rows: dict[int, dict[int, tuple[torch.Tensor, KeptPairs, int]]] = {}
        self._calls: dict[int, int] = {}
        self._pairs: dict[tuple[int, int | None], KeptPairs] = {}

    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall
    ) -> torch.Tensor:
        if call.layer_idx < 0:
            raise ValueError("the characterization probe needs each attention module's layer_idx")
        row = self._calls.get(call.layer_idx, 0)
        self._calls[call.layer_idx] = row + 1
        res = layer_nmse(q, k, v, meta, scale=call.scale, window=call.window, chunk_size=self.options.chunk_size)
        key = (id(meta), call.window)
        if key not in self._pairs:
            self._pairs[key] = pair_counts(meta, call.window)
        self._rows.setdefault(row, {})[call.layer_idx] = (res.nmse, self._pairs[key], res.image_queries)
        return res.dense

    def take(self) -> list[dict[int, tuple[torch.Tensor, KeptPairs, int]]]:
        """Per batch row, ``{layer: (nmse [Hq, 3], kept pairs, image queries)}``; resets the probe."""
        out = [self._rows[r] for r in sorted(self._rows)]
        self._rows, self._calls, self._pairs = {}, {}, {}
        return out


def prompt_record(
    prompt_id: str,
    layout: PromptLayout,
    layers: dict[int, tuple[torch.Tensor, KeptPairs, int]],
    num_layers: int,
    kinds: list[str] | tuple[str, ...] = (),
) -> PromptRecord:
    """Assemble one prompt's tables from per-layer results (``{layer: (nmse, pairs, image queries)}``).
    Layers that ``kinds`` marks as not softmax attention get an empty NMSE row and zero pairs."""
    kinds = resolve(kinds, num_layers)
    attention = require_softmax(kinds, num_layers, f"prompt {prompt_id}")
    missing = [i for i in attention if i not in layers]
    if missing:
        raise ValueError(
            f"prompt {prompt_id}: no attention call recorded for softmax-attention layers {missing[:8]} "
            f"({describe(kinds, num_layers)}); did those layers run on the 'bsight' attention implementation?"
        )
    extra = sorted(i for i in layers if not is_softmax(kinds[i]))
    if extra:
        raise ValueError(
            f"prompt {prompt_id}: attention calls recorded for layers {extra[:8]}, which the model's layer kinds mark "
            f"as {sorted({kinds[i] for i in extra})}: the adapter's layer kinds are wrong"
        )
    zero = [0] * len(KeptPairs._fields)
    return PromptRecord(
        id=prompt_id,
        num_tokens=layout.num_valid,
        num_images=layout.num_images,
        image_queries=layers[attention[0]][2],
        nmse=[layers[i][0].tolist() if i in layers else [] for i in range(num_layers)],
        pairs=[list(layers[i][1]) if i in layers else zero for i in range(num_layers)],
    )


def characterize_layers(
    prompt_id: str,
    layout: PromptLayout,
    layers: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, LayerCall]],
    *,
    chunk_size: int = 256,
) -> PromptRecord:
    """Characterize one prompt from per-layer ``(q, k, v, call)`` without a model (synthetic data, memory
    checks). Layers are consumed one at a time, so an iterator keeps only one layer's q, k, v alive."""
    meta = LayoutMeta.build(layout.unpadded())
    tables: dict[int, tuple[torch.Tensor, KeptPairs, int]] = {}
    pairs: dict[int | None, KeptPairs] = {}
    for index, item in enumerate(layers):
        q, k, v, call = item
        del item
        res = layer_nmse(q, k, v, meta, scale=call.scale, window=call.window, chunk_size=chunk_size)
        if call.window not in pairs:
            pairs[call.window] = pair_counts(meta, call.window)
        tables[index] = (res.nmse, pairs[call.window], res.image_queries)
        del q, k, v, res  # before the next layer is made: one layer alive at a time
    return prompt_record(prompt_id, layout, tables, len(tables))


def characterize_model(
    adapter: ModelAdapter,
    prompts: Iterable[tuple[str, Prepared]],
    *,
    dataset: DatasetInfo,
    sinks: SinkPolicy | None = None,
    chunk_size: int = 256,
    run: Callable[[Prepared, AttentionMethod], Any] | None = None,
    on_prompt: Callable[[PromptRecord], None] | None = None,
) -> CharacterizationResult:
    """Characterize a loaded model over ``(prompt id, prepared inputs)`` pairs.

    ``sinks`` overrides the adapter's sink policy (sweeps over the sink fraction: one run per policy).
    ``run(prepared, method)`` performs one prefill under ``method``; the default is ``adapter.logits``
    (pass a leaner prefill that skips the LM head for long prompts). Prompts without image tokens carry no
    evidence and are listed in ``skipped``. ``on_prompt`` sees each record as it is made (progress, caching).
    The dense reference is the model's own dense path in the model's dtype, so with bf16 models NMSE has a
    floor of about 1e-5 from rounding; thresholds far below that are meaningless.
    """
    info = adapter.info
    kinds = info.kinds()
    require_softmax(kinds, info.num_layers, f"model {info.model_id!r}")
    skipped_layers = [i for i, k in enumerate(kinds) if not is_softmax(k)]
    if skipped_layers:
        log.info(
            "characterizing %s (%s): skipping %d layers that are not softmax attention: %s",
            info.model_id,
            describe(kinds, info.num_layers),
            len(skipped_layers),
            skipped_layers,
        )
    sinks = sinks or adapter.layout_spec().sinks
    probe = CharacterizationProbe({"chunk_size": chunk_size})
    probe.setup(info)
    run = run or adapter.logits
    result = CharacterizationResult(
        model_id=info.model_id,
        model_revision=info.revision,
        weights=info.weights,
        num_layers=info.num_layers,
        num_heads=info.num_heads,
        num_kv_heads=info.num_kv_heads,
        head_dim=info.head_dim,
        sliding_windows=list(info.sliding_windows),
        layer_kinds=list(info.layer_kinds),
        dataset=dataset,
        sink_policy=sinks,
        tool_version=tool_version(),
    )
    for prompt_id, prepared in prompts:
        prepared = Prepared(prepared.inputs, [lay.with_sinks(sinks) for lay in prepared.layouts])
        with torch.no_grad():
            run(prepared, probe)
        rows = probe.take()
        for r, layout in enumerate(prepared.layouts):
            rid = prompt_id if len(prepared.layouts) == 1 else f"{prompt_id}#{r}"
            if layout.num_images == 0:
                result.skipped.append(SkippedPrompt(id=rid, reason="no image segments"))
                continue
            if r >= len(rows):
                raise RuntimeError(
                    f"prompt {rid}: the model made no attention call through the probe (attn_implementation "
                    "not 'bsight'?)"
                )
            record = prompt_record(rid, layout, rows[r], info.num_layers, kinds)
            result.prompts.append(record)
            if on_prompt is not None:
                on_prompt(record)
    return result
