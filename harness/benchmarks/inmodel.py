"""Every attention method inside full-size VLMs on one GPU, timed fairly: TTFT, decode time per token, attention
share, one-time and per-prompt overheads, FLOPs and agreement with dense (issue 16).

    python -m bsight.harness.benchmarks.inmodel gpu.yaml --out reports/published/inmodel_h100.json

What is real and what is not (also written into the JSON and the report):

* models: transformers' own classes built from the published config.json of Qwen2-VL-7B, Qwen2.5-VL-7B and
  Gemma-3-4B (:mod:`bsight.harness.random_models`) with RANDOM bf16 weights made on the GPU. Timings do not
  depend on weight values. Agreement and KL against dense are fidelity checks of the computation on a random
  model, NOT accuracy.
* prompts: task ``many_images`` (the packaged photographs at realistic sizes), as many images as fit the
  target length (16K-147K tokens), through each model's real image preprocessing (Qwen2-VL's processor;
  Gemma 3's 896x896 resize and normalization). No tokenizer files exist here: text tokens are the UTF-8 bytes
  of the task's text (offset ids) inside each model's chat structure; image and boundary tokens are exact.
* methods: ``dense`` (the dense policy of :mod:`bsight.kernels.dense_policy`), ``blindsight`` with a SYNTHETIC head
  map (each category's share as configured, at random layer/head positions; not characterized), ``flex``
  (the same head map through FlexAttention), ``streaming`` and ``mminference`` (their defaults).
* timing protocol (:mod:`bsight.harness.benchmarks.protocol`): per prompt, methods in rotated order; each
  method's first call on the prompt is its cold call (one-time costs: compilation, cuDNN plans, mask
  building), then ``repeats`` steady calls whose median is reported. TTFT: inputs on the GPU -> last-position
  logits (vision tower, M-RoPE indices, layout metadata, prefill with KV cache), CUDA-synchronized. Attention
  time: CUDA events around every prefill attention call. Decode: ``decode_tokens`` greedy steps after the
  prefill (dense attention over the KV cache for every method): the median step after the first (steady; the
  first step, which meets the new KV length first, and the mean are kept beside it).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bsight.harness.benchmarks.protocol import Interleaved, Timing

log = logging.getLogger("bsight.inmodel")

DEFAULTS: dict[str, Any] = {
    "archs": ["qwen2-vl-7b"],
    "lengths": [16_384, 36_864, 73_728, 147_456],
    "samples_per_length": 1,
    "repeats": 2,
    "decode_tokens": 8,
    "methods": ["dense", "blindsight", "flex", "streaming", "mminference"],
    # synthetic head map: shares of the four categories over all (layer, head) pairs
    "shares": {"dense": 0.30, "sink": 0.20, "intra_image": 0.25, "intra_image_sink": 0.25},
    "decode_backends": ["flash", "efficient", "cudnn"],
    "decode_backends_max_tokens": 40_000,  # time each SDPA backend's decode (extra generations) up to this length
    "mlp_chunk": 32_768,
    "num_layers": None,  # None: the published depth
    "seed": 0,
    "budget_s": 3600.0,
    "memory_margin": 0.92,
    "image_sizes": None,  # None: the task's realistic sizes
}
TEXT_OFFSET = 1000  # text byte b -> token id TEXT_OFFSET + b (ordinary vocabulary ids in every model here)
BASELINE = "dense"


# ---------------------------------------------------------------------------------------------- prompts


class PromptBuilder:
    """Model inputs for a task sample, without a tokenizer: exact image spans through the model's own image
    preprocessing, text as offset byte ids inside the model's chat structure."""

    def __init__(self, arch: str, config: dict[str, Any], preprocessor: dict[str, Any], dtype: torch.dtype) -> None:
        self.family = "gemma3" if config["model_type"] == "gemma3" else "qwen"
        self.config, self.pre, self.dtype = config, preprocessor, dtype
        self._images: dict[str, tuple[torch.Tensor, list[int] | None, int]] = {}
        if self.family == "qwen":
            from transformers import Qwen2VLImageProcessor

            self.processor = Qwen2VLImageProcessor(**preprocessor)

    def context_tokens(self) -> int | None:
        """The longest prompt the model's positions cover: Gemma 3 gives every token one position, so its
        ``max_position_embeddings`` bounds the prompt; Qwen's M-RoPE advances an image's positions by its side,
        not its area, so a many-image prompt of far more tokens stays inside the context (None: no bound here)."""
        if self.family != "gemma3":
            return None
        return int((self.config.get("text_config") or self.config)["max_position_embeddings"])

    def _text(self, text: str) -> list[int]:
        return [TEXT_OFFSET + b for b in text.encode()]

    def image(self, part) -> tuple[torch.Tensor, list[int] | None, int]:
        """(pixels, grid or None, tokens) of one image, computed once per distinct image."""
        if part.ref not in self._images:
            im = part.image.convert("RGB")
            if self.family == "qwen":
                enc = self.processor(images=[im], return_tensors="pt")
                grid = [int(x) for x in enc["image_grid_thw"][0]]
                tokens = grid[0] * grid[1] * grid[2] // self.pre["merge_size"] ** 2
                self._images[part.ref] = (enc["pixel_values"].to(self.dtype), grid, tokens)
            else:
                size = self.pre["image_size"]
                x = torch.from_numpy(np.asarray(im.resize((size, size)), dtype=np.float32)).permute(2, 0, 1)
                x = (x * self.pre["rescale_factor"] - 0.5) / 0.5
                self._images[part.ref] = (x[None].to(self.dtype), None, int(self.config["mm_tokens_per_image"]))
        return self._images[part.ref]

    def encode(self, sample) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from bsight.harness.interfaces import ImagePart

        c = self.config
        if self.family == "qwen":
            im_start, im_end = 151644, 151645
            start, end, pad = c["vision_start_token_id"], c["vision_end_token_id"], c["image_token_id"]
            ids = [im_start] + self._text("user\n")
            close = [im_end] + self._text("\n") + [im_start] + self._text("assistant\n")
        else:
            start, end, pad = c["boi_token_index"], c["eoi_token_index"], c["image_token_index"]
            ids = [2, 106] + self._text("user\n")  # <bos> <start_of_turn>
            close = [107] + self._text("\n") + [106] + self._text("model\n")
        pixels, grids, image_tokens = [], [], 0
        for part in sample.parts:
            if isinstance(part, ImagePart):
                px, grid, tokens = self.image(part)
                ids += [start] + [pad] * tokens + [end]
                pixels.append(px)
                if grid is not None:
                    grids.append(grid)
                image_tokens += tokens + 2
            else:
                ids += self._text(part.text)
        ids += close
        input_ids = torch.tensor([ids])
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.cat(pixels),
        }
        if self.family == "qwen":
            inputs["image_grid_thw"] = torch.tensor(grids)
            inputs["mm_token_type_ids"] = (input_ids == pad).to(torch.int32)
        else:
            inputs["token_type_ids"] = (input_ids == pad).long()
        stats = {
            "tokens": len(ids),
            "images": len(pixels),
            "image_tokens": image_tokens,
            "text_tokens": len(ids) - image_tokens,
        }
        return inputs, stats


