"""Which SDPA backend is the fastest honest dense, per phase and length, with per-shape costs counted.

    python -m bsight.harness.benchmarks.sdpa_policy --out sdpa_policy_h100.json

For one attention shape (default Qwen2-VL-7B's: 28 query / 4 KV heads of 128, bf16) and each backend
(cuDNN, flash, efficient), on the GPU:

* prefill (causal, ``q_len == kv_len``): the first call on a new length (what a new prompt pays: cuDNN builds
  a plan per shape) and the steady-state median after warm-up on that length;
* decode (``q_len == 1``): the first call on each of several consecutive new KV lengths (what each generated
  token pays) and the steady-state median;
* right-padding a causal prefill to a bucket and slicing the result is exact (checked here on random inputs).

The dense policy of :mod:`bsight.kernels.dispatch` (``DensePolicy``) is chosen from these numbers; the
JSON keeps them with provenance so the choice can be checked against the card it was made on. As a library:
:func:`run` takes a :class:`PolicySpec` and returns the document the CLI writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.nn.attention import SDPBackend, sdpa_kernel

from bsight.harness.provenance import benchmark_provenance, cli_command

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
PREFILL_LENGTHS = [2048, 4096, 8192, 16384, 24576, 36864, 73728, 147456]
DECODE_LENGTHS = [4096, 16384, 36864, 73728, 147456]


def _ms(fn, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - t0)


def _events_ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def _call(backend: str, q, k, v, causal: bool):
    if backend == "efficient" and q.shape[1] != k.shape[1]:  # it takes no enable_gqa: K/V expanded
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    with sdpa_kernel([BACKENDS[backend]]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])


def probe_prefill(
    S: int, heads: int, kv_heads: int, dim: int, device, dtype, repeats: int, salt: int
) -> dict[str, Any]:
    """First call on a never-seen length (``S - salt``) and steady median at ``S``, per backend."""
    out: dict[str, Any] = {}
    for name in BACKENDS:
        try:
            L = S - salt  # a length no earlier call used: the first call pays any per-shape cost
            q = torch.randn(1, heads, L, dim, device=device, dtype=dtype)
            k = torch.randn(1, kv_heads, L, dim, device=device, dtype=dtype)
            first = _ms(lambda: _call(name, q, k, k, True), device)
            second = _ms(lambda: _call(name, q, k, k, True), device)
            q = torch.randn(1, heads, S, dim, device=device, dtype=dtype)
            k = torch.randn(1, kv_heads, S, dim, device=device, dtype=dtype)
            _call(name, q, k, k, True)
            steady = statistics.median(_events_ms(lambda: _call(name, q, k, k, True), repeats))
            out[name] = {"first_ms": first, "second_ms": second, "steady_ms": steady, "per_shape_ms": first - second}
        except RuntimeError as e:
            out[name] = {"unavailable": str(e).splitlines()[0][:160]}
        torch.cuda.empty_cache()
    return out


def probe_decode(L: int, heads: int, kv_heads: int, dim: int, device, dtype, steps: int, repeats: int):
    """Per backend: ``steps`` consecutive new KV lengths as generation meets them, then the steady median."""
    out: dict[str, Any] = {}
    kv = torch.randn(1, kv_heads, L + steps, dim, device=device, dtype=dtype)
    q = torch.randn(1, heads, 1, dim, device=device, dtype=dtype)
    for name in BACKENDS:
        try:
            new = [
                _ms(lambda: _call(name, q, kv[:, :, : L + i], kv[:, :, : L + i], False), device) for i in range(steps)
            ]
            steady = statistics.median(_events_ms(lambda: _call(name, q, kv[:, :, :L], kv[:, :, :L], False), repeats))
            out[name] = {"new_length_ms": new, "new_length_median_ms": statistics.median(new), "steady_ms": steady}
        except RuntimeError as e:
            out[name] = {"unavailable": str(e).splitlines()[0][:160]}
    return out


def padding_exact(device, dtype, heads: int, kv_heads: int, dim: int) -> dict[str, float]:
    """Causal attention right-padded to a bucket then sliced equals the unpadded result (max abs diff)."""
    from bsight.kernels.dispatch import causal_sdpa

    S, Sb = 5000, 5120
    q = torch.randn(heads, S, dim, device=device, dtype=dtype)
    k = torch.randn(kv_heads, S, dim, device=device, dtype=dtype)
    v = torch.randn(kv_heads, S, dim, device=device, dtype=dtype)
    ref = causal_sdpa(q, k, v, dim**-0.5, "cudnn")
    pad = lambda t: F.pad(t, (0, 0, 0, Sb - S))  # noqa: E731
    padded = causal_sdpa(pad(q), pad(k), pad(v), dim**-0.5, "cudnn")[:, :S]
    return {"max_abs_diff": float((padded.float() - ref.float()).abs().max()), "S": S, "bucket": Sb}


class PolicySpec(BaseModel):
    """The attention shape and lengths probed (the CLI's flags, ``--out`` aside)."""

    model_config = ConfigDict(extra="forbid")
    heads: int = Field(28, ge=1)
    kv_heads: int = Field(4, ge=1)
    head_dim: int = Field(128, ge=1)
    prefill_lengths: list[int] = Field(list(PREFILL_LENGTHS), min_length=1)
    decode_lengths: list[int] = Field(list(DECODE_LENGTHS), min_length=1)
    repeats: int = Field(5, ge=1, description="steady-state prefill runs (median)")


def run(spec: PolicySpec, *, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Probe every backend on ``spec`` (needs a CUDA GPU); returns the document ``{benchmark, shape, provenance,
    prefill, decode, process_first_call_ms, padding}``. ``command``: the CLI's command line (None: a library call)."""
    device = torch.device("cuda")
    dtype = torch.bfloat16
    heads, kv_heads, dim = spec.heads, spec.kv_heads, spec.head_dim
    result: dict[str, Any] = {
        "benchmark": "sdpa_policy",
        "shape": {"heads": heads, "kv_heads": kv_heads, "head_dim": dim, "dtype": "bfloat16"},
        "provenance": benchmark_provenance("sdpa_policy", command, device),
        "prefill": {},
        "decode": {},
    }
    # the process's first call of each backend (library load) is a one-time cost, kept apart
    q = torch.randn(1, heads, 256, dim, device=device, dtype=dtype)
    k = torch.randn(1, kv_heads, 256, dim, device=device, dtype=dtype)
    result["process_first_call_ms"] = {}
    for n in BACKENDS:
        try:
            result["process_first_call_ms"][n] = _ms(lambda: _call(n, q, k, k, True), device)
        except RuntimeError as e:
            result["process_first_call_ms"][n] = str(e).splitlines()[0][:120]
    for i, S in enumerate(spec.prefill_lengths):
        result["prefill"][str(S)] = probe_prefill(S, heads, kv_heads, dim, device, dtype, spec.repeats, 37 + i)
    for L in spec.decode_lengths:
        result["decode"][str(L)] = probe_decode(L, heads, kv_heads, dim, device, dtype, 6, 20)
    result["padding"] = padding_exact(device, dtype, heads, kv_heads, dim)
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["phase  length  " + "  ".join(f"{b:>24}" for b in BACKENDS), "(first/steady ms)"]
    for phase in ("prefill", "decode"):
        for L, row in result[phase].items():
            cells = []
            for b in BACKENDS:
                r = row[b]
                if "unavailable" in r:
                    cells.append(f"{'n/a':>24}")
                elif phase == "prefill":
                    cells.append(f"{r['first_ms']:>11.2f}/{r['steady_ms']:<12.3f}")
                else:
                    cells.append(f"{r['new_length_median_ms']:>11.3f}/{r['steady_ms']:<12.4f}")
            lines.append(f"{phase:7} {L:>7} " + "  ".join(cells))
    lines.append(f"padding exact: {result['padding']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bsight.harness.benchmarks.sdpa_policy", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True)
    p.add_argument("--heads", type=int, default=28)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--prefill-lengths", type=lambda s: [int(x) for x in s.split(",")], default=PREFILL_LENGTHS)
    p.add_argument("--decode-lengths", type=lambda s: [int(x) for x in s.split(",")], default=DECODE_LENGTHS)
    given = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(given)
    if not torch.cuda.is_available():
        print("sdpa_policy needs a CUDA GPU", file=sys.stderr)
        return 2
    spec = PolicySpec(**{k: v for k, v in vars(args).items() if k != "out"})
    result = run(spec, command=cli_command("sdpa_policy", given, args.out))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
