"""End-to-end time to first token (TTFT) of Qwen2-VL-7B on one GPU: dense vs method ``blindsight``.

    python -m bsight.harness.benchmarks.ttft --out reports/published/ttft_h100.json
    python -m bsight.harness.benchmarks.ttft --small --out ttft_small.json           # the whole path on CPU, tiny model

What is real and what is not (also written into the JSON):

* model: transformers' own ``Qwen2VLForConditionalGeneration`` built from the upstream Qwen2-VL-7B-Instruct
  ``config.json`` (real shapes: 28 layers, 28 query / 4 KV heads of 128, 32-block vision tower), with RANDOM
  bf16 weights initialized on the GPU. Timings do not depend on weight values; no accuracy is measured.
* prompts: multi-image prompts of about 36K, 73K, 147K and 300K tokens. Images have realistic sizes and go
  through the real ``Qwen2VLImageProcessor`` (upstream preprocessing config), which gives the real grids and
  token counts; the vision tower runs on them inside TTFT. Each distinct size is processed once and its
  pixels reused for every image of that size. Text tokens are random ids in the chat-template structure
  (no tokenizer files are available here).
* methods: ``dense`` (SDPA with the fastest backend measured on this GPU at the model's attention shape)
  and ``blindsight`` with a random head map (fixed seed) of 30% dense heads, the rest spread over the three
  sparse categories; sinks from the adapter's default policy.
* TTFT: from model inputs on the GPU to the first token (vision tower, M-RoPE indices, layout metadata,
  prefill with KV cache, last-position logits, argmax), CUDA-synchronized wall time. Attention time is
  measured with CUDA events around every prefill attention call of the bridge; peak memory is
  ``torch.cuda.max_memory_allocated`` of the run. MLPs run in chunks of ``--mlp-chunk`` tokens (row-wise, same
  result) so that 300K-token prefill fits in 80 GB; both methods run identically apart from attention.

As a library: :func:`run` takes a :class:`TTFTBenchSpec` and returns the document the CLI writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.provenance import benchmark_provenance, cli_command
from bsight.harness.random_models import ARCHITECTURES
from bsight.kernels.dispatch import sync
from bsight.kernels.sparsity.artifacts import tool_version

logger = logging.getLogger("bsight.ttft")

# The published config.json and preprocessor_config.json of Qwen/Qwen2-VL-7B-Instruct (architecture only; weights
# here are random), as `bsight random-model` writes them.
MODEL_ID = ARCHITECTURES["qwen2-vl-7b"]["hub_id"]
QWEN2_VL_7B_CONFIG: dict[str, Any] = ARCHITECTURES["qwen2-vl-7b"]["config"]
QWEN2_VL_PREPROCESSOR: dict[str, Any] = ARCHITECTURES["qwen2-vl-7b"]["preprocessor"]
# tiny variant for --small: same classes and code path, small enough for a CPU
SMALL_CONFIG = {
    **QWEN2_VL_7B_CONFIG,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "vision_config": {
        **QWEN2_VL_7B_CONFIG["vision_config"],
        "depth": 1,
        "embed_dim": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "hidden_size": 64,
    },
}
# common photo / screenshot sizes (width, height): 1024, 999, 1196, 609 and 391 tokens through the processor
IMAGE_SIZES = [(896, 896), (1024, 768), (1280, 720), (800, 600), (640, 480)]
SMALL_IMAGE_SIZES = [(112, 112), (140, 84), (84, 56)]
LENGTHS = [36_864, 73_728, 147_456, 301_056]
SMALL_LENGTHS = [400, 900]
QUESTION_MIN = 32  # text tokens at least after the last image


# ----------------------------------------------------------------------------------------------- model


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class ChunkedMLP(torch.nn.Module):
    """Runs a row-wise MLP on ``chunk`` tokens at a time (dim -2), writing into one output: same result,
    peak activation memory of one chunk instead of the whole prompt. The MLP may change the last dim (the
    vision merger's does)."""

    def __init__(self, mlp: torch.nn.Module, chunk: int) -> None:
        super().__init__()
        self.mlp, self.chunk = mlp, chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        if n <= self.chunk:
            return self.mlp(x)
        first = self.mlp(x[..., : self.chunk, :])
        out = first.new_empty(*x.shape[:-1], first.shape[-1])
        out[..., : self.chunk, :] = first
        del first
        for i in range(self.chunk, n, self.chunk):
            out[..., i : i + self.chunk, :] = self.mlp(x[..., i : i + self.chunk, :])
        return out


def chunk_mlps(model: torch.nn.Module, chunk: int) -> int:
    """Wrap every ``mlp`` child (decoder layers and vision blocks) in :class:`ChunkedMLP`; returns how many."""
    parents = [
        m
        for m in model.modules()
        if isinstance(getattr(m, "mlp", None), torch.nn.Module) and not isinstance(m.mlp, ChunkedMLP)
    ]
    for parent in parents:
        parent.mlp = ChunkedMLP(parent.mlp, chunk)
    return len(parents)


def build_model(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int):
    """Qwen2-VL with random weights created directly on ``device`` in ``dtype`` (transformers' own init)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    # sub-models built with _from_config take the config's dtype, the others the default dtype: set both
    cfg = Qwen2VLConfig.from_dict({**config, "torch_dtype": str(dtype).removeprefix("torch.")})
    with _default_dtype(dtype), torch.device(device):
        model = Qwen2VLForConditionalGeneration(cfg)
    if {p.dtype for p in model.parameters()} != {dtype}:
        model = model.to(dtype)
    return model.eval()


def random_head_map(info, dense_share: float, seed: int, sinks):
    """Exactly round(dense_share * heads) dense heads over the whole model, at random (layer, head); the
    others get a random sparse category. Labelled as random: for timing only."""
    from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES
    from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo, HeadMap

    rng = np.random.default_rng(seed)
    total = info.num_layers * info.num_heads
    dense = set(rng.choice(total, size=round(dense_share * total), replace=False).tolist())
    sparse = rng.integers(0, len(SPARSE_CATEGORIES), total)
    flat = ["dense" if i in dense else SPARSE_CATEGORIES[sparse[i]].label for i in range(total)]
    return HeadMap(
        model_id=info.model_id,
        num_layers=info.num_layers,
        num_heads=info.num_heads,
        categories=[flat[layer * info.num_heads : (layer + 1) * info.num_heads] for layer in range(info.num_layers)],
        params=CharacterizationParams(tau=1.0, delta=1.0, gamma=0.0),
        dataset=DatasetInfo(name=f"random head map for timing (seed {seed}, {dense_share:.0%} dense)", size=0),
        sink_policy=sinks,
        tool_version=tool_version(),
    )


# ---------------------------------------------------------------------------------------------- prompts


@dataclass
class ProcessedImage:
    size: tuple[int, int]
    pixel_values: torch.Tensor  # [patches, C * T * P * P] in the model dtype
    grid: list[int]  # (t, h, w)
    tokens: int
    process_ms: float


def process_images(sizes: list[tuple[int, int]], dtype: torch.dtype, seed: int) -> list[ProcessedImage]:
    """Each size once through the real Qwen2-VL image processor (random pixels, fixed seed)."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(**QWEN2_VL_PREPROCESSOR)
    rng = np.random.default_rng(seed)
    out = []
    for w, h in sizes:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        t0 = time.perf_counter()
        enc = processor(images=[image], return_tensors="pt")
        ms = 1e3 * (time.perf_counter() - t0)
        grid = [int(x) for x in enc["image_grid_thw"][0]]
        out.append(ProcessedImage((w, h), enc["pixel_values"].to(dtype), grid, grid[0] * grid[1] * grid[2] // 4, ms))
    return out


def build_prompt(
    length: int, images: list[ProcessedImage], config: dict[str, Any], seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Chat-structured ids of exactly ``length`` tokens: a system turn, then a user turn of labelled images
    (sizes cycling) and a question, then the assistant prompt. Text ids are random."""
    rng = np.random.default_rng(seed)
    im_start, im_end = 151644, 151645
    start, end, pad = config["vision_start_token_id"], config["vision_end_token_id"], config["image_token_id"]
    text_vocab = config["bos_token_id"] if config["vocab_size"] > config["bos_token_id"] else 100

    def text(n: int) -> list[int]:
        return rng.integers(0, text_vocab, n).tolist()

    head = [im_start] + text(20) + [im_end] + [im_start] + text(2)  # system turn, "user\n"
    tail_fixed = 2 + 3  # <|im_end|> "\n" <|im_start|> "assistant\n"
    ids, chosen = list(head), []
    while True:
        img = images[len(chosen) % len(images)]
        piece = text(5) + [start] + [pad] * img.tokens + [end] + text(1)  # "Image k: " <image> "\n"
        if len(ids) + len(piece) + QUESTION_MIN + tail_fixed > length:
            break
        ids += piece
        chosen.append(img)
    ids += text(length - len(ids) - tail_fixed) + [im_end] + text(1) + [im_start] + text(2)
    assert len(ids) == length and chosen, (len(ids), length)
    input_ids = torch.tensor([ids])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == pad).to(torch.int32),
        "pixel_values": torch.cat([img.pixel_values for img in chosen]),
        "image_grid_thw": torch.tensor([img.grid for img in chosen]),
    }
    image_tokens = sum(img.tokens + 2 for img in chosen)
    return inputs, {
        "tokens": length,
        "images": len(chosen),
        "image_tokens": image_tokens,
        "text_tokens": length - image_tokens,
        "vision_patches": int(inputs["pixel_values"].shape[0]),
    }


# ---------------------------------------------------------------------------------------------- timing


def pick_sdpa_backend(info, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Time each SDPA backend (GQA via enable_gqa or expanded K/V) on one causal attention call of the
    model's shape and return the fastest that works, with every candidate's time."""
    from bsight.kernels.dispatch import causal_sdpa

    q = torch.randn(info.num_heads, length, info.head_dim, device=device, dtype=dtype)
    k = torch.randn(info.num_kv_heads, length, info.head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    candidates = (
        [(b, e) for b in ("cudnn", "flash", "efficient") for e in (False, True)]
        if device.type == "cuda"
        else [("auto", False)]
    )
    times: dict[str, float | str] = {}
    for backend, expand in candidates:
        key = f"{backend}{'+expand_kv' if expand else '+enable_gqa'}"
        try:
            causal_sdpa(q, k, v, info.head_dim**-0.5, backend, expand)  # warm-up (cuDNN builds its graph)
            sync(device)
            t0 = time.perf_counter()
            causal_sdpa(q, k, v, info.head_dim**-0.5, backend, expand)
            sync(device)
            times[key] = 1e3 * (time.perf_counter() - t0)
        except RuntimeError as e:
            times[key] = f"unavailable: {str(e).splitlines()[0][:120]}"
    ok = {k: t for k, t in times.items() if isinstance(t, float)}
    best = min(ok, key=ok.get)
    backend, _, gqa = best.partition("+")
    return {
        "backend": backend,
        "expand_kv": gqa == "expand_kv",
        "candidates_ms": times,
        "shape": [info.num_heads, info.num_kv_heads, length, info.head_dim],
    }


def timed_prefill(adapter, prepared, method, device: torch.device) -> dict[str, Any]:
    """One TTFT measurement: inputs on the device -> first token id."""
    from bsight.harness.attention_bridge import AttentionTimer

    timer = AttentionTimer()
    method.overhead.take()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    out = adapter.forward(prepared, method, logits_to_keep=1, use_cache=True, timer=timer)
    token = int(out.logits[0, -1].argmax())
    sync(device)
    ttft = 1e3 * (time.perf_counter() - t0)
    attention = timer.total_ms()
    del out
    result = {
        "ttft_ms": ttft,
        "attention_ms": attention,
        "attention_share": attention / ttft,
        "attention_calls": timer.calls,
        "overhead_ms": method.overhead.take(),
        "first_token": token,
    }
    if device.type == "cuda":
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return result


def warm_attention(method, info, prepared, device: torch.device, dtype: torch.dtype) -> None:
    """One attention call per layer plan at the prompt's shape (kernel compilation, cuDNN graph building)
    so that the timed prefill measures steady-state work."""
    from bsight.harness.attention_bridge import PrefillContext
    from bsight.kernels.dispatch import LayerCall

    meta = PrefillContext(method, prepared.layouts).meta(0, device)
    S = prepared.layouts[0].num_valid
    q = torch.randn(info.num_heads, S, info.head_dim, device=device, dtype=dtype)
    k = torch.randn(info.num_kv_heads, S, info.head_dim, device=device, dtype=dtype)
    for layer in range(min(info.num_layers, 2)):
        method.prefill(q, k, k, meta, LayerCall(layer_idx=layer, scale=info.head_dim**-0.5))
    sync(device)
    del q, k


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("ttft_ms", "attention_ms", "attention_share", "peak_allocated_gib", "peak_reserved_gib")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys if all(k in r for r in runs)}
    out["runs"] = runs
    return out


# -------------------------------------------------------------------------------------------- provenance


def provenance(command: Sequence[str] | None, device: torch.device, git_commit: str | None = None) -> dict[str, Any]:
    """Code, environment and command of this measurement (:func:`~bsight.harness.provenance.benchmark_provenance`;
    the command as one string, ``created``, the GPU's memory and compute capability); ``git_commit`` for copies
    without ``.git``."""
    prov = benchmark_provenance("ttft", command, device)
    prov["command"] = " ".join(prov["command"])
    prov["created"] = prov["date"]
    commit = prov["git_commit"]
    prov["git_commit"] = commit or git_commit or "unknown"
    if git_commit and commit and git_commit != commit:
        prov["git_commit_given"] = git_commit
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        prov.update(
            gpu_memory_gib=round(props.total_memory / 2**30, 1), compute_capability=f"{props.major}.{props.minor}"
        )
    return prov


# -------------------------------------------------------------------------------------------------- main


def kernel_status(device: torch.device) -> str:
    try:
        from bsight.kernels import blindsight_attention as kernels

        return "triton" if device.type == "cuda" and hasattr(kernels, "blindsight_attention") else "reference"
    except ImportError:
        return "reference"


class TTFTBenchSpec(BaseModel):
    """What one TTFT measurement runs (the CLI's flags, ``--out`` aside)."""

    model_config = ConfigDict(extra="forbid")
    small: bool = Field(False, description="tiny Qwen2-VL config on the CPU: checks the whole path in seconds")
    lengths: list[int] | None = Field(None, min_length=1, description="prompt lengths in tokens; default the script's")
    dense_share: float = Field(0.3, ge=0, le=1, description="share of dense heads in the random head map")
    seed: int = 0
    repeats: int = Field(1, ge=1, description="timed prefills per length and method (median reported)")
    mlp_chunk: int = Field(32_768, ge=1, description="tokens per MLP chunk")
    budget_s: float = Field(420.0, description="skip runs that would start after this many seconds")
    warmup_tokens: int = Field(4096, ge=1, description="length of the untimed warm-up prefill")
    device: str | None = Field(None, description="default: cuda if available (cpu when small)")
    git_commit: str | None = Field(None, description="commit to record when the checkout has no .git")
    allow_reference: bool = Field(
        False, description="time blindsight on the float32 reference if the kernel is missing"
    )


def run(
    spec: TTFTBenchSpec,
    *,
    log: Callable[[str], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure TTFT per length of ``spec``; returns the document ``{benchmark, model, provenance, setup, head_map,
    images, kernel, sdpa_backend, lengths, fallback_warnings}``.

    ``log``: progress lines (default: the ``bsight.ttft`` logger at INFO). ``on_update``: called with the document
    after every step (the CLI rewrites its file, so partial results survive). ``command``: the CLI's command line
    for the provenance (None: called as a library).
    """
    from bsight.kernels import dispatch
    from bsight.kernels.sparsity.layout import SinkPolicy
    from bsight.plugins.methods.blindsight import Blindsight
    from bsight.plugins.methods.dense import Dense
    from bsight.plugins.models.qwen2_vl import Qwen2VL

    log = log or logger.info
    started = time.perf_counter()
    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() and not spec.small else "cpu"))
    dtype = torch.float32 if spec.small else torch.bfloat16
    config = SMALL_CONFIG if spec.small else QWEN2_VL_7B_CONFIG
    lengths = spec.lengths or (SMALL_LENGTHS if spec.small else LENGTHS)
    weights = (
        "random (tiny config for --small)"
        if spec.small
        else "random bf16 (Qwen2-VL-7B-Instruct architecture from its config.json; NOT trained)"
    )
    result: dict[str, Any] = {
        "benchmark": "ttft",
        "model": {
            "id": MODEL_ID,
            "class": "transformers.Qwen2VLForConditionalGeneration",
            "weights": weights,
            "config": config,
        },
        "provenance": provenance(command, device, spec.git_commit),
        "setup": {
            "dtype": str(dtype).replace("torch.", ""),
            "mlp_chunk_tokens": spec.mlp_chunk,
            "kv_cache": True,
            "repeats": spec.repeats,
            "text_tokens": "random ids in the chat-template structure (no tokenizer files available)",
            "ttft": "inputs on the device -> first token id: vision tower, M-RoPE indices, layout metadata, prefill, "
            "last-position logits",
        },
        "lengths": [],
    }

    def save() -> None:
        if on_update is not None:
            on_update(result)

    t0 = time.perf_counter()
    model = build_model(config, device, dtype, spec.seed)
    result["setup"]["model_build_s"] = time.perf_counter() - t0
    result["setup"]["mlps_chunked"] = chunk_mlps(model, spec.mlp_chunk)
    adapter = Qwen2VL({"checkpoint": MODEL_ID, "device": str(device)})
    adapter.attach(model, None, model_id=MODEL_ID, weights="random")
    info = adapter.info
    sinks: SinkPolicy = adapter.layout_spec().sinks
    head_map = random_head_map(info, spec.dense_share, spec.seed, sinks)
    digest = hashlib.sha256(json.dumps(head_map.categories).encode()).hexdigest()
    result["head_map"] = {
        "kind": "random, for timing only",
        "seed": spec.seed,
        "dense_share": spec.dense_share,
        "shares": head_map.shares(),
        "categories_sha256": digest,
        "sink_policy": sinks.model_dump(),
    }
    images = process_images(SMALL_IMAGE_SIZES if spec.small else IMAGE_SIZES, dtype, spec.seed)
    result["images"] = [
        {"size": list(i.size), "grid_thw": i.grid, "tokens": i.tokens, "process_ms": i.process_ms} for i in images
    ]
    result["setup"]["image_processor"] = {"class": "transformers.Qwen2VLImageProcessor", **QWEN2_VL_PREPROCESSOR}
    result["kernel"] = kernel_status(device)
    save()

    backend = pick_sdpa_backend(info, lengths[0], device, dtype)
    result["sdpa_backend"] = backend
    strict = device.type == "cuda" and not spec.allow_reference  # never time the float32 reference by accident
    methods = {
        "dense": Dense({"backend": backend["backend"], "expand_kv": backend["expand_kv"]}),
        "blindsight": Blindsight({"head_map": head_map, "fallback": not strict}),
    }
    skipped: dict[str, str] = {}
    if strict and result["kernel"] != "triton":
        skipped["blindsight"] = (
            "bsight.kernels.blindsight_attention is unavailable; the float32 reference is far too slow at these lengths"
        )
        methods.pop("blindsight")
    # one untimed prefill per method on a short prompt: every layer's kernels compiled, libraries initialized
    t0 = time.perf_counter()
    inputs, _ = build_prompt(min(lengths[0], spec.warmup_tokens), images, config, spec.seed)
    warm = adapter.prepared(inputs)
    for method in methods.values():
        adapter.forward(warm, method, logits_to_keep=1, use_cache=True)
    del warm, inputs
    result["setup"]["warmup_s"] = time.perf_counter() - t0

    for length in lengths:
        entry: dict[str, Any] = {"target_tokens": length}
        result["lengths"].append(entry)
        inputs, stats = build_prompt(length, images, config, spec.seed + length)
        entry.update(stats)
        t0 = time.perf_counter()
        prepared = adapter.prepared(inputs)
        entry["prepare_ms"] = 1e3 * (time.perf_counter() - t0)  # ids -> layouts, host -> device
        del inputs
        for name in ("dense", "blindsight"):
            if name not in methods:
                entry[name] = {"skipped": skipped[name]}
                continue
            if time.perf_counter() - started > spec.budget_s:
                entry[name] = {"skipped": f"time budget of {spec.budget_s:.0f} s spent"}
                continue
            method = methods[name]
            try:
                warm_attention(method, info, prepared, device, dtype)
                entry[name] = summarize([timed_prefill(adapter, prepared, method, device) for _ in range(spec.repeats)])
            except torch.cuda.OutOfMemoryError as e:
                entry[name] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            except (RuntimeError, NotImplementedError, ValueError) as e:  # record and go on with the other runs
                entry[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                log(f"{length} tokens, {name} failed:\n{traceback.format_exc()}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log(f"{length} tokens, {name}: { ({k: v for k, v in entry[name].items() if k != 'runs'}) }")
            save()
        d, b = entry["dense"], entry["blindsight"]
        if "ttft_ms" in d and "ttft_ms" in b:
            entry["speedup"] = {"ttft": d["ttft_ms"] / b["ttft_ms"], "attention": d["attention_ms"] / b["attention_ms"]}
        del prepared
        save()
    result["fallback_warnings"] = dispatch.fallback_warnings()
    result["setup"]["total_s"] = time.perf_counter() - started
    save()
    return result


def table(result: dict[str, Any]) -> str:
    rows = [
        "| tokens | images | method | TTFT ms | attention ms | attention share | peak GiB | TTFT speedup "
        "| attention speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["lengths"]:
        for name in ("dense", "blindsight"):
            r = e.get(name, {})
            if "ttft_ms" not in r:
                rows.append(
                    f"| {e['tokens']:,} | {e['images']} | {name} "
                    f"| {r.get('skipped') or r.get('error') or '-'} | | | | | |"
                )
                continue
            sp = e.get("speedup", {}) if name == "blindsight" else {}
            peak = f"{r['peak_allocated_gib']:.1f}" if "peak_allocated_gib" in r else "-"
            speed = [f"{sp[k]:.2f}x" if k in sp else "" for k in ("ttft", "attention")]
            rows.append(
                f"| {e['tokens']:,} | {e['images']} | {name} | {r['ttft_ms']:.0f} | {r['attention_ms']:.0f} "
                f"| {r['attention_share']:.0%} | "
                f"{peak} | {speed[0]} | {speed[1]} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """The CLI: parse ``argv`` into a :class:`TTFTBenchSpec`, :func:`run` it (the JSON rewritten after every
    step) and print the table."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bsight.harness.benchmarks.ttft", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", required=True, help="JSON file to write (rewritten after every run, so partial results survive)"
    )
    p.add_argument(
        "--small", action="store_true", help="tiny Qwen2-VL config on the CPU: checks the whole path in seconds"
    )
    p.add_argument(
        "--lengths", type=lambda s: [int(x) for x in s.split(",")], help="prompt lengths in tokens, comma-separated"
    )
    p.add_argument("--dense-share", type=float, default=0.3, help="share of dense heads in the random head map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="timed prefills per length and method (median reported)")
    p.add_argument("--mlp-chunk", type=int, default=32_768, help="tokens per MLP chunk")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip runs that would start after this many seconds")
    p.add_argument("--warmup-tokens", type=int, default=4096, help="length of the untimed warm-up prefill")
    p.add_argument("--device", help="default: cuda if available (cpu with --small)")
    p.add_argument("--git-commit", help="commit to record when the checkout has no .git (a copied working tree)")
    p.add_argument(
        "--allow-reference",
        action="store_true",
        help="time blindsight on the float32 reference if the kernel is missing",
    )
    args = p.parse_args(argv)
    if not 0 <= args.dense_share <= 1:
        p.error("--dense-share must be in [0, 1]")
    spec = TTFTBenchSpec(**{k: v for k, v in vars(args).items() if k != "out"})
    out = Path(args.out)

    def save(result: dict[str, Any]) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run(spec, log=logger.info, on_update=save, command=cli_command("ttft", argv, args.out))
    print(table(result))
    print(
        f"\nweights: {result['model']['weights']}; head map: {result['head_map']['kind']}; kernel: {result['kernel']}; "
        f"SDPA backend: {result['sdpa_backend']['backend']} (expand_kv={result['sdpa_backend']['expand_kv']}); "
        f"written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
