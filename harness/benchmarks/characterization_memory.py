"""Peak CPU memory of characterizing one long prompt, layer by layer (the O(S x chunk) claim, measured).

Random q, k, v of a model shape (default Qwen2-VL-7B: 28 layers, 28 query heads, 4 KV heads, head_dim 128)
are made one layer at a time and characterized with :func:`characterize_layers`, as a model run would hand
them over. The process's peak resident set size is read from the kernel, so run this in a fresh process::

    python -m bsight.harness.benchmarks.characterization_memory --tokens 36864 --layers 28

As a library: :func:`run` takes a :class:`MemorySpec` and returns the document the CLI prints (one JSON object:
the measurement and its provenance).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.characterize import characterize_layers
from bsight.harness.provenance import benchmark_provenance, cli_command
from bsight.kernels.dispatch import LayerCall
from bsight.kernels.sparsity.layout import PromptLayout
from bsight.kernels.sparsity.planted import realistic_layout


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """This process image's high-water mark (VmHWM). Not getrusage's ru_maxrss: that survives exec, so a
    child started by a large parent (a test runner holding models) would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def footprint_layout(
    num_tokens: int, image_tokens: int = 1024, label_tokens: int = 16, text_tokens: int = 64
) -> PromptLayout:
    """The peers' timing layout: text prefix, images each after a label, a question filling up to ``num_tokens``."""
    n = (num_tokens - 2 * text_tokens) // (image_tokens + label_tokens)
    if n < 1:
        raise ValueError(f"{num_tokens} tokens cannot hold one image of {image_tokens} tokens plus text")
    question = num_tokens - text_tokens - n * (image_tokens + label_tokens)
    return realistic_layout(
        n, image_tokens, prefix_tokens=text_tokens, label_tokens=label_tokens, question_tokens=question
    )


def measure_characterization_memory(
    num_tokens: int,
    num_layers: int = 28,
    num_heads: int = 28,
    num_kv_heads: int = 4,
    head_dim: int = 128,
    *,
    dtype: torch.dtype = torch.float32,
    chunk_size: int = 256,
    seed: int = 0,
) -> dict[str, float | int | str]:
    """Characterize one random prompt of this shape; returns peak and baseline RSS (bytes) and seconds."""
    layout = footprint_layout(num_tokens)
    gen = torch.Generator().manual_seed(seed)
    scale = head_dim**-0.5

    def layers() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, LayerCall]]:
        for i in range(num_layers):
            q = torch.randn(num_heads, layout.length, head_dim, generator=gen, dtype=dtype)
            k = torch.randn(num_kv_heads, layout.length, head_dim, generator=gen, dtype=dtype)
            v = torch.randn(num_kv_heads, layout.length, head_dim, generator=gen, dtype=dtype)
            yield q, k, v, LayerCall(layer_idx=i, scale=scale)
            del q, k, v

    baseline = _rss_bytes()
    t0 = time.perf_counter()
    record = characterize_layers("footprint", layout, layers(), chunk_size=chunk_size)
    seconds = time.perf_counter() - t0
    return {
        "tokens": layout.length,
        "images": layout.num_images,
        "layers": len(record.nmse),
        "heads": num_heads,
        "kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "dtype": str(dtype).removeprefix("torch."),
        "chunk_size": chunk_size,
        "torch_threads": torch.get_num_threads(),
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": _peak_rss_bytes(),
        "seconds": round(seconds, 1),
    }


class MemorySpec(BaseModel):
    """The model shape and prompt length characterized (the CLI's flags)."""

    model_config = ConfigDict(extra="forbid")
    tokens: int = Field(ge=1, description="prompt length")
    layers: int = Field(28, ge=1)
    heads: int = Field(28, ge=1)
    kv_heads: int = Field(4, ge=1)
    head_dim: int = Field(128, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    chunk_size: int = Field(256, ge=1)
    seed: int = 0


def run(spec: MemorySpec, *, command: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`measure_characterization_memory` of ``spec``, with the provenance (taken after the measurement, so
    that it does not touch the baseline); ``command``: the CLI's command line (None: called as a library)."""
    out: dict[str, Any] = measure_characterization_memory(
        spec.tokens,
        spec.layers,
        spec.heads,
        spec.kv_heads,
        spec.head_dim,
        dtype=getattr(torch, spec.dtype),
        chunk_size=spec.chunk_size,
        seed=spec.seed,
    )
    out["provenance"] = benchmark_provenance("characterization_memory", command, "cpu")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The CLI: parse ``argv`` into a :class:`MemorySpec`, :func:`run` it and print the document as one JSON line."""
    ap = argparse.ArgumentParser(
        prog="python -m bsight.harness.benchmarks.characterization_memory", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--chunk-size", type=int, default=256)
    given = list(sys.argv[1:] if argv is None else argv)
    spec = MemorySpec(**vars(ap.parse_args(given)))
    doc = run(spec, command=cli_command("characterization_memory", given))
    print(json.dumps(doc))
    return doc


if __name__ == "__main__":
    main()
