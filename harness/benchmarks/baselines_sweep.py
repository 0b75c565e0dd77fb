"""Timing sweep of the baseline attention methods against dense and BlindSight, on the peers' layout.

    python -m bsight.harness.benchmarks.baselines_sweep --out FILE [--small] [--lengths 36864,73728]
        [--methods dense,blindsight,flex,mminference,streaming] [--categories intra_image_sink]
        [--mm-patterns vertical_slash:2d_boundary,a_shape:2d_boundary,...] [--reps 5]

Layout and shapes are those of ``peers.md``: 64 text tokens, then images of 1024 tokens each preceded by a
16-token text label, the rest of the prompt a question; 4 sink tokens per image; Qwen2-VL-7B heads (28 query,
4 key/value, head_dim 128), bf16, one layer's attention forward. Per method and length it records attention
time (median of repeated runs, ``triton.testing.do_bench``), run-time overhead timed apart (layout
metadata, mask building, pattern estimation), the first call's wall time (compilation), kept query-key pairs
per head and the FLOPs reduction against the model's own causal mask. q/k/v are random: estimated on
them, MMInference's vertical-slash scatters its diagonals over the whole prompt (every diagonal costs a
64-token tile per query tile), its worst case; ``a_shape`` with the same budgets puts them on the nearest
diagonals and first keys, what an estimate on local attention selects, its best case. Block-sparse work is
fixed by ``top_k`` whatever the inputs. ``--small`` runs a reduced shape on the CPU in seconds (checks the
script, not timings). The JSON is rewritten after every length, so a run cut short keeps what it finished;
``--append`` adds lengths measured by a later command to the same file.

As a library: :func:`run` takes a :class:`SweepSpec` and returns the document the CLI writes (schema, provenance,
setup, rows); importing this module loads no Triton and no plugin (they are imported where a sweep runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bsight.harness.provenance import benchmark_provenance, cli_command
from bsight.kernels.dispatch import LayerCall, sync
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.flops import pair_counts
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta

logger = logging.getLogger(__name__)
SCHEMA = "bsight.baselines_sweep/1"
Method = Literal["dense", "blindsight", "flex", "mminference", "streaming"]
METHODS: tuple[str, ...] = get_args(Method)
PEER_LENGTHS = (36864, 73728, 147456, 301056)
# vertical-slash estimated on random inputs scatters its diagonals (its worst case); a_shape with the same
# budgets puts them on the nearest diagonals and first keys, what an estimate on local attention selects
MM_PATTERNS = ("vertical_slash:2d_boundary", "a_shape:2d_boundary", "vertical_slash:none", "block_sparse:none")


@dataclass(frozen=True)
class Shape:
    heads: int
    kv_heads: int
    head_dim: int
    prefix: int
    label: int
    image: int
    sinks: int
    dtype: str
    lengths: tuple[int, ...]
    mm_vertical: int  # MMInference budgets (defaults of MInference's unsearched heads on the GPU)
    mm_slash: int
    mm_top_k: int
    stream_sink: int
    stream_window: int


GPU = Shape(28, 4, 128, 64, 16, 1024, 4, "bfloat16", PEER_LENGTHS, 1000, 6096, 100, 128, 3968)
SMALL = Shape(4, 2, 64, 64, 16, 128, 4, "float32", (1024, 2048), 64, 256, 4, 16, 256)


class SweepSpec(BaseModel):
    """What one sweep measures (the CLI's flags, ``--out`` and ``--append`` aside)."""

    model_config = ConfigDict(extra="forbid")
    small: bool = Field(False, description="reduced shape on the CPU (checks the script, not timings)")
    lengths: list[int] | None = Field(None, min_length=1, description="prompt lengths; default the shape's")
    methods: list[Method] = Field(list(METHODS), min_length=1)
    categories: list[str] = Field(["intra_image_sink"], min_length=1, description="head categories timed")
    mm_patterns: list[str] = Field(list(MM_PATTERNS), min_length=1, description="MMInference pattern:boundary")
    reps: int = Field(5, ge=1, description="timed runs per point (median)")

    @field_validator("categories")
    @classmethod
    def _categories(cls, categories: list[str]) -> list[str]:
        for c in categories:
            Category.parse(c)
        return categories

    @field_validator("mm_patterns")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        from bsight.plugins.methods.mminference import HeadPattern

        for spec in patterns:
            pattern, _, boundary = spec.partition(":")
            HeadPattern(pattern=pattern, boundary=boundary or "none")
        return patterns

    @property
    def shape(self) -> Shape:
        return SMALL if self.small else GPU

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.small else "cuda")


