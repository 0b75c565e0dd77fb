"""Timing sweep of the BlindSight kernel against its peers on one GPU, in one process and one run.

Layouts (the one of ``peers.md`` and one with mixed image sizes): a 64-token text prefix, then images each
preceded by a 16-token text label, then the rest of the prompt as a question of at least 64 tokens; 4 sink
tokens per image. Image sizes: 1024 tokens (``peers``) or uniform in [256, 1600] (``mixed``, fixed seed).
Heads: Qwen2-VL-7B (28 query heads, 4 KV heads, head_dim 128), bf16, batch 1.

Methods, for each category (all heads in it) and for ``mixed30`` (30% dense heads, the rest spread over the
three sparse categories, GQA groups mixed, the dense heads' SDPA on a side stream beside the kernel, the
default; ``mixed30_serial``: the same with ``overlap_dense=False``, one after the other; ``mixed30_dense_part``
and ``mixed30_kernel_part``: its two halves timed apart):

* ``ours``     - :func:`bsight.kernels.blindsight_attention` (dense heads on cuDNN SDPA, the rest in one launch);
* ``cudnn``    - SDPA dense causal, cuDNN backend (K/V expanded to 28 heads beforehand, as in peers.md);
  ``cudnn_gqa`` the same on the 4 KV heads (``enable_gqa``), where cuDNN takes grouped-query inputs;
* ``fa2``      - SDPA dense causal, flash backend (FlashAttention-2);
* ``flex``     - FlexAttention with the same per-head mask (``masks.head_mask``), compiled with static
                 shapes, block mask built once per prompt (timed apart), dynamo's cache limit raised.

Each time is the median of repeated runs over two input sets used in turn (``triton.testing.do_bench``;
calls over 200 ms: three event-timed runs after a warm-up, see :func:`_bench`); cuDNN and our all-dense
head map (routed to cuDNN) are timed interleaved, call by call (:func:`_bench_interleaved`). Also timed:
the metadata build (``LayoutMeta.build`` and the kernel's tile plan), and whether a new prompt length
compiled anything; recorded: each compiled kernel's registers, spills and shared memory.

``run_sweep(...)`` returns the rows (``tokens, layout, method, category, ms`` plus context); ``run(spec)`` (a
:class:`KernelSweepSpec`) returns the whole document (provenance, setup, rows, targets of the kernel issue) that
``python -m bsight.harness.benchmarks.kernel_sweep --out FILE`` writes. Importing this module loads no Triton.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.provenance import benchmark_provenance, cli_command
from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES, Category
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta

if TYPE_CHECKING:  # the kernel modules load Triton: imported where a sweep runs
    from bsight.kernels.blindsight_attention import KernelConfig

logger = logging.getLogger(__name__)
LENGTHS = (36_864, 73_728, 147_456, 301_056)
LAYOUTS = ("peers", "mixed")
METHODS = ("ours", "cudnn", "fa2", "flex")
PREFIX, LABEL, QUESTION, SINKS = 64, 16, 64, 4


def make_layout(tokens: int, mixed_sizes: bool = False, seed: int = 0) -> PromptLayout:
    """The sweep's prompt: text prefix, (label, image) pairs while they fit, then the question."""
    rng = random.Random(seed)
    segs: list[tuple[str, int]] = [("text", PREFIX)]
    pos = PREFIX
    while True:
        n = rng.randint(256, 1600) if mixed_sizes else 1024
        if pos + LABEL + n + QUESTION > tokens:
            break
        segs += [("text", LABEL), ("image", n)]
        pos += LABEL + n
    segs.append(("text", tokens - pos))
    return PromptLayout.from_segments(segs, sinks=SinkPolicy(kind="offsets", offsets=tuple(range(SINKS))))


def mixed_head_map(num_heads: int, dense_share: float = 0.3, seed: int = 0) -> list[int]:
    """``round(dense_share * H)`` dense heads, the others cycling over the sparse categories, shuffled."""
    n_dense = round(dense_share * num_heads)
    cats = [Category.DENSE.value] * n_dense + [SPARSE_CATEGORIES[i % 3].value for i in range(num_heads - n_dense)]
    random.Random(seed).shuffle(cats)
    return cats


def kept_pairs(meta: LayoutMeta, category: Category) -> int:
    """Exact (query, key) pairs a head of this category keeps on a causal layer (for FLOP floors)."""
    S = meta.length
    starts, ends, glob_before = (
        meta.host_tables
        if hasattr(meta, "host_tables")
        else (meta.img_start.tolist(), meta.img_end.tolist(), meta.glob_before.tolist())
    )
    text_rows = meta.text_idx.long() + 1
    total = int(text_rows.sum())
    if category is Category.DENSE:
        return S * (S + 1) // 2
    text_before = meta.text_before.tolist()
    sink_ptr = meta.sink_ptr.tolist()
    for i, (s, e) in enumerate(zip(starts, ends)):
        n = e - s
        own_sinks = sink_ptr[i + 1] - sink_ptr[i]
        if category is Category.SINK:
            # earlier globals + own sinks at or before the row + itself (when not a sink)
            own = sum(min(own_sinks, r + 1) for r in range(n)) if own_sinks else 0
            total += n * glob_before[i] + own + (n - own_sinks)
        elif category is Category.INTRA_IMAGE:
            total += n * text_before[i] + n * (n + 1) // 2
        else:
            total += n * glob_before[i] + n * (n + 1) // 2
    return total


