"""Method ``flex``: BlindSight's exact masks run by PyTorch FlexAttention.

The mask is the method issue's predicate - the model's own mask (:func:`base_mask`: causal, Gemma 3's
bidirectional images, sliding window) intersected with each head's category rule (:func:`category_mask`) -
so ``flex`` and ``blindsight`` apply identical masks from the same head map. Block masks are built once per
prompt and sliding window, for the four categories, from the segment table (:class:`CategoryBlockMasks`: exact
kept-pair counts per tile, no mask evaluation); each layer takes its heads' rows from them (one gather). On CUDA
``flex_attention`` (and ``create_block_mask``, which the streaming baseline uses) is compiled, with dynamo's
recompile limit raised, on lengths padded to buckets (:func:`bucket_length`: a new prompt length recompiles only
when it opens a new bucket, at most 8 per doubling; past the default limit FlexAttention would fall back to an
eager path that materializes the scores). On CPU the eager path runs (tests, small prompts). Block-mask building
is reported as overhead ``mask_building``; FLOPs come from the static categories (:meth:`head_categories`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Hashable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod, ModelInfo, NoOptions, OverheadMeter
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.flops import block_pair_counts
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.masks import MaskMod, and_masks, base_mask, category_mask, head_mask
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.plugins.methods.head_map_option import HeadMapOption

CompileMode = Literal["auto", "always", "never"]
_COMPILE_LIMIT = 256


def raise_compile_limits(limit: int = _COMPILE_LIMIT) -> None:
    """Let dynamo keep one compiled graph per prompt length (torch's default of 8 is reached in one run)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), limit))


def chunk_rows(S: int, heads: int, max_bytes: int, block: int = 128) -> int:
    """Query rows per ``create_block_mask`` call: a multiple of ``block`` dividing ``S`` whose boolean
    ``[heads, rows, S]`` mask fits ``max_bytes`` (all of ``S`` when it is no multiple of ``block``)."""
    if S % block:
        return S
    nb = S // block
    fits = max(1, max_bytes // (heads * block * S))
    return block * max(d for d in range(1, min(nb, fits) + 1) if nb % d == 0)


def chunked_block_mask(
    mask_mod: MaskMod,
    num_heads: int | None,
    S: int,
    device: torch.device,
    build: Callable,
    block_size: int = 128,
    max_bytes: int = 8 << 30,
):
    """``build(mask_mod, None, num_heads, S, S)`` (``create_block_mask``, compiled or not) in query chunks of at
    most ``max_bytes`` of boolean mask each, joined with ``BlockMask.from_kv_blocks``.

    Why: inductor keeps a pointwise mask fused into its block reductions only below ~30 ops; larger mask mods
    (per-head category rules) materialize the ``[heads, rows, S]`` mask - whole, 81 GiB at 147K and 338 GiB
    at 300K (the out-of-memory failures of 2026-11-22). The chunk offset is a tensor, so the compiled builder
    is reused by every chunk of a prompt."""

    heads = num_heads or 1
    rows = chunk_rows(S, heads, max_bytes, block_size)
    if rows == S:
        return build(mask_mod, None, num_heads, S, S, device=device, BLOCK_SIZE=block_size)
    offset = torch.zeros((), dtype=torch.int64, device=device)

    def chunk_mask(b, h, q, kv):
        return mask_mod(b, h, q + offset, kv)

    parts = []
    for start in range(0, S, rows):
        offset.fill_(start)
        parts.append(build(chunk_mask, None, num_heads, rows, S, device=device, BLOCK_SIZE=block_size))
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts], dim=2)  # noqa: E731
    full = (None, None) if first.full_kv_num_blocks is None else (cat("full_kv_num_blocks"), cat("full_kv_indices"))
    return _from_kv_blocks(cat("kv_num_blocks"), cat("kv_indices"), *full, first.BLOCK_SIZE, mask_mod, S)