def peers_layout(length: int, shape: Shape) -> PromptLayout:
    """``prefix`` text, then as many (label, image) pairs as fit before a question of at least ``prefix``."""
    n = (length - 2 * shape.prefix) // (shape.label + shape.image)
    segments = [("text", shape.prefix)] + [s for _ in range(n) for s in (("text", shape.label), ("image", shape.image))]
    segments.append(("text", length - shape.prefix - n * (shape.label + shape.image)))
    return PromptLayout.from_segments(segments, sinks=SinkPolicy(kind="offsets", offsets=tuple(range(shape.sinks))))


class Timer:
    """Median milliseconds over ``reps`` runs: ``triton.testing.do_bench`` on CUDA (its repeat budget set
    from one timed call, so every length gets ``reps`` runs), wall clock on the CPU."""

    def __init__(self, reps: int, device: torch.device) -> None:
        self.reps, self.device = reps, device

    def first(self, fn: Callable[[], object]) -> tuple[float, object]:
        """Seconds of one synchronized call (the first call: compilation included), and its result."""
        sync(self.device)
        t0 = time.perf_counter()
        out = fn()
        sync(self.device)
        return time.perf_counter() - t0, out

    def ms(self, fn: Callable[[], object]) -> float:
        est = 1e3 * self.first(fn)[0]  # a warm call sets the repeat budget
        if self.device.type == "cuda":
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=est, rep=(self.reps + 0.5) * est, return_mode="median"))
        return statistics.median(1e3 * self.first(fn)[0] for _ in range(self.reps))