def _bench(calls: Sequence[Callable[[], object]], runs: int = 3, slow_ms: float = 200.0) -> float:
    """Median ms over the input sets used in turn, after one untimed call (compilation, warm-up).

    ``triton.testing.do_bench`` (median, >= ``runs`` timed runs, L2 flushed between runs) for calls under
    ``slow_ms``; above that, the same event timing of ``runs`` runs without do_bench's five extra estimate
    runs (at 300K a dense call takes 1-2 s, and its gigabytes of K/V dwarf the 50 MB L2 anyway).
    """
    import triton.testing

    turn = [0]

    def fn():
        calls[turn[0] % len(calls)]()
        turn[0] += 1

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = 1e3 * (time.perf_counter() - t0)
    if est < slow_ms:
        return float(triton.testing.do_bench(fn, warmup=25.0, rep=max(200.0, runs * est), return_mode="median"))
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return float(sorted(times)[len(times) // 2])


def _bench_interleaved(
    calls: dict[str, Sequence[Callable[[], object]]], runs: int = 5, min_ms: float = 300.0
) -> dict[str, float]:
    """Median ms of each named method, its calls timed one at a time and alternated with the others'.

    Used where two methods must be compared to within a few percent (our dense path against cuDNN): timed
    back to back, a second method runs on a warmer card (clocks drop under a long matrix load) and the
    difference of two separate medians mixes that in. After one untimed call of each (which also estimates
    its time), rounds of one call per method (input sets in turn) are queued with an event pair around each
    call and no synchronization until the end, so host-side launch time overlaps the device work as in
    ``do_bench``; enough rounds for ``runs`` timings and ``min_ms`` of device time per method.
    """
    est = {}
    for name, fns in calls.items():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fns[0]()
        torch.cuda.synchronize()
        est[name] = 1e3 * (time.perf_counter() - t0)
    rounds = max(runs, math.ceil(min_ms / max(min(est.values()), 1e-3)))
    events = {name: [] for name in calls}
    for i in range(rounds):
        for name, fns in calls.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fns[i % len(fns)]()
            b.record()
            events[name].append((a, b))
    torch.cuda.synchronize()
    times = {name: sorted(a.elapsed_time(b) for a, b in ev) for name, ev in events.items()}
    return {name: float(t[len(t) // 2]) for name, t in times.items()}


def _compiled_kernels(fn=None) -> list:
    """Compiled specializations of a Triton function (default: the attention kernel) on every device."""
    from bsight.kernels.triton_fwd import bsight_fwd_kernel

    fn = fn or bsight_fwd_kernel
    caches = getattr(fn, "device_caches", None)
    if caches is not None:
        return [k for entry in caches.values() for k in entry[0].values()]
    return [k for c in getattr(fn, "cache", {}).values() for k in c.values()]


def _compiled_variants() -> int:
    """Compiled variants of the attention kernel and of the tile-plan kernel together."""
    from bsight.kernels.plan import _plan_kernel

    return len(_compiled_kernels()) + len(_compiled_kernels(_plan_kernel))


def _resources(kernel) -> dict:
    """Registers, spills and shared memory of a compiled kernel, and the programs one SM can hold."""
    md = kernel.metadata
    warps = getattr(md, "num_warps", None)
    regs, spills, smem = getattr(kernel, "n_regs", None), getattr(kernel, "n_spills", None), getattr(md, "shared", None)
    out = {
        "regs": regs,
        "spills": spills,
        "shared_bytes": smem,
        "num_warps": warps,
        "num_stages": getattr(md, "num_stages", None),
    }
    if regs and warps and smem is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        per_sm_regs = getattr(props, "regs_per_multiprocessor", 65536)
        per_sm_smem = getattr(props, "shared_memory_per_multiprocessor", 233472)
        by_regs = per_sm_regs // (-(-regs // 8) * 8 * 32 * warps)
        by_smem = per_sm_smem // (smem + 1024) if smem else 32
        out["programs_per_sm"] = int(min(by_regs, by_smem, 2048 // (32 * warps)))
    return out


def _mixed_part_calls(
    sets, meta: LayoutMeta, cats: list[int], cfg: KernelConfig
) -> dict[str, list[Callable[[], object]]]:
    """The two halves of a mixed head map's call, timed apart to attribute its distance from the Amdahl
    bound: SDPA on the dense heads alone (with its copies of q and K/V) and the kernel on the other heads."""
    from bsight.kernels.blindsight_attention import _dense_sdpa, _launch

    dense = [h for h, c in enumerate(cats) if c == Category.DENSE.value]
    rest = [h for h in range(len(cats)) if h not in dense]
    scale = sets[0][0].shape[-1] ** -0.5
    group = sets[0][0].shape[0] // sets[0][1].shape[0]
    outs = [torch.empty_like(q) for q, _, _ in sets]
    return {
        "mixed30_dense_part": [lambda s=s: _dense_sdpa(*s, dense, group, scale) for s in sets],
        "mixed30_kernel_part": [
            lambda s=s, o=o: _launch(*s, o, meta, cats, rest, group, scale, None, cfg) for s, o in zip(sets, outs)
        ],
    }


def _timed_ms(fn: Callable[[], object], reps: int = 5) -> float:
    """Median wall ms of a host-side routine that launches device work (synchronized)."""
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(1e3 * (time.perf_counter() - t0))
    return sorted(out)[len(out) // 2]


def _flex_setup() -> Callable:
    """FlexAttention compiled with static shapes (peers.md's setup); its block masks come from the segment table
    (:class:`~bsight.plugins.methods.flex.CategoryBlockMasks`).

    One compile per prompt length; dynamo's limits raised so that no length falls back to the eager path.
    With automatic dynamic shapes (the default), the 2026-11-22 run recompiled ``create_block_mask``
    dynamically at its second length, fell back to an eager path and ran out of memory at 147K (81 GiB) and
    300K (338 GiB): see kernels/NOTES.md.
    """
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    cfg = torch._dynamo.config
    for name, limit in (
        ("cache_size_limit", 256),
        ("recompile_limit", 256),
        ("accumulated_cache_size_limit", 4096),
        ("accumulated_recompile_limit", 4096),
    ):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), limit))
    cfg.automatic_dynamic_shapes = False
    return torch.compile(flex_attention, dynamic=False)


def _check_full_size(
    q, k, v, meta: LayoutMeta, cats: list[int], config: KernelConfig | None, rows_checked: int = 192
) -> float:
    """Max relative error over sampled rows (every head) against an explicit float32 softmax on the exact
    mask (``masks.head_mask``): catches indexing errors at large offsets without an S x S reference."""
    from bsight.kernels.blindsight_attention import blindsight_attention
    from bsight.kernels.sparsity.masks import head_mask

    S, dev = meta.length, q.device
    out = torch.full_like(q, float("nan"))
    blindsight_attention(q, k, v, meta, torch.tensor(cats, dtype=torch.int32), config=config, out=out)
    if not torch.isfinite(out).all():
        raise AssertionError("kernel left unwritten or non-finite outputs")
    g = q.shape[0] // k.shape[0]
    rows = torch.cat(
        [meta.text_idx[-32:].long(), torch.randint(0, S, (rows_checked,), device=dev), meta.img_start[-1:].long()]
    )
    mod = head_mask(meta, torch.tensor(cats, dtype=torch.int32, device=dev))
    b = torch.zeros((), dtype=torch.long, device=dev)
    cols = torch.arange(S, device=dev)[None, None, :]
    worst = 0.0
    for kvh in range(k.shape[0]):  # one KV group at a time: [G, rows, S] intermediates
        heads = torch.arange(kvh * g, (kvh + 1) * g, device=dev)
        keep = mod(b, heads[:, None, None], rows[None, :, None], cols)
        s = torch.einsum("hrd,kd->hrk", q[heads][:, rows].float(), k[kvh].float()) / math.sqrt(q.shape[-1])
        p = torch.softmax(s.masked_fill(~keep, float("-inf")), -1)
        ref = torch.einsum("hrk,kd->hrd", p, v[kvh].float())
        got = out[heads][:, rows].float()
        worst = max(worst, float(((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max()))
        del keep, s, p
    return worst


def run_sweep(
    lengths: Sequence[int] = LENGTHS,
    layouts: Sequence[str] = LAYOUTS,
    methods: Sequence[str] = METHODS,
    num_heads: int = 28,
    num_kv_heads: int = 4,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    configs: dict[str, KernelConfig] | None = None,
    check: bool = True,
    kernel_dense_upto: int = 0,
    flex_until_s: float | None = None,
    stop_after_s: float | None = None,
    log: Callable[[str], None] = print,
    on_rows: Callable[[list[dict]], None] | None = None,
    device: str = "cuda",
) -> list[dict]:
    """Time every method on every (length, layout, head map); rows ``{tokens, layout, method, category, ms, ...}``.

    ``configs``: kernel block configs to time ``ours`` with (name -> config; default: the kernel's default).
    ``check``: compare the kernel with an explicit-mask reference on sampled rows before timing (a failure
    is recorded in the rows, and timing goes on). ``kernel_dense_upto``: up to this length, also time
    all-dense heads inside our kernel (``dense_in_kernel``: the kernel's own throughput against cuDNN).
    Layout-independent timings (dense baselines, our all-dense head map) are taken once per length, on the
    first layout, and reported for every layout; cuDNN and our all-dense head map (which routes to cuDNN)
    are timed interleaved (:func:`_bench_interleaved`). ``flex_until_s`` / ``stop_after_s``: seconds after
    the start past which FlexAttention points / all further points are skipped (and recorded as skipped), so
    that a bounded run still returns what it measured. ``on_rows``: called with all rows after each point.
    """
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bsight.kernels.blindsight_attention import blindsight_attention, cudnn_takes_gqa, default_config
    from bsight.kernels.plan import build_plan

    t_start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - t_start  # noqa: E731
    dev = torch.device(device)
    configs = configs or {"default": default_config(head_dim)}
    G = num_heads // num_kv_heads
    mixed = mixed_head_map(num_heads)
    head_maps: dict[str, list[int]] = {c.label: [c.value] * num_heads for c in Category}
    head_maps["mixed30"] = mixed
    flex = _flex_setup() if "flex" in methods else None
    rows: list[dict] = []
    variants_before: int | None = None
    seen_kernels: set[int] = set()

    def add(**row) -> dict:
        rows.append(row)
        return row

    def sdpa(q, k, v, backend, gqa=False):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **({"enable_gqa": True} if gqa else {}))

    for S in lengths:
        if stop_after_s is not None and elapsed() > stop_after_s:
            add(
                tokens=S,
                layout="-",
                method="skipped",
                category="-",
                ms=None,
                reason=f"time budget ({stop_after_s:.0f} s) spent",
            )
            log(f"S={S}: skipped, time budget spent")
            continue
        gen = torch.Generator(device=dev).manual_seed(S)
        sets = [
            tuple(
                torch.randn(h, S, head_dim, device=dev, dtype=dtype, generator=gen)
                for h in (num_heads, num_kv_heads, num_kv_heads)
            )
            for _ in range(2)
        ]
        once: dict[tuple[str, str], float] = {}  # layout-independent (method, category) -> ms
        # K/V expanded to the query heads beforehand, as in peers.md
        expanded = (
            [(q[None], k.repeat_interleave(G, 0)[None], v.repeat_interleave(G, 0)[None]) for q, k, v in sets]
            if {"cudnn", "fa2"} & set(methods)
            else []
        )
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
            if name not in methods or (name == "cudnn" and "ours" in methods):
                continue  # cuDNN with ours: timed interleaved with our all-dense head map below
            try:
                once[(name, "dense")] = _bench([lambda s=s, b=backend: sdpa(*s, b) for s in expanded])
                log(f"S={S} {name} dense causal {once[(name, 'dense')]:.2f} ms")
            except Exception as e:  # a backend missing on this GPU/torch: say so, go on
                add(
                    tokens=S,
                    layout="-",
                    method=name,
                    category="dense",
                    ms=None,
                    error=f"{type(e).__name__}: {str(e)[:200]}",
                )
                log(f"S={S} {name} failed: {e}")
        for li, lay_name in enumerate(layouts):
            layout = make_layout(S, mixed_sizes=lay_name == "mixed")
            ctx = {"tokens": S, "layout": lay_name, "images": layout.num_images}
            meta_ms = _timed_ms(lambda: LayoutMeta.build(layout, dev))
            meta = LayoutMeta.build(layout, dev)
            _ = meta.has_bidirectional
            add(**ctx, method="layout_meta_build", category="-", ms=meta_ms)
            for n, c in configs.items():
                add(
                    **ctx,
                    method="plan_build",
                    config=n,
                    category="-",
                    ms=_timed_ms(lambda c=c, m=meta: build_plan(m, c.block_m, None)),
                )
            log(
                f"S={S} {lay_name}: {layout.num_images} images; "
                f"LayoutMeta.build {meta_ms:.2f} ms, plan {rows[-1]['ms']:.2f} ms"
            )
            pairs = {c.label: kept_pairs(meta, c) for c in Category}
            if "ours" in methods and li == 0:
                dense_t = torch.tensor(head_maps["dense"], dtype=torch.int32)
                ours_dense = [lambda s=s, m=meta: blindsight_attention(*s, m, dense_t) for s in sets]
                if "cudnn" in methods:
                    try:
                        calls = {
                            "cudnn": [lambda s=s: sdpa(*s, SDPBackend.CUDNN_ATTENTION) for s in expanded],
                            "ours": ours_dense,
                        }
                        if cudnn_takes_gqa(dev):  # cuDNN on the grouped K/V itself, no expansion
                            calls["cudnn_gqa"] = [
                                lambda s=s: sdpa(*(t[None] for t in s), SDPBackend.CUDNN_ATTENTION, gqa=True)
                                for s in sets
                            ]
                        pair = _bench_interleaved(calls)
                        calls = {}  # drop the expanded K/V
                        for name, ms in pair.items():
                            once[(name, "dense")] = ms
                        log(f"S={S} interleaved: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in pair.items()))
                    except Exception as e:
                        add(
                            tokens=S,
                            layout="-",
                            method="cudnn",
                            category="dense",
                            ms=None,
                            error=f"{type(e).__name__}: {str(e)[:200]}",
                        )
                        log(f"S={S} cudnn failed: {e}")
                if ("ours", "dense") not in once:
                    once[("ours", "dense")] = _bench(ours_dense)
                expanded = []
                torch.cuda.empty_cache()
            if "ours" in methods:
                for cname, cfg in configs.items():
                    if check:
                        err = _check_full_size(*sets[0], meta, mixed, cfg)
                        ok = err <= 2e-2
                        add(
                            **ctx,
                            method="ours",
                            config=cname,
                            category="check_mixed30_max_rel_err",
                            ms=None,
                            value=err,
                            passed=ok,
                        )
                        log(
                            f"S={S} {lay_name} [{cname}] sampled-row check: "
                            f"max rel err {err:.2e} {'ok' if ok else 'FAILED'}"
                        )
                    maps = {k: v for k, v in head_maps.items() if k != "dense"}
                    maps["mixed30_serial"] = mixed  # dense heads' SDPA, then the kernel
                    if S <= kernel_dense_upto and li == 0:
                        maps["dense_in_kernel"] = head_maps["dense"]
                    first_call = None
                    ms_of: dict[str, float] = {}
                    for hm, cats in maps.items():
                        cats_t = torch.tensor(cats, dtype=torch.int32)
                        kw = dict(
                            config=cfg,
                            dense_backend="kernel" if hm == "dense_in_kernel" else "auto",
                            overlap_dense=hm != "mixed30_serial",
                        )
                        t0 = time.perf_counter()
                        blindsight_attention(*sets[0], meta, cats_t, **kw)
                        torch.cuda.synchronize()
                        first_call = first_call or 1e3 * (time.perf_counter() - t0)
                        ms = _bench(
                            [lambda s=s, m=meta, c=cats_t, kw=kw: blindsight_attention(*s, m, c, **kw) for s in sets]
                        )
                        pair_count = sum(pairs[Category(c).label] for c in cats)
                        r = add(
                            **ctx,
                            method="ours",
                            config=cname,
                            category=hm,
                            ms=ms,
                            tflops_kept=4 * head_dim * pair_count / (ms * 1e-3) / 1e12,
                        )
                        ms_of[hm] = ms
                        log(
                            f"S={S} {lay_name} ours[{cname}] {hm}: {ms:.3f} ms "
                            f"({r['tflops_kept']:.0f} TFLOP/s on kept pairs)"
                        )
                        if hm == "dense_in_kernel":
                            once[("ours:" + cname, hm)] = ms
                        if hm == "mixed30":
                            for part, calls in _mixed_part_calls(sets, meta, cats, cfg).items():
                                add(**ctx, method="ours", config=cname, category=part, ms=_bench(calls))
                                log(f"S={S} {lay_name} ours[{cname}] {part}: {rows[-1]['ms']:.3f} ms")
                    if li:
                        for hm in ("dense_in_kernel",):
                            if ("ours:" + cname, hm) in once:
                                add(
                                    **ctx,
                                    method="ours",
                                    config=cname,
                                    category=hm,
                                    ms=once[("ours:" + cname, hm)],
                                    measured_on=layouts[0],
                                )
                    if ("ours", "dense") in once:
                        ms_of["dense"] = once[("ours", "dense")]
                        add(
                            **ctx,
                            method="amdahl_bound",
                            config=cname,
                            category="mixed30",
                            ms=sum(ms_of[Category(c).label] for c in mixed) / num_heads,
                        )
                    for kern in _compiled_kernels():
                        if id(kern) not in seen_kernels:
                            seen_kernels.add(id(kern))
                            add(
                                **ctx,
                                method="ours",
                                config=cname,
                                category="kernel_resources",
                                ms=None,
                                **_resources(kern),
                            )
                    variants = _compiled_variants()
                    variants_before = variants if variants_before is None else variants_before
                    add(**ctx, method="ours", config=cname, category="compiled_variants", ms=first_call, value=variants)
            for (name, cat), ms in once.items():
                if not name.startswith("ours:"):
                    add(**ctx, method=name, category=cat, ms=ms, **({"measured_on": layouts[0]} if li else {}))
            if flex is not None and flex_until_s is not None and elapsed() > flex_until_s:
                add(
                    **ctx,
                    method="flex",
                    category="-",
                    ms=None,
                    reason=f"skipped: flex time budget ({flex_until_s:.0f} s) spent",
                )
                log(f"S={S} {lay_name} flex skipped (time budget)")
            elif flex is not None:
                try:
                    t0 = time.perf_counter()
                    from bsight.plugins.methods.flex import CategoryBlockMasks

                    masks = CategoryBlockMasks(meta, num_heads)
                    torch.cuda.synchronize()
                    build_s = time.perf_counter() - t0
                    add(**ctx, method="flex_block_mask_build", category="-", ms=1e3 * build_s)
                    log(f"S={S} {lay_name} flex block masks from the segment table (4 categories) {build_s:.3f} s")
                    for hm in ("sink", "intra_image", "intra_image_sink", "mixed30"):
                        bm = masks.for_heads(head_maps[hm])
                        t0 = time.perf_counter()
                        flex(*[t[None] for t in sets[0]], block_mask=bm, enable_gqa=True)
                        torch.cuda.synchronize()
                        first = time.perf_counter() - t0
                        ms = _bench(
                            [lambda s=s: flex(*[t[None] for t in s], block_mask=bm, enable_gqa=True) for s in sets]
                        )
                        add(**ctx, method="flex", category=hm, ms=ms, first_call_s=first)
                        log(f"S={S} {lay_name} flex {hm}: {ms:.2f} ms (first call {first:.1f} s)")
                        del bm
                    del masks
                except Exception as e:
                    add(**ctx, method="flex", category="-", ms=None, error=f"{type(e).__name__}: {str(e)[:300]}")
                    log(f"S={S} {lay_name} flex failed: {type(e).__name__}: {str(e)[:300]}")
            for r in rows:
                if r["tokens"] == S and r["layout"] == lay_name and r["category"] in pairs:
                    r.setdefault("kept_pairs_per_head", pairs[r["category"]])
            del meta
            torch.cuda.empty_cache()
            if on_rows is not None:
                on_rows(rows)
        del sets, expanded
        torch.cuda.empty_cache()
    if variants_before is not None:
        add(
            tokens=None,
            layout="-",
            method="ours",
            category="compiled_variants_growth",
            ms=None,
            value=_compiled_variants() - variants_before,
        )
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets as ratios measured in this run (None where a needed row is missing)."""

    def ms(tokens, layout, method, category, config="default"):
        for r in rows:
            if (
                r["tokens"] == tokens
                and r["layout"] == layout
                and r["method"] == method
                and r["category"] == category
                and r.get("config", "default") == config
            ):
                return r["ms"]
        return None

    out = []
    lengths = sorted({r["tokens"] for r in rows if r["tokens"]})
    layouts = sorted({r["layout"] for r in rows if r["layout"] != "-"})
    for lay in layouts:
        for S, need in ((36_864, 8.0), (301_056, 20.0)):
            o, c = ms(S, lay, "ours", "intra_image_sink"), ms(S, lay, "cudnn", "dense")
            out.append(
                {
                    "target": f"intra_image_sink >= {need:g}x faster than cuDNN dense",
                    "tokens": S,
                    "layout": lay,
                    "ratio": c / o if o and c else None,
                    "need": need,
                }
            )
        for S in (147_456, 301_056):
            for cat in ("sink", "intra_image", "intra_image_sink"):
                o, f = ms(S, lay, "ours", cat), ms(S, lay, "flex", cat)
                out.append(
                    {
                        "target": ">= 5x faster than FlexAttention, same mask",
                        "tokens": S,
                        "layout": lay,
                        "category": cat,
                        "ratio": f / o if o and f else None,
                        "need": 5.0,
                    }
                )
        for S in lengths:
            o, b = ms(S, lay, "ours", "mixed30"), ms(S, lay, "amdahl_bound", "mixed30")
            out.append(
                {
                    "target": "mixed30 within 10% of its Amdahl bound",
                    "tokens": S,
                    "layout": lay,
                    "ratio": o / b if o and b else None,
                    "need": 1.10,
                    "lower_is_better": True,
                }
            )
            o, c = ms(S, lay, "ours", "dense"), ms(S, lay, "cudnn", "dense")
            out.append(
                {
                    "target": "dense heads no slower than cuDNN SDPA",
                    "tokens": S,
                    "layout": lay,
                    "ratio": o / c if o and c else None,
                    "need": 1.0,
                    "lower_is_better": True,
                }
            )
        m = ms(301_056, lay, "layout_meta_build", "-")
        p = ms(301_056, lay, "plan_build", "-")
        out.append(
            {
                "target": "metadata build <= 2 ms at 300K (LayoutMeta.build + tile plan)",
                "tokens": 301_056,
                "layout": lay,
                "ratio": (m + p) if m is not None and p is not None else None,
                "need": 2.0,
                "lower_is_better": True,
            }
        )
    for t in out:
        r = t["ratio"]
        t["met"] = None if r is None else (r <= t["need"] if t.get("lower_is_better") else r >= t["need"])
    return out


def _pivot(
    rows: list[dict], cols: Sequence[tuple[str, str]], cell: Callable[[dict, tuple[str, str]], str]
) -> list[str]:
    """Markdown lines: one line per (tokens, layout) with its image count, a cell per (method, category)
    column; ``cell(sel, col)`` gets that line's default-config rows keyed by (method, category)."""
    lines = [
        "| tokens | layout | images | " + " | ".join(f"{m} {c}" for m, c in cols) + " |",
        "|" + "---|" * (3 + len(cols)),
    ]
    for S, lay in sorted({(r["tokens"], r["layout"]) for r in rows if r["tokens"] and r["layout"] != "-"}):
        line = [r for r in rows if r["tokens"] == S and r["layout"] == lay]
        sel = {(r["method"], r["category"]): r for r in line if r.get("config", "default") == "default"}
        imgs = next((r["images"] for r in line if "images" in r), "")
        lines.append(f"| {S:,} | {lay} | {imgs} | " + " | ".join(cell(sel, c) for c in cols) + " |")
    return lines


def table(rows: list[dict]) -> str:
    """Markdown: ms per method and head map, one line per (tokens, layout)."""
    cols = [("cudnn", "dense"), ("cudnn_gqa", "dense"), ("fa2", "dense"), ("ours", "dense")]
    for cat in ("sink", "intra_image", "intra_image_sink", "mixed30"):
        cols += [("ours", cat), ("flex", cat)]
    cols += [("ours", "mixed30_serial"), ("amdahl_bound", "mixed30")]
    return "\n".join(
        _pivot(rows, cols, lambda sel, c: f"{sel[c]['ms']:.2f}" if c in sel and sel[c]["ms"] is not None else "-")
    )


def markdown(doc: dict) -> str:
    """The sweep document (:func:`main`'s JSON) as a page: times, speedups, kernel throughput, targets."""
    rows, prov = doc["rows"], doc["provenance"]
    cats = ("sink", "intra_image", "intra_image_sink", "mixed30")

    def ms(sel, key):
        return sel[key]["ms"] if key in sel and sel[key].get("ms") else None

    def speedup(sel, col):  # cuDNN dense, or FlexAttention on the same mask, over ours
        other = ("cudnn", "dense") if col[0] == "cudnn/ours" else ("flex", col[1])
        a, b = ms(sel, other), ms(sel, ("ours", col[1]))
        return f"{a / b:.2f}" if a and b else "-"

    commit = (prov.get("git_commit") or "unknown")[:12] + (" (uncommitted changes)" if prov.get("git_dirty") else "")
    out = [
        f"# BlindSight kernel timing sweep, {prov.get('gpu')}",
        "",
        f"Written by `{' '.join(prov.get('command', []))}` on {prov.get('date')} at commit {commit}: "
        f"torch {prov.get('torch')}, Triton {prov.get('triton')}, CUDA {prov.get('cuda')}, cuDNN {prov.get('cudnn')}. "
        "Rows, targets and provenance: the JSON beside this page. Setup and methods: the docstring of "
        "`bsight.harness.benchmarks.kernel_sweep`; analysis: kernels/NOTES.md."
        + (f" Note: {prov['provenance_note']}." if prov.get("provenance_note") else ""),
        "",
        "## Times, ms",
        "",
        table(rows),
        "",
        "## Speedups over cuDNN dense causal (same run), and FlexAttention on the same mask over ours",
        "",
        *_pivot(rows, [("cudnn/ours", c) for c in cats] + [("flex/ours", c) for c in cats], speedup),
        "",
        "## Kernel throughput on kept (query, key) pairs, TFLOP/s",
        "",
        *_pivot(
            rows,
            [("ours", c) for c in (*cats, "dense_in_kernel")],
            lambda sel, c: f"{sel[c]['tflops_kept']:.0f}" if c in sel and sel[c].get("tflops_kept") else "-",
        ),
        "",
        "## Targets",
        "",
        "| target | tokens | layout | category | measured | need | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in doc["targets"]:
        r = "-" if t["ratio"] is None else f"{t['ratio']:.3f}"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        out.append(
            f"| {t['target']} | {t['tokens']:,} | {t['layout']} | {t.get('category', '')} | {r} | {t['need']} | {met} |"
        )
    return "\n".join(out) + "\n"


class KernelSweepSpec(BaseModel):
    """What one sweep measures (the CLI's flags, ``--out`` aside); see :func:`run_sweep` for each field."""

    model_config = ConfigDict(extra="forbid")
    lengths: list[int] = Field(list(LENGTHS), min_length=1, description="prompt lengths (tokens)")
    layouts: list[Literal["peers", "mixed"]] = Field(list(LAYOUTS), min_length=1)
    methods: list[Literal["ours", "cudnn", "fa2", "flex"]] = Field(list(METHODS), min_length=1)
    configs: dict[str, list[int]] = Field(
        {}, description="extra kernel configs to time: name -> [BM, BN, warps, stages(, maxnreg)]"
    )
    check: bool = Field(True, description="check the kernel against an explicit-mask reference on sampled rows")
    kernel_dense_upto: int = Field(0, ge=0, description="also time dense heads inside our kernel up to this length")
    flex_until_s: float | None = Field(None, description="skip FlexAttention points after this many seconds")
    stop_after_s: float | None = Field(None, description="skip all points after this many seconds")

    def kernel_configs(self) -> dict[str, KernelConfig]:
        """The kernel's default config, then the extra ones."""
        from bsight.kernels.blindsight_attention import KernelConfig, default_config

        return {"default": default_config(128), **{n: KernelConfig(*c) for n, c in self.configs.items()}}


def run(
    spec: KernelSweepSpec,
    *,
    log: Callable[[str], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the sweep of ``spec`` (:func:`run_sweep`); returns the document ``{provenance, setup, rows, targets}``.

    ``log``: progress lines (default: this module's logger at INFO). ``on_update``: called with the document
    after every point. ``command``: the CLI's command line for the provenance (None: called as a library).
    """
    configs = spec.kernel_configs()
    prov = benchmark_provenance("kernel_sweep", command)

    def document(rows: list[dict]) -> dict[str, Any]:
        return {
            "provenance": prov,
            "setup": {
                "heads": [28, 4],
                "head_dim": 128,
                "dtype": "bfloat16",
                "sinks_per_image": SINKS,
                "label_tokens": LABEL,
                "configs": {n: vars(c) for n, c in configs.items()},
                "mixed30_head_map": mixed_head_map(28),
            },
            "rows": rows,
            "targets": targets(rows),
        }

    rows = run_sweep(
        lengths=spec.lengths,
        layouts=spec.layouts,
        methods=spec.methods,
        configs=configs,
        check=spec.check,
        kernel_dense_upto=spec.kernel_dense_upto,
        flex_until_s=spec.flex_until_s,
        stop_after_s=spec.stop_after_s,
        log=log or logger.info,
        on_rows=None if on_update is None else lambda rows: on_update(document(rows)),
    )
    return document(rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The CLI: parse ``argv`` into a :class:`KernelSweepSpec`, :func:`run` it, write the JSON and its Markdown
    page (after every point) and print the table and the targets; returns the document."""
    ap = argparse.ArgumentParser(
        prog="python -m bsight.harness.benchmarks.kernel_sweep", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--out",
        required=True,
        help="JSON file to write (rows, targets, provenance); a Markdown page goes beside it (.md)",
    )
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--configs", default="", help="extra kernel configs to time: name=BM/BN/warps/stages[/maxnreg],...")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument(
        "--kernel-dense-upto", type=int, default=0, help="also time dense heads inside our kernel up to this length"
    )
    ap.add_argument("--flex-until", type=float, default=None, help="skip FlexAttention points after this many seconds")
    ap.add_argument("--stop-after", type=float, default=None, help="skip all points after this many seconds")
    given = list(argv if argv is not None else sys.argv[1:])
    args = ap.parse_args(given)
    spec = KernelSweepSpec(
        lengths=[int(x) for x in args.lengths.split(",")],
        layouts=args.layouts.split(","),
        methods=args.methods.split(","),
        configs={
            name: [int(x) for x in cfg.split("/")]
            for name, cfg in (item.split("=") for item in filter(None, args.configs.split(",")))
        },
        check=not args.no_check,
        kernel_dense_upto=args.kernel_dense_upto,
        flex_until_s=args.flex_until,
        stop_after_s=args.stop_after,
    )
    if not torch.cuda.is_available():
        raise SystemExit("the timing sweep needs a CUDA GPU")
    out = Path(args.out)

    def save(doc: dict[str, Any]) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc, indent=1, default=str)
        out.write_text(text)
        out.with_suffix(".md").write_text(markdown(json.loads(text)))  # the page from the JSON as written

    doc = run(
        spec,
        log=lambda s: print(s, flush=True),
        on_update=save,
        command=cli_command("kernel_sweep", given, args.out),
    )
    save(doc)
    print(table(doc["rows"]))
    for t in doc["targets"]:
        verdict = {True: "MET ", False: "MISS", None: "?   "}[t["met"]]
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
        print(
            f"{verdict} {t['target']} @ {t['tokens']} {t['layout']} {t.get('category', '')}: {ratio} (need {t['need']})"
        )
    return doc


if __name__ == "__main__":
    main()