def categories_mask(meta: LayoutMeta, categories: torch.Tensor, window: int | None = None) -> MaskMod:
    """The model's own mask intersected with head ``h``'s category rule, from the foundation predicates.

    Per-head selection compares against plain ints (``cats[h] == 2``) so that dynamo can trace it;
    layers whose heads share one category use that category's rule alone."""
    present = sorted({int(c) for c in categories.tolist()})
    if len(present) == 1:
        return and_masks(base_mask(meta, window), category_mask(meta, present[0]))
    cats = categories.to(device=meta.device, dtype=torch.int32)
    rules = [(c, category_mask(meta, c)) for c in present]

    def per_head(b, h, q, kv):
        out = None
        for c, rule in rules:
            term = (cats[h] == c) & rule(b, h, q, kv)
            out = term if out is None else out | term
        return out

    return and_masks(base_mask(meta, window), per_head)


def ordered_blocks(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexAttention's block-sparse form of a boolean ``[..., q_blocks, kv_blocks]`` table: per query block, the
    count of marked key blocks and their indices first, ascending (as ``create_block_mask`` orders them)."""
    num = blocks.sum(dim=-1, dtype=torch.int32)
    idx = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num, idx


class CategoryBlockMasks:
    """Block masks of one prompt for every per-head category assignment, built from the segment table.

    The four categories' block tables come from exact kept-pair counts per tile
    (:func:`~bsight.kernels.sparsity.flops.block_pair_counts`: O(S x key blocks) from prefix sums, no mask
    evaluation), held as a four-head block mask (head ``c`` applies category ``c``); :meth:`for_heads` gives a
    layer's block mask by taking each head's rows from its category's head. Why: ``create_block_mask`` evaluates
    the mask over all S x S pairs (2.5 s per prompt at 147K on the H100, 14% of flex's prefill); before that,
    building each layer's per-head mask from scratch cost 26 s per 36K prompt. One ``mask_mod`` object reads the
    per-head categories from a buffer, so the compiled ``flex_attention`` is reused by every layer (the buffer's
    values are read when the kernel runs, in stream order), and it is evaluated on partial tiles only."""

    def __init__(self, meta: LayoutMeta, num_heads: int, window: int | None = None, block_size: int = 128) -> None:
        dev = meta.device
        kept = block_pair_counts(meta, block_size, window)[None]  # [1, 4, q_blocks, kv_blocks]
        full = kept == block_size * block_size
        kv_num, kv_idx = ordered_blocks((kept > 0) & ~full)
        full_num, full_idx = ordered_blocks(full)
        four = head_mask(meta, torch.arange(len(Category), dtype=torch.int32, device=dev), window)
        self.by_category = _from_kv_blocks(kv_num, kv_idx, full_num, full_idx, block_size, four, meta.length)
        self.cats = torch.zeros(num_heads, dtype=torch.int32, device=dev)
        self.mask_mod = head_mask(meta, self.cats, window)
        self.length = meta.length

    def for_heads(self, cats: torch.Tensor | list[int]):
        """The block mask of a layer whose head ``h`` applies category ``cats[h]`` (a ``BlockMask``)."""
        idx = torch.as_tensor(cats, dtype=torch.long).to(self.cats.device)
        if idx.numel() != self.cats.numel():
            raise ValueError(f"{idx.numel()} head categories for a block mask of {self.cats.numel()} heads")
        self.cats.copy_(idx)
        b = self.by_category
        tables = (b.kv_num_blocks, b.kv_indices, b.full_kv_num_blocks, b.full_kv_indices)
        rows = [t[:, idx].contiguous() for t in tables]
        return _from_kv_blocks(*rows, b.BLOCK_SIZE, self.mask_mod, self.length)


def _from_kv_blocks(kv_num, kv_idx, full_num, full_idx, block_size, mask_mod: MaskMod, length: int):
    """``BlockMask.from_kv_blocks`` (full blocks optional) with the sequence lengths, and without the query-side
    tables that only the backward pass reads (an argsort over every head's block table, per layer), where this
    torch takes those arguments."""
    from torch.nn.attention.flex_attention import BlockMask

    parts = dict(
        kv_num_blocks=kv_num,
        kv_indices=kv_idx,
        full_kv_num_blocks=full_num,
        full_kv_indices=full_idx,
        BLOCK_SIZE=block_size,
        mask_mod=mask_mod,
    )
    for extra in ({"seq_lengths": (length, length), "compute_q_blocks": False}, {"seq_lengths": (length, length)}):
        try:
            return BlockMask.from_kv_blocks(**parts, **extra)
        except TypeError:  # an older torch: fewer keyword arguments
            continue
    return BlockMask.from_kv_blocks(**parts)


def bucket_length(S: int, block: int = 128) -> int:
    """``S`` rounded up to its bucket: a multiple of ``max(8 * block, 2 ** (bits(S) - 4))``, so at most 8 buckets
    per doubling of length (<= 12.5% padding); 36,864 / 73,728 / 147,456 are their own buckets."""
    granule = max(8 * block, 2 ** max(0, S.bit_length() - 4))
    return -(-S // granule) * granule


def pad_meta(meta: LayoutMeta, length: int) -> LayoutMeta:
    """``meta`` with ``length - meta.length`` text positions appended (no image, no sink)."""
    n = length - meta.length
    if n <= 0:
        return meta
    return dataclasses.replace(
        meta,
        length=length,
        seg_id=F.pad(meta.seg_id, (0, n), value=-1),
        is_sink=F.pad(meta.is_sink, (0, n), value=False),
        bidir_group=F.pad(meta.bidir_group, (0, n), value=-1),
    )


class FlexRunner:
    """FlexAttention with a per-prompt block-mask cache: compiled on CUDA (``auto``), eager elsewhere. Compiled,
    lengths are bucketed (:meth:`bucketed`): a new prompt length recompiles only when it opens a new bucket."""

    def __init__(
        self,
        compile: CompileMode = "auto",
        block_size: int = 128,
        overhead: OverheadMeter | None = None,
        max_mask_bytes: int = 8 << 30,
    ) -> None:
        self.compile = compile
        self.block_size = block_size
        self.max_mask_bytes = max_mask_bytes
        self.overhead = overhead or OverheadMeter()
        self._meta: LayoutMeta | None = None
        self._masks: dict[Hashable, object] = {}
        self._flex: Callable | None = None

    def compiled(self, device: torch.device) -> bool:
        return self.compile == "always" or (self.compile == "auto" and device.type == "cuda")

    def build(self, mask_mod: MaskMod, num_heads: int | None, S: int, device: torch.device):
        """A block mask of ``mask_mod`` over ``S x S``, in query chunks (:func:`chunked_block_mask`), with the
        builder compiled where ``flex_attention`` is."""
        return chunked_block_mask(
            mask_mod, num_heads, S, device, self.builder(device), self.block_size, self.max_mask_bytes
        )

    def builder(self, device: torch.device) -> Callable:
        """``create_block_mask``, compiled where ``flex_attention`` is (dynamo's limits raised)."""
        from torch.nn.attention.flex_attention import create_block_mask

        compiled = self.compiled(device)
        if compiled:
            raise_compile_limits()
        return functools.partial(create_block_mask, _compile=compiled)

    def bucketed(self, meta: LayoutMeta) -> LayoutMeta:
        """Where compiled: the prompt's metadata right-padded to its length bucket (:func:`bucket_length`), so
        that prompts of nearby lengths share one compiled block-mask builder and one compiled kernel instead of
        recompiling for every new length. Padding is exact: padded positions are text tokens after every real
        query (the causal mask hides them from real queries; padded query rows are dropped by :meth:`attend`)."""
        if not self.compiled(meta.device):
            return meta
        return pad_meta(meta, bucket_length(meta.length, self.block_size))

    def block_mask(
        self, meta: LayoutMeta, key: Hashable, build_mod: Callable[[LayoutMeta], MaskMod], num_heads: int | None
    ):
        """The block mask for ``key`` on this prompt, built once (``num_heads=None`` broadcasts over heads).
        ``build_mod(meta)`` gives the mask mod over the (bucketed) metadata it is handed."""
        return self.cached(meta, key, lambda m: self.build(build_mod(m), num_heads, m.length, meta.device))

    def cached(self, meta: LayoutMeta, key: Hashable, make: Callable[[LayoutMeta], object]):
        """``make(meta)`` (``meta`` bucketed where compiled) once per prompt and ``key``, timed as overhead
        ``mask_building``."""
        if meta is not self._meta:
            self._meta, self._masks = meta, {}
        if key not in self._masks:
            with self.overhead.measure("mask_building", meta.device):
                self._masks[key] = make(self.bucketed(meta))
        return self._masks[key]

    def category_masks(self, meta: LayoutMeta, window: int | None, num_heads: int) -> CategoryBlockMasks:
        """This prompt's :class:`CategoryBlockMasks` for ``window``, built once per prompt (bucketed where
        compiled) and measured as ``mask_building``."""
        return self.cached(
            meta,
            ("categories", window, num_heads),
            lambda m: CategoryBlockMasks(m, num_heads, window, self.block_size),
        )

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, scale: float) -> torch.Tensor:
        """``q [Hq, S, D]``, ``k, v [Hkv, S, D]`` -> ``[Hq, S, D]``."""
        from torch.nn.attention.flex_attention import flex_attention

        if self.compiled(q.device):
            if self._flex is None:
                raise_compile_limits()
                self._flex = torch.compile(flex_attention, dynamic=False)
            fn = self._flex
        else:
            fn = flex_attention
        S, Sb = q.shape[1], int(block_mask.seq_lengths[0])
        if Sb > S:  # a bucketed block mask: pad to its length, drop the padded rows
            pad = (0, 0, 0, Sb - S)
            q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = fn(q[None], k[None], v[None], block_mask=block_mask, scale=scale, enable_gqa=q.shape[0] != k.shape[0])
        return out[0, :, :S] if Sb > S else out[0]


class FlexOptions(NoOptions):
    """Head map options as method ``blindsight`` takes them, so both run the identical masks."""

    head_map: str | HeadMap | None = Field(None, description="head map JSON file (or the head map itself)")
    uniform: str | None = Field(None, description="instead of a head map: every head in this category")
    sink_policy: SinkPolicy | None = Field(
        None, description="override; default: the head map's policy (uniform: the adapter's)"
    )
    compile: CompileMode = "auto"
    block_size: int = Field(128, ge=16)

    @model_validator(mode="after")
    def _one_source(self) -> FlexOptions:
        if (self.head_map is None) == (self.uniform is None):
            raise ValueError("flex needs exactly one of 'head_map' (a head map file) or 'uniform' (a category)")
        if self.uniform is not None:
            Category.parse(self.uniform)
        return self


class Flex(HeadMapOption, AttentionMethod):
    """BlindSight's categories by FlexAttention block masks. FLOPs come from :meth:`head_categories` (static,
    as for ``blindsight``); overhead: ``mask_building``."""

    name = "flex"
    description = "BlindSight's exact per-head masks (head map or one category) through PyTorch FlexAttention"
    Options = FlexOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.head_map: HeadMap | None = None
        self.sink_policy: SinkPolicy | None = self.options.sink_policy  # read by the attention bridge
        self.runner = FlexRunner(self.options.compile, self.options.block_size, self.overhead)

    def setup(self, model: ModelInfo) -> None:
        super().setup(model)
        opts = self.options
        if opts.uniform is not None:
            hm = HeadMap.uniform(
                model.model_id,
                model.num_layers,
                model.num_heads,
                opts.uniform,
                opts.sink_policy or SinkPolicy(),
                layer_kinds=model.kinds(),
            )
        else:
            hm = opts.head_map if isinstance(opts.head_map, HeadMap) else HeadMap.load(opts.head_map)
        hm.check_model(model.num_layers, model.num_heads, model.kinds())
        self.head_map = hm
        self.sink_policy = opts.sink_policy or (hm.sink_policy if opts.uniform is None else None)

    def head_categories(self, layer_idx: int) -> torch.Tensor | None:
        if self.head_map is None:
            raise RuntimeError("flex: setup(model_info) must run before prefill")
        if not self.head_map.is_softmax_layer(layer_idx):
            return None  # a linear layer (hybrid model): no attention call reaches the method
        return self.head_map.layer_categories(layer_idx)

    def prefill(self, q, k, v, meta, call):
        cats = self.head_categories(call.layer_idx)
        masks = self.runner.category_masks(meta, call.window, q.shape[0])
        with self.overhead.measure("mask_building", meta.device):
            bm = masks.for_heads(cats)  # one gather per layer
        return self.runner.attend(q, k, v, bm, call.scale)


@hookimpl
def bsight_attention_methods():
    return [Flex]