def _guard(record: dict, fn: Callable[[], None]) -> None:
    """Run one measurement; an error (out of memory, a missing kernel) is recorded, not fatal."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is data for the report
        record["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _reduction(kept_per_head: float, dense_per_head: int) -> float:
    return 1.0 - kept_per_head / dense_per_head


def sweep_length(length: int, shape: Shape, args: SweepSpec, device: torch.device, timer: Timer) -> dict:
    from bsight.plugins.methods.flex import FlexRunner, categories_mask
    from bsight.plugins.methods.mminference import HeadPattern, MMInference
    from bsight.plugins.methods.streaming import streaming_mask, streaming_pair_count

    layout = peers_layout(length, shape)
    dtype = getattr(torch, shape.dtype)
    meta = LayoutMeta.build(layout, device)
    row: dict = {"tokens": length, "images": layout.num_images, "methods": {}}
    row["layout_metadata_ms"] = timer.ms(lambda: LayoutMeta.build(layout, device))
    counts = pair_counts(meta)
    dense_pairs = counts.dense
    row["dense_pairs_per_head"] = dense_pairs
    gen = torch.Generator(device=device).manual_seed(0)
    H, Hkv, D = shape.heads, shape.kv_heads, shape.head_dim
    q = torch.randn(H, length, D, device=device, dtype=dtype, generator=gen)
    k = torch.randn(Hkv, length, D, device=device, dtype=dtype, generator=gen)
    v = torch.randn(Hkv, length, D, device=device, dtype=dtype, generator=gen)
    scale = D**-0.5
    call = LayerCall(layer_idx=0, scale=scale)
    methods = row["methods"]

    def record(name: str, **fields) -> dict:
        methods[name] = fields
        return methods[name]

    if "dense" in args.methods:
        rec = record("dense", implementation="SDPA cuDNN, causal" if device.type == "cuda" else "SDPA, causal")

        def dense() -> None:
            kk, vv = k.repeat_interleave(H // Hkv, 0)[None], v.repeat_interleave(H // Hkv, 0)[None]
            fn = lambda: F.scaled_dot_product_attention(q[None], kk, vv, is_causal=True, scale=scale)  # noqa: E731
            if device.type == "cuda":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                inner = fn
                fn = lambda: _with(sdpa_kernel([SDPBackend.CUDNN_ATTENTION]), inner)  # noqa: E731
            rec.update(
                first_call_s=timer.first(fn)[0],
                attention_ms=timer.ms(fn),
                kept_pairs_per_head=dense_pairs,
                flops_reduction=0.0,
            )

        _guard(rec, dense)

    for cat in args.categories if "blindsight" in args.methods else ():
        rec = record(f"blindsight/{cat}")
        cats = torch.full((H,), Category.parse(cat).value, dtype=torch.int32, device=device)

        def blindsight() -> None:
            if device.type == "cuda":
                from bsight.kernels.blindsight_attention import blindsight_attention

                rec["implementation"] = "bsight.kernels.blindsight_attention (Triton)"
                fn = lambda: blindsight_attention(q, k, v, meta, cats, scale=scale)  # noqa: E731
            else:
                from bsight.kernels.reference import reference_attention

                rec["implementation"] = "bsight.kernels.reference (CPU)"
                fn = lambda: reference_attention(q, k, v, meta, cats, scale=scale)  # noqa: E731
            kept = counts[Category.parse(cat)]
            rec.update(
                first_call_s=timer.first(fn)[0],
                attention_ms=timer.ms(fn),
                overhead_ms={"layout_metadata": row["layout_metadata_ms"]},
                kept_pairs_per_head=kept,
                flops_reduction=_reduction(kept, dense_pairs),
            )

        _guard(rec, blindsight)

    runner = FlexRunner(
        "auto"
    )  # its builder raises dynamo's limits: one compiled block-mask builder per mask and length
    compiled = runner.compiled(device)

    def flex_case(rec: dict, build_mod: Callable, kept: int) -> None:
        build = lambda: runner.build(build_mod(), None, length, device)  # noqa: E731
        rec["first_mask_build_s"], bm = timer.first(build)
        mask_ms = timer.ms(build)
        fn = lambda: runner.attend(q, k, v, bm, scale)  # noqa: E731
        rec.update(
            first_call_s=timer.first(fn)[0],
            attention_ms=timer.ms(fn),
            overhead_ms={"layout_metadata": row["layout_metadata_ms"], "mask_building": mask_ms},
            kept_pairs_per_head=kept,
            flops_reduction=_reduction(kept, dense_pairs),
            computed_block_fraction_of_full=1.0 - float(bm.sparsity()) / 100.0,
        )

    for cat in args.categories if "flex" in args.methods else ():
        rec = record(
            f"flex/{cat}", implementation=f"FlexAttention, {'compiled' if compiled else 'eager'}, 128-token blocks"
        )
        cats = torch.full((H,), Category.parse(cat).value, dtype=torch.int32)
        _guard(rec, lambda: flex_case(rec, lambda: categories_mask(meta, cats), counts[Category.parse(cat)]))

    if "streaming" in args.methods:
        rec = record(
            "streaming",
            implementation="FlexAttention A-shape mask",
            n_sink=shape.stream_sink,
            window=shape.stream_window,
        )
        _guard(
            rec,
            lambda: flex_case(
                rec,
                lambda: streaming_mask(meta, shape.stream_sink, shape.stream_window),
                streaming_pair_count(meta, shape.stream_sink, shape.stream_window),
            ),
        )

    for spec in args.mm_patterns if "mminference" in args.methods else ():
        pattern, _, boundary = spec.partition(":")
        pat = HeadPattern(
            pattern=pattern,
            boundary=boundary or "none",
            vertical_size=shape.mm_vertical,
            slash_size=shape.mm_slash,
            top_k=shape.mm_top_k,
        )
        rec = record(f"mminference/{spec}", pattern=pat.model_dump(exclude_none=True))

        def mminference() -> None:
            m = MMInference({"default": pat})
            pats = [pat] * H
            m.space(meta, None, False), m.space(meta, None, True)  # per-prompt tables, timed once below
            metadata_ms = m.overhead.take().get("index_metadata", 0.0)
            plan_fn = lambda: m.plan(pats, q, k, v, meta, call)  # noqa: E731
            plan = plan_fn()
            exec_fn = lambda: m.execute(plan, q, k, v, meta, call)  # noqa: E731
            rec["implementation"] = (
                "vertical_slash Triton kernel" if device.type == "cuda" else "vertical_slash reference (CPU)"
            )
            rec["first_call_s"], (_, kept) = timer.first(exec_fn)
            kept_mean = float(kept.double().mean())
            rec.update(
                attention_ms=timer.ms(exec_fn),
                overhead_ms={
                    "layout_metadata": row["layout_metadata_ms"],
                    "index_metadata": metadata_ms,
                    "pattern_estimation_and_permutation": timer.ms(plan_fn),
                },
                kept_pairs_per_head=kept_mean,
                flops_reduction=_reduction(kept_mean, dense_pairs),
            )

        _guard(rec, mminference)
    return row


def _with(ctx, fn: Callable[[], object]) -> object:
    with ctx:
        return fn()


def run(
    spec: SweepSpec,
    *,
    log: Callable[[str], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure every length of ``spec``; returns the sweep document ``{schema, provenance, setup, rows}``.

    ``log``: progress lines (default: this module's logger at INFO). ``on_update``: called with the document
    after every length (the CLI rewrites its file, so that a run cut short keeps what it finished).
    ``command``: the CLI's command line for the provenance (None: called as a library).
    """
    log = log or logger.info
    shape, device = spec.shape, spec.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run on the GPU, or set small for the CPU check")
    lengths = list(spec.lengths or shape.lengths)
    config = spec.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    prov = benchmark_provenance("baselines_sweep", command, device, extra={"config_hash": digest, "config": config})
    prov.update(started=prov["date"], ended=None)
    timer = Timer(spec.reps, device)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "provenance": prov,
        "setup": {
            "shape": asdict(shape),
            "lengths": lengths,
            "reps": spec.reps,
            "timing": "median ms; triton.testing.do_bench on CUDA"
            if device.type == "cuda"
            else "median ms; wall clock",
            "inputs": "random q/k/v; one layer's attention forward, batch 1",
            "flops": "kept query-key pairs per head x 4 x head_dim; reduction against the model's own causal mask",
        },
        "rows": [],
    }
    for length in lengths:
        log(f"[baselines_sweep] {length} tokens ...")
        doc["rows"].append(sweep_length(length, shape, spec, device, timer))
        prov["ended"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if on_update is not None:
            on_update(doc)
    return doc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bsight.harness.benchmarks.baselines_sweep", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--small", action="store_true", help="reduced shape on the CPU (checks the script)")
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    p.add_argument("--categories", type=lambda s: s.split(","), default=["intra_image_sink"])
    p.add_argument("--mm-patterns", type=lambda s: s.split(","), default=list(MM_PATTERNS))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the rows of an existing --out file (a length measured again replaces its row)",
    )
    args = p.parse_args(argv)
    bad = sorted(set(args.methods) - set(METHODS))
    if bad:
        p.error(f"unknown methods {bad}; allowed: {', '.join(METHODS)}")
    args.spec = SweepSpec(
        small=args.small,
        lengths=args.lengths,
        methods=args.methods,
        categories=args.categories,
        mm_patterns=args.mm_patterns,
        reps=args.reps,
    )  # a bad category or pattern is a ValueError naming it
    return args