def fit_images(builder: PromptBuilder, task, target: int, index: int) -> tuple[Any, dict, dict]:
    """The sample with the most images whose prompt has at most ``target`` tokens."""
    lo, hi = 1, max(2, target // 8)
    best = None
    while lo <= hi:
        n = (lo + hi) // 2
        sample = task.sample(n, index)
        inputs, stats = builder.encode(sample)
        if stats["tokens"] <= target:
            best, lo = (sample, inputs, stats), n + 1
        else:
            hi = n - 1
    if best is None:
        raise ValueError(f"no prompt of the task fits {target} tokens")
    return best


# ---------------------------------------------------------------------------------------------- methods


def synthetic_head_map(info, shares: dict[str, float], seed: int, sinks):
    """Exactly ``round(share * heads)`` heads of each category over the whole model, at random (layer, head)
    positions (fixed seed). Labelled SYNTHETIC: for timing only, not characterized on any prompt."""
    from bsight.kernels.sparsity.artifacts import tool_version
    from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo, HeadMap

    total = info.num_layers * info.num_heads
    names = list(shares)
    counts = [round(shares[n] * total) for n in names]
    counts[0] += total - sum(counts)
    flat = [n for n, c in zip(names, counts) for _ in range(c)]
    np.random.default_rng(seed).shuffle(flat)
    label = ", ".join(f"{n} {shares[n]:.0%}" for n in names)
    return HeadMap(
        model_id=info.model_id,
        num_layers=info.num_layers,
        num_heads=info.num_heads,
        categories=[flat[layer * info.num_heads : (layer + 1) * info.num_heads] for layer in range(info.num_layers)],
        params=CharacterizationParams(tau=1.0, delta=1.0, gamma=0.0),
        dataset=DatasetInfo(name=f"SYNTHETIC head map for timing (seed {seed}; {label})", size=0),
        sink_policy=sinks,
        tool_version=tool_version(),
    )


def make_methods(names: list[str], head_map) -> dict[str, Any]:
    from bsight.plugins.methods.blindsight import Blindsight
    from bsight.plugins.methods.dense import Dense
    from bsight.plugins.methods.flex import Flex
    from bsight.plugins.methods.mminference import MMInference
    from bsight.plugins.methods.streaming import Streaming

    make = {
        "dense": lambda: Dense({}),
        "blindsight": lambda: Blindsight({"head_map": head_map, "fallback": False}),
        "flex": lambda: Flex({"head_map": head_map}),
        "streaming": lambda: Streaming({}),
        "mminference": lambda: MMInference({}),
    }
    return {n: make[n]() for n in names}


def attention_flops(method, name: str, info, meta, kept: list | None) -> float | None:
    """Prefill attention FLOPs of the whole model on this prompt under ``method``."""
    from bsight.kernels.sparsity.flops import model_flops

    kinds = info.kinds() if hasattr(info, "kinds") else ()
    if kept:
        return float(sum(4 * info.head_dim * int(lp.pairs.sum()) for lp in kept))
    cats = [method.head_categories(layer) for layer in range(info.num_layers)]
    if any(c is None for c in cats):
        return None
    out = model_flops(meta, torch.stack([c.cpu() for c in cats]).numpy(), info.sliding_windows, info.head_dim, kinds)
    return out["sparse_flops"]


# ---------------------------------------------------------------------------------------------- memory


def memory_estimate_gib(info, config: dict[str, Any], tokens: int, vision_patches: int) -> dict[str, float]:
    """A rough upper estimate of what one prefill adds to the weights: KV cache, hidden states (a few copies,
    MLPs chunked), q/k/v/out of one layer, the vision tower's activations."""
    text = config.get("text_config") or config
    hidden = text["hidden_size"]
    kv = 2 * info.num_layers * info.num_kv_heads * info.head_dim * 2 * tokens
    act = 8 * tokens * hidden * 2 + 4 * tokens * info.num_heads * info.head_dim * 2
    vis = 10 * vision_patches * 1280 * 2
    return {"kv_cache_gib": kv / 2**30, "activations_gib": (act + vis) / 2**30, "total_gib": (kv + act + vis) / 2**30}


# ---------------------------------------------------------------------------------------------- measuring


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Bench:
    """One model: its adapter, methods, prompts; measures each prompt with the interleaved protocol."""

    def __init__(self, arch: str, spec: dict[str, Any], device: torch.device) -> None:
        from bsight.harness import random_models as rm
        from bsight.harness.benchmarks.ttft import chunk_mlps
        from bsight.plugins.models.gemma3 import Gemma3
        from bsight.plugins.models.qwen2_vl import Qwen2VL, Qwen25VL
        from bsight.plugins.tasks.many_images import ManyImages

        self.arch, self.spec, self.device = arch, spec, device
        s = rm.spec(arch)
        self.config = rm.config_dict(arch, spec["num_layers"], spec.get("tiny", False))
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        t0 = time.perf_counter()
        model = rm.build(arch, device, dtype, spec["seed"], spec["num_layers"], spec.get("tiny", False))
        self.build_s = time.perf_counter() - t0
        chunk_mlps(model, spec["mlp_chunk"])
        adapters = {"qwen2_vl": Qwen2VL, "qwen2_5_vl": Qwen25VL, "gemma3": Gemma3}
        self.adapter = adapters[s["adapter"]]({"checkpoint": s["hub_id"], "device": str(device)})
        self.adapter.attach(model, None, model_id=s["hub_id"], weights="random")
        self.model = model
        # a fixed number of new tokens per generation (random weights may emit EOS at once)
        model.generation_config.min_new_tokens = spec["decode_tokens"] + 1
        self.info = self.adapter.info
        self.head_map = synthetic_head_map(self.info, spec["shares"], spec["seed"], self.adapter.layout_spec().sinks)
        self.methods = make_methods(spec["methods"], self.head_map)
        for m in self.methods.values():
            self.adapter.bind(m)
        self.builder = PromptBuilder(arch, self.config, s["preprocessor"], dtype)
        sizes = {"sizes": spec["image_sizes"]} if spec.get("image_sizes") else {}
        self.task = ManyImages({"seed": spec["seed"], **sizes})
        self.logits: dict[str, torch.Tensor] = {}
        self.kept: dict[str, list] = {}

    # one timed call: a prefill with KV cache and last-position logits
    def call(self, name: str, prepared) -> dict[str, Any]:
        from bsight.harness.attention_bridge import AttentionTimer

        method = self.methods[name]
        if hasattr(method, "take_kept"):
            method.take_kept()
        method.overhead.take()
        timer = AttentionTimer()
        out = self.adapter.forward(prepared, method, logits_to_keep=1, use_cache=True, timer=timer)
        logits = out.logits[0, -1].float()
        del out
        _sync()
        self.logits[name] = logits
        if hasattr(method, "take_kept"):
            self.kept[name] = method.take_kept()
        return {"attention_ms": timer.total_ms(), "attention_calls": timer.calls, "overhead_ms": method.overhead.take()}

    def decode(self, name: str, prepared) -> dict[str, Any]:
        run = self.adapter._greedy(prepared, self.methods[name], self.spec["decode_tokens"] + 1)
        steps = [1e3 * s for s in run.step_s]
        # steady decode: the median step after the first (the first meets the new KV length first)
        warm = steps[1:] or steps
        return {
            "ids": run.ids.tolist(),
            "prefill_ms": 1e3 * run.prefill_s,
            "decode_ms_per_token": statistics.median(warm) if warm else None,
            "decode_first_step_ms": steps[0] if steps else None,
            "decode_mean_ms_per_token": 1e3 * (run.total_s - run.prefill_s) / max(len(steps), 1),
            "decode_steps": len(steps),
        }

    def warm_up(self) -> dict[str, float]:
        """One short prompt through every method (process-level one-time costs: library loads, kernel builds)."""
        sample, inputs, _ = fit_images(self.builder, self.task, min(3_000, *self.spec["lengths"]), 99)
        prepared = self.adapter.prepared(inputs)
        out = {}
        for name in self.methods:
            t0 = time.perf_counter()
            try:
                self.call(name, prepared)
                self.decode(name, prepared)  # generation's own first-use costs, kept out of the decode timings
                out[name] = 1e3 * (time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - recorded, the method's units say why later
                out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return out

    def measure_prompt(self, target: int, index: int) -> dict[str, Any]:
        sample, inputs, stats = fit_images(self.builder, self.task, target, index)
        entry: dict[str, Any] = {"target_tokens": target, "sample": sample.id, **stats}
        est = memory_estimate_gib(self.info, self.config, stats["tokens"], int(inputs["pixel_values"].shape[0]))
        entry["memory_estimate"] = est
        context = self.builder.context_tokens()
        if context is not None and stats["tokens"] > context:
            entry["error"] = (
                f"prompt of {stats['tokens']:,} tokens is beyond the model's context of {context:,} positions: "
                "not measured"
            )
            return entry
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0] / 2**30
            entry["memory_free_gib"] = free
            if est["total_gib"] > self.spec["memory_margin"] * free:
                entry["error"] = (
                    f"prompt of {stats['tokens']:,} tokens needs about {est['total_gib']:.1f} GiB beyond the weights "
                    f"(KV cache {est['kv_cache_gib']:.1f} + activations {est['activations_gib']:.1f}); "
                    f"{free:.1f} GiB free"
                )
                return entry
        prepared = self.adapter.prepared(inputs)
        from bsight.harness.attention_bridge import PrefillContext

        metas = {n: PrefillContext(m, prepared.layouts).meta(0, self.device) for n, m in self.methods.items()}
        names = list(self.methods)
        failed: dict[str, str] = {}

        def call(name: str, p) -> dict[str, Any]:
            if name in failed:
                return {"failed": failed[name]}
            try:
                return self.call(name, p)
            except torch.cuda.OutOfMemoryError as e:
                failed[name] = (
                    f"out of memory at {stats['tokens']:,} tokens (estimate {est['total_gib']:.1f} GiB beyond the "
                    f"weights): {str(e).splitlines()[0][:160]}"
                )
            except Exception as e:  # noqa: BLE001 - one method failing must not stop the others
                failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                log.exception("%s at %d tokens", name, stats["tokens"])
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return {"failed": failed[name]}

        timings: list[Timing] = Interleaved(call, repeats=self.spec["repeats"]).run(names, [prepared], start=index)
        entry["methods"] = {}
        dense_logits = self.logits.get(BASELINE) if BASELINE not in failed else None
        for t in timings:
            name = t.method
            if name in failed:
                entry["methods"][name] = {"error": failed[name]}
                continue
            steady_over = [sum(i["overhead_ms"].values()) for i in t.steady_info]
            r: dict[str, Any] = {
                **t.as_dict(),
                "ttft_ms": t.median_ms,
                "attention_ms": statistics.median(i["attention_ms"] for i in t.steady_info),
                "overhead_ms": statistics.median(steady_over),
                "overhead_items_ms": t.steady_info[-1]["overhead_ms"],
                "cold_overhead_ms": t.cold_info.get("overhead_ms", {}),
            }
            r["attention_share"] = r["attention_ms"] / r["ttft_ms"]
            r["per_prompt_overhead_share"] = r["overhead_ms"] / r["ttft_ms"]
            try:
                r["attention_flops"] = attention_flops(
                    self.methods[name], name, self.info, metas[name], self.kept.get(name)
                )
            except Exception as e:  # noqa: BLE001
                r["attention_flops"] = None
                r["flops_error"] = f"{type(e).__name__}: {e}"
            if dense_logits is not None and name in self.logits:
                p = torch.log_softmax(dense_logits, -1)
                q = torch.log_softmax(self.logits[name], -1)
                r["kl_last_token"] = float((p.exp() * (p - q)).sum())
            entry["methods"][name] = r
        # decode (and the generated tokens for agreement), each method after its prefill timings
        for name in names:
            r = entry["methods"][name]
            if "error" in r:
                continue
            try:
                r.update(self.decode(name, prepared))
            except Exception as e:  # noqa: BLE001
                r["decode_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        base = entry["methods"].get(BASELINE, {})
        for name, r in entry["methods"].items():
            if "ids" in r and "ids" in base:
                r["agree_first_token"] = r["ids"][0] == base["ids"][0]
                r["agree_all_tokens"] = r["ids"] == base["ids"]
        # the dense decode step under each SDPA backend (same prompt, same KV cache length)
        if BASELINE in self.methods and stats["tokens"] <= self.spec["decode_backends_max_tokens"]:
            entry["decode_backends"] = self.decode_backends(prepared)
        del prepared
        self.logits.clear()
        self.kept.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return entry

    def decode_backends(self, prepared) -> dict[str, Any]:
        from bsight.kernels import dense_policy as dispatch  # the module whose DENSE_POLICY every call reads

        policy = dispatch.DENSE_POLICY
        out: dict[str, Any] = {}
        try:
            for backend in self.spec["decode_backends"]:
                dispatch.DENSE_POLICY = dispatch.DensePolicy(
                    policy.flash_below, policy.cudnn_bucket, decode_backend=backend
                )
                try:
                    d = self.decode(BASELINE, prepared)
                    out[backend] = {k: d[k] for k in ("decode_ms_per_token", "decode_steps")}
                except RuntimeError as e:
                    out[backend] = {"error": str(e).splitlines()[0][:200]}
        finally:
            dispatch.DENSE_POLICY = policy
        return out


def amdahl(dense: dict[str, Any], method: dict[str, Any]) -> dict[str, float] | None:
    """TTFT speedup vs the Amdahl bound from dense's attention share ``p`` and the method's attention speedup
    ``a``: ``1 / ((1 - p) + p / a)``; ``ratio`` = measured / bound (1: nothing but attention changed)."""
    if not all(k in r for r in (dense, method) for k in ("ttft_ms", "attention_ms")):
        return None
    p = dense["attention_ms"] / dense["ttft_ms"]
    a = dense["attention_ms"] / method["attention_ms"]
    bound = 1.0 / ((1.0 - p) + p / a)
    speedup = dense["ttft_ms"] / method["ttft_ms"]
    return {
        "ttft_speedup": speedup,
        "attention_speedup": a,
        "dense_attention_share": p,
        "amdahl_bound": bound,
        "ratio": speedup / bound,
    }


def summarize(entry: dict[str, Any]) -> None:
    """Speedups vs dense per method, in place."""
    methods = entry.get("methods") or {}
    dense = methods.get(BASELINE)
    if not dense or "ttft_ms" not in dense:
        return
    for name, r in methods.items():
        if name == BASELINE or "ttft_ms" not in r:
            continue
        r["vs_dense"] = amdahl(dense, r)
        if "decode_ms_per_token" in r and "decode_ms_per_token" in dense:
            r["vs_dense"]["decode_speedup"] = dense["decode_ms_per_token"] / r["decode_ms_per_token"]
        if r.get("attention_flops") and dense.get("attention_flops"):
            r["vs_dense"]["flops_reduction"] = 1 - r["attention_flops"] / dense["attention_flops"]


# ---------------------------------------------------------------------------------------------- run


def provenance(argv: list[str], device: torch.device) -> dict[str, Any]:
    from datetime import datetime, timezone

    from bsight.harness.provenance import git_state, package_versions

    commit, dirty = git_state()
    prov: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bsight.harness.benchmarks.inmodel " + " ".join(argv),
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": package_versions(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        prov.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version()
        )
    return prov


def run(spec: dict[str, Any], out: Path | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every arch x length x method of ``spec`` (keys of :data:`DEFAULTS`); the JSON is rewritten after
    every prompt so a killed run keeps what it measured."""
    from bsight.harness import random_models as rm
    from bsight.kernels import dense_policy, dispatch

    spec = {**DEFAULTS, **spec}
    device = torch.device(spec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "inmodel",
        "spec": spec,
        "provenance": provenance(argv or [], device),
        "labels": {
            "weights": rm.WEIGHTS_LABEL,
            "head_map": "SYNTHETIC (category shares as in spec.shares, random positions): timing only",
            "agreement": "agreement and KL vs dense on RANDOM weights: fidelity of the computation, not accuracy",
            "text_tokens": "UTF-8 bytes of the task's text as offset ids (no tokenizer files here)",
        },
        "dense_policy": {
            "flash_below": dense_policy.DENSE_POLICY.flash_below,
            "cudnn_bucket": dense_policy.DENSE_POLICY.cudnn_bucket,
            "decode_backend": dense_policy.DENSE_POLICY.decode_backend,
        },
        "models": [],
    }

    def save() -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    for arch in spec["archs"]:
        model_entry: dict[str, Any] = {"arch": arch, "prompts": []}
        result["models"].append(model_entry)
        try:
            bench = Bench(arch, spec, device)
        except Exception as e:  # noqa: BLE001
            model_entry["error"] = f"{type(e).__name__}: {e}"
            log.exception("building %s", arch)
            save()
            continue
        model_entry.update(
            model_id=bench.info.model_id,
            info=bench.info.model_dump(),
            build_s=bench.build_s,
            head_map={"shares": bench.head_map.shares(), "dataset": bench.head_map.dataset.name},
        )
        t0 = time.perf_counter()
        model_entry["warmup_ms"] = bench.warm_up()
        model_entry["warmup_s"] = time.perf_counter() - t0
        save()
        for target in spec["lengths"]:
            for index in range(spec["samples_per_length"]):
                if time.perf_counter() - started > spec["budget_s"]:
                    model_entry["prompts"].append({"target_tokens": target, "skipped": "time budget spent"})
                    continue
                t1 = time.perf_counter()
                try:
                    entry = bench.measure_prompt(target, index)
                except Exception as e:  # noqa: BLE001 - the run goes on with the next prompt
                    entry = {"target_tokens": target, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                    log.exception("%s at %d tokens", arch, target)
                entry["wall_s"] = time.perf_counter() - t1
                summarize(entry)
                model_entry["prompts"].append(entry)
                log.info("%s %s: %s", arch, target, short_line(entry))
                save()
        del bench
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["fallback_warnings"] = dispatch.fallback_warnings()
    result["total_s"] = time.perf_counter() - started
    save()
    return result


def short_line(entry: dict[str, Any]) -> str:
    if "error" in entry:
        return entry["error"]
    cells = []
    for name, r in (entry.get("methods") or {}).items():
        if "ttft_ms" in r:
            cells.append(f"{name} {r['ttft_ms']:.0f}ms (cold {r['cold_ms']:.0f})")
        else:
            cells.append(f"{name} {r.get('error', '?')[:80]}")
    return f"{entry.get('tokens')} tokens, {entry.get('images')} images: " + "; ".join(cells)


def table(result: dict[str, Any]) -> str:
    """Markdown: per model and prompt, each method's TTFT, attention share, speedups, decode, overheads."""

    def f(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) else "-"

    rows = [
        "| model | tokens | images | method | TTFT ms | attn share | TTFT x | attn x | Amdahl ratio | decode ms/tok | "
        "one-time ms | per-prompt overhead | FLOPs red. | KL | same tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        for e in m.get("prompts", []):
            head = f"| {m['arch']} | {e.get('tokens', e['target_tokens'])} | {e.get('images', '')} |"
            if "methods" not in e:
                rows.append(f"{head} | {e.get('error') or e.get('skipped')} |")
                continue
            for name, r in e["methods"].items():
                if "ttft_ms" not in r:
                    rows.append(f"{head} {name} | {r.get('error', '')[:100]} |")
                    continue
                v = r.get("vs_dense") or {}
                cells = [
                    name,
                    f"{r['ttft_ms']:.0f}",
                    f"{r['attention_share']:.0%}",
                    f(v.get("ttft_speedup"), ".2f"),
                    f(v.get("attention_speedup"), ".2f"),
                    f(v.get("ratio"), ".2f"),
                    f(r.get("decode_ms_per_token"), ".1f"),
                    f"{r['one_time_ms']:.0f}",
                    f"{r['per_prompt_overhead_share']:.1%}",
                    f(v.get("flops_reduction"), ".0%"),
                    f(r.get("kl_last_token"), ".2g"),
                    str(r.get("agree_all_tokens", "-")),
                ]
                rows.append(f"{head} " + " | ".join(cells) + " |")
            if "decode_backends" in e:
                cells = ", ".join(
                    f"{b} {d['decode_ms_per_token']:.1f}" if "decode_ms_per_token" in d else f"{b} n/a"
                    for b, d in e["decode_backends"].items()
                )
                rows.append(f"{head} dense decode by backend (ms/token) | {cells} |")
    return "\n".join(rows)


def load_spec(path: Path) -> dict[str, Any]:
    """The ``inmodel`` job of a benchmarks config (``gpu.yaml``): its keys are this benchmark's spec."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    jobs = [j for j in doc.get("jobs", []) if j.get("type") == "inmodel"]
    if not jobs:
        raise ValueError(f"{path} has no job of type 'inmodel'")
    return {k: v for k, v in jobs[0].items() if k not in ("type", "name", "source", "published")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bsight.harness.benchmarks.inmodel", description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", help="a benchmarks config with an 'inmodel' job (gpu.yaml)")
    p.add_argument("--out", required=True, help="JSON to write (rewritten after every prompt)")
    p.add_argument("--archs", type=lambda s: s.split(","))
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--methods", type=lambda s: s.split(","))
    p.add_argument("--num-layers", type=int, help="cut the language tower (quick checks; recorded)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--samples-per-length", type=int)
    p.add_argument("--budget-s", type=float)
    p.add_argument("--device")
    args = p.parse_args(argv)
    spec = load_spec(Path(args.config)) if args.config else {}
    for key in ("archs", "lengths", "methods", "num_layers", "repeats", "samples_per_length", "budget_s", "device"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    device = spec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("inmodel: this benchmark needs a CUDA GPU (or --device cpu with a tiny --num-layers)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run(spec, Path(args.out), argv)
    print(table(result))
    print(f"\n{result['labels']['weights']}; head map {result['labels']['head_map']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