def main(argv: list[str] | None = None) -> dict:
    """The CLI: parse ``argv`` into a :class:`SweepSpec`, :func:`run` it, write the JSON after every length
    (with ``--append``, merged with the rows of the existing file) and print the table; returns the document."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    if args.spec.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on the GPU, or pass --small for the CPU check")
    lengths = list(args.spec.lengths or args.spec.shape.lengths)
    earlier: list[dict] = []
    earlier_prov: list[dict] | None = None
    if args.append and args.out.is_file():
        previous = json.loads(args.out.read_text())
        earlier = [r for r in previous.get("rows", []) if r["tokens"] not in lengths]
        earlier_prov = previous.get("earlier_provenance", []) + [previous["provenance"]]

    def merged(doc: dict[str, Any]) -> dict[str, Any]:
        out = {**doc, "rows": sorted(earlier + doc["rows"], key=lambda r: r["tokens"])}
        if earlier_prov is not None:
            out["earlier_provenance"] = earlier_prov
        return out

    def save(doc: dict[str, Any]) -> None:
        args.out.write_text(json.dumps(merged(doc), indent=1) + "\n")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = merged(
        run(
            args.spec,
            log=lambda line: print(line, file=sys.stderr, flush=True),
            on_update=save,
            command=cli_command("baselines_sweep", given, args.out),
        )
    )
    print(table(doc))
    return doc


def table(doc: dict[str, Any]) -> str:
    """Markdown: attention ms and FLOPs reduction per length and method."""
    lines = ["| tokens | method | attention ms | FLOPs reduction | note |", "|---|---|---|---|---|"]
    for row in doc["rows"]:
        for name, rec in row["methods"].items():
            ms = f"{rec['attention_ms']:.3f}" if "attention_ms" in rec else "-"
            red = f"{rec['flops_reduction']:.1%}" if "flops_reduction" in rec else "-"
            lines.append(f"| {row['tokens']:,} | {name} | {ms} | {red} | {rec.get('error', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
