"""Probe: would Hopper TMA loads and Triton's automatic warp specialization speed up the kernel's loop?

FlashAttention-3 reaches its speed on an H100 with TMA loads issued by a producer warp while consumer warps
run the matrix work (warp specialization). Triton exposes both (``tl.make_tensor_descriptor``,
``tl.range(..., warp_specialize=True)``), and whether they help BlindSight depends on two things measured
here on one plain causal attention kernel (no layout, every head dense), next to cuDNN:

1. **the loop rate**: TFLOP/s of the full-block loop with pointer loads (as in
   :mod:`bsight.kernels.triton_fwd`), with TMA loads, and with TMA loads plus warp specialization;
2. **what the compiler accepts**: whether a kernel of the shape BlindSight needs still gets warp-specialized
   code (a query tile loaded with pointers, because text tiles gather their rows; a second, masked loop for
   the edge blocks; or the mask under a branch inside the one loop). Each shape is compiled for the GPU's
   target and reported as warp-specialized, not specialized, or failed (with the compiler's message).

Re-run it after a Triton upgrade: when (2) reports a needed shape as warp-specialized, the kernel can adopt
it. Results and the analysis of the first run are in kernels/NOTES.md (round 4). Usage::

    python -m bsight.harness.benchmarks.hopper_probe --out hopper_probe_h100.json [--lengths 36864,73728]
    python -m bsight.harness.benchmarks.hopper_probe --compile-only --target 90   # no GPU needed: shapes only

As a library: :func:`run` takes a :class:`ProbeSpec` and returns the document the CLI writes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import triton
import triton.language as tl
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.provenance import benchmark_provenance, cli_command
from bsight.kernels.triton_fwd import _scores, _softmax_step

HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128  # peers.md's shape (Qwen2-VL 7B)
BLOCK_M, BLOCK_N = 128, 64  # the kernel's default tile (bsight.kernels.blindsight_attention.default_config)


@triton.jit
def probe_fwd_kernel(
    Q,
    K,
    V,
    O,
    S,
    num_heads,
    group,
    qk_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TMA: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    Q_BY_TMA: tl.constexpr,
    EDGE_LOOP: tl.constexpr,
    MASK_IN_LOOP: tl.constexpr,
):
    """Causal attention of one BLOCK_M-row query tile (longest tiles first) of ``q, k, v [H, S, D]``, S a multiple of
    BLOCK_M. Without EDGE_LOOP or MASK_IN_LOOP only the full blocks (keys before the tile) are computed."""
    pid = tl.program_id(0)
    t = tl.cdiv(S, BLOCK_M) - 1 - pid // num_heads
    h = pid % num_heads
    kvh = h // group
    offs_m = t * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    if Q_BY_TMA:
        q = tl.make_tensor_descriptor(Q, shape=[S * num_heads, D], strides=[D, 1], block_shape=[BLOCK_M, D]).load(
            [h * S + t * BLOCK_M, 0]
        )
    else:
        q = tl.load(Q + (h * S).to(tl.int64) * D + offs_m[:, None] * D + offs_d[None, :])
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_full = t * BLOCK_M // BLOCK_N
    n_loop = n_full
    if MASK_IN_LOOP:
        n_loop = tl.cdiv((t + 1) * BLOCK_M, BLOCK_N)
    k_base = K + (kvh * S).to(tl.int64) * D
    v_base = V + (kvh * S).to(tl.int64) * D
    kv_off = offs_n[:, None] * D + offs_d[None, :]
    if TMA:
        k_desc = tl.make_tensor_descriptor(
            K, shape=[S * (num_heads // group), D], strides=[D, 1], block_shape=[BLOCK_N, D]
        )
        v_desc = tl.make_tensor_descriptor(
            V, shape=[S * (num_heads // group), D], strides=[D, 1], block_shape=[BLOCK_N, D]
        )
    for j in tl.range(0, n_loop, warp_specialize=WARP_SPECIALIZE):
        if TMA:
            k = k_desc.load([kvh * S + j * BLOCK_N, 0])
            v = v_desc.load([kvh * S + j * BLOCK_N, 0])
        else:
            k = tl.load(k_base + j * BLOCK_N * D + kv_off)
            v = tl.load(v_base + j * BLOCK_N * D + kv_off)
        qk = _scores(q, k, False)
        if MASK_IN_LOOP:
            if j >= n_full:
                qk = tl.where((j * BLOCK_N + offs_n)[None, :] <= offs_m[:, None], qk, float("-inf"))
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, qk, v, qk_scale, False, False)
    if EDGE_LOOP:
        for j in range(n_full, tl.cdiv((t + 1) * BLOCK_M, BLOCK_N)):
            k = tl.load(k_base + j * BLOCK_N * D + kv_off)
            v = tl.load(v_base + j * BLOCK_N * D + kv_off)
            qk = tl.where((j * BLOCK_N + offs_n)[None, :] <= offs_m[:, None], _scores(q, k, False), float("-inf"))
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, qk, v, qk_scale, False, False)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # tile 0 has no full block: zeros
    tl.store(O + (h * S).to(tl.int64) * D + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty))


@dataclass(frozen=True)
class Variant:
    """One compiled form of the probe kernel."""

    name: str
    tma: bool = False
    warp_specialize: bool = False
    q_by_tma: bool = False
    edge_loop: bool = False
    mask_in_loop: bool = False
    num_warps: int = 8
    num_stages: int = 3

    @property
    def causal(self) -> bool:
        """Computes every causal key (else only the full blocks)."""
        return self.edge_loop or self.mask_in_loop

    def constexprs(self) -> dict:
        return dict(
            D=HEAD_DIM,
            BLOCK_M=BLOCK_M,
            BLOCK_N=BLOCK_N,
            TMA=self.tma,
            WARP_SPECIALIZE=self.warp_specialize,
            Q_BY_TMA=self.q_by_tma,
            EDGE_LOOP=self.edge_loop,
            MASK_IN_LOOP=self.mask_in_loop,
        )


TIMED = (
    Variant("pointer loads (the kernel's loop)"),
    Variant("TMA loads", tma=True),
    Variant("TMA loads, 4 warps", tma=True, q_by_tma=True, num_warps=4),
    Variant("TMA loads + warp specialization", tma=True, warp_specialize=True, q_by_tma=True, num_warps=4),
    Variant(
        "TMA loads + warp specialization, 2 stages",
        tma=True,
        warp_specialize=True,
        q_by_tma=True,
        num_warps=4,
        num_stages=2,
    ),
    Variant("pointer loads, causal (edge loop)", edge_loop=True),
    Variant("TMA loads, causal (edge loop)", tma=True, edge_loop=True),
)
# the shapes BlindSight's kernel needs, each with warp specialization requested
SHAPES = (
    Variant("WS: plain loop (reference)", tma=True, warp_specialize=True, q_by_tma=True, num_warps=4),
    Variant("WS: q loaded with pointers (text tiles gather rows)", tma=True, warp_specialize=True, num_warps=4),
    Variant(
        "WS: second, masked loop for edge blocks",
        tma=True,
        warp_specialize=True,
        q_by_tma=True,
        edge_loop=True,
        num_warps=4,
    ),
    Variant(
        "WS: mask under a branch in the one loop",
        tma=True,
        warp_specialize=True,
        q_by_tma=True,
        mask_in_loop=True,
        num_warps=4,
    ),
    Variant("WS: mask under a branch, 8 warps", tma=True, warp_specialize=True, q_by_tma=True, mask_in_loop=True),
)


def compile_report(variant: Variant, target=None) -> dict:
    """Compile ``variant`` for ``target`` (default: the active GPU) without running it: whether it compiled,
    whether the compiler emitted warp-specialized code, and its register use."""
    from triton.compiler import ASTSource

    target = target or triton.runtime.driver.active.get_current_target()
    signature = {
        "Q": "*bf16",
        "K": "*bf16",
        "V": "*bf16",
        "O": "*bf16",
        "S": "i32",
        "num_heads": "i32",
        "group": "i32",
        "qk_scale": "fp32",
    }
    consts = variant.constexprs()
    signature.update({name: "constexpr" for name in consts})
    src = ASTSource(fn=probe_fwd_kernel, signature=signature, constexprs=consts)
    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            with _stderr_to(log):  # the compiler's C++ passes print their failure (and a long reproducer) there
                kernel = triton.compile(
                    src, target=target, options={"num_warps": variant.num_warps, "num_stages": variant.num_stages}
                )
        except Exception as exc:  # the compiler's own failure is the finding
            log.seek(0)
            cause = [line.strip() for line in log if "Assertion" in line or "LLVM ERROR" in line]
            return {
                "compiled": False,
                "warp_specialized": False,
                "error": (cause[0] if cause else f"{type(exc).__name__}: {exc}")[:300],
            }
    return {"compiled": True, **kernel_facts(kernel)}


def kernel_facts(kernel) -> dict:
    """Whether a compiled kernel is warp-specialized, and its registers per thread (None before it is loaded on
    a GPU, as in a compile-only run)."""
    return {"warp_specialized": "ttg.warp_specialize" in kernel.asm["ttgir"], "registers": _registers(kernel)}


@contextlib.contextmanager
def _stderr_to(file) -> Iterator[None]:
    """Send the process's file descriptor 2 (C++ code writes there, not to ``sys.stderr``) to ``file``."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(file.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _registers(kernel) -> int | None:
    """Registers per thread of a compiled kernel (known once it is loaded on a GPU; None in a compile-only run)."""
    try:
        kernel._init_handles()
        return int(kernel.n_regs)
    except Exception:  # no GPU driver here
        return None


def _launch(variant: Variant, q, k, v, out):
    """Run ``variant`` on ``q [H, S, D]``, ``k, v [Hkv, S, D]`` into ``out``; returns the compiled kernel."""
    H, S, D = q.shape
    return probe_fwd_kernel[(S // BLOCK_M * H,)](
        q,
        k,
        v,
        out,
        S,
        H,
        H // k.shape[0],
        D**-0.5 * 1.4426950408889634,
        **variant.constexprs(),
        num_warps=variant.num_warps,
        num_stages=variant.num_stages,
    )


def full_block_pairs(S: int) -> int:
    """Query-key pairs of the full blocks only: every key before each ``BLOCK_M``-row tile."""
    return sum(t * BLOCK_M * BLOCK_M for t in range(S // BLOCK_M))


def run_probe(lengths: Sequence[int], log=print) -> list[dict]:
    """Time every :data:`TIMED` variant and cuDNN at each length, checked against cuDNN's output (causal variants)
    or the pointer variant (full-block variants). TFLOP/s count the pairs each variant computes."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    triton.set_allocator(
        lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda")
    )  # device-side descriptors
    rows = []
    for S in lengths:
        if S % BLOCK_M:
            raise ValueError(f"lengths must be multiples of {BLOCK_M}, got {S}")
        gen = torch.Generator(device="cuda").manual_seed(S)
        q = torch.randn(HEADS, S, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
        k, v = (
            torch.randn(KV_HEADS, S, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2)
        )
        group = HEADS // KV_HEADS
        ke, ve = k.repeat_interleave(group, 0)[None], v.repeat_interleave(group, 0)[None]

        def cudnn():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(q[None], ke, ve, is_causal=True)[0]

        causal_pairs, full_pairs = S * (S + 1) // 2, full_block_pairs(S)
        expected = cudnn()
        ms = do_bench(cudnn, warmup=50, rep=400, return_mode="median")
        rows.append(
            dict(tokens=S, variant="cuDNN SDPA, causal", ms=ms, tflops=4 * HEAD_DIM * causal_pairs * HEADS / ms / 1e9)
        )
        full_ref = None
        for variant in TIMED:
            out = torch.zeros_like(q)
            try:
                compiled = _launch(variant, q, k, v, out)
                torch.cuda.synchronize()
            except Exception as exc:
                rows.append(dict(tokens=S, variant=variant.name, error=f"{type(exc).__name__}: {str(exc)[:300]}"))
                continue
            if variant.causal:
                ref = expected
            else:
                full_ref = out.clone() if full_ref is None else full_ref
                ref = full_ref
            got, want = (
                out[:, BLOCK_M:].float(),
                ref[:, BLOCK_M:].float(),
            )  # (tile 0 of a full-block variant has no key)
            nonfinite = float((~got.isfinite()).float().mean().item())
            err = float(((got - want).abs().max() / want.abs().max()).item())  # NaN where any output is not finite
            ms = do_bench(lambda: _launch(variant, q, k, v, out), warmup=50, rep=400, return_mode="median")
            pairs = causal_pairs if variant.causal else full_pairs
            rows.append(
                dict(
                    tokens=S,
                    variant=variant.name,
                    ms=ms,
                    tflops=4 * HEAD_DIM * pairs * HEADS / ms / 1e9,
                    max_rel_err=err,
                    nonfinite_share=nonfinite,
                    **asdict(variant),
                    **kernel_facts(compiled),
                )
            )
            log(
                f"{S:>8,} {variant.name:40s} {ms:9.3f} ms {rows[-1]['tflops']:5.0f} TFLOP/s  "
                f"err {err:.1e}  not finite {nonfinite:.1%}"
            )
    return rows


class ProbeSpec(BaseModel):
    """What one probe run measures (the CLI's flags, ``--out`` aside)."""

    model_config = ConfigDict(extra="forbid")
    lengths: list[int] = Field([36864, 73728], description="prompt lengths timed (multiples of BLOCK_M)")
    compile_only: bool = Field(False, description="only compile the shapes (no GPU needed with a target)")
    target: int | None = Field(None, description="CUDA compute capability to compile for, e.g. 90 (default: the GPU's)")


def run(
    spec: ProbeSpec, *, log: Callable[[str], None] | None = None, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """Compile :data:`SHAPES` and (unless ``compile_only``) time :data:`TIMED`; returns the document
    ``{provenance, setup, shapes, rows}``. ``log``: one line per shape and timed variant (default: none).
    ``command``: the CLI's command line for the provenance (None: called as a library)."""
    from triton.backends.compiler import GPUTarget

    log = log or (lambda line: None)
    target = GPUTarget("cuda", spec.target, 32) if spec.target else None
    if target is None and not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU here: set compile_only and a target (90) to compile the shapes for an H100")
    prov = benchmark_provenance("hopper_probe", command)
    shapes = []
    for variant in SHAPES:
        shapes.append(dict(**asdict(variant), **compile_report(variant, target)))
        log(
            f"{variant.name:55s} {'compiled' if shapes[-1]['compiled'] else 'FAILED':9s} "
            f"warp-specialized: {shapes[-1]['warp_specialized']}"
            + (f"  ({shapes[-1]['error']})" if not shapes[-1]["compiled"] else "")
        )
    rows = [] if spec.compile_only else run_probe(spec.lengths, log=log)
    return {
        "provenance": prov,
        "setup": {
            "heads": [HEADS, KV_HEADS],
            "head_dim": HEAD_DIM,
            "dtype": "bfloat16",
            "block": [BLOCK_M, BLOCK_N],
            "target": spec.target,
        },
        "shapes": shapes,
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The CLI: parse ``argv`` into a :class:`ProbeSpec`, :func:`run` it (a line per shape and timed variant on
    stdout) and write the JSON when ``--out`` is given; returns the document."""
    ap = argparse.ArgumentParser(
        prog="python -m bsight.harness.benchmarks.hopper_probe", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", help="JSON file to write (loop rates, compiler findings, provenance)")
    ap.add_argument("--lengths", default="36864,73728")
    ap.add_argument("--compile-only", action="store_true", help="only compile the shapes (no GPU needed with --target)")
    ap.add_argument(
        "--target", type=int, default=None, help="CUDA compute capability to compile for, e.g. 90 (default: the GPU's)"
    )
    given = list(argv if argv is not None else sys.argv[1:])
    args = ap.parse_args(given)
    spec = ProbeSpec(
        lengths=[int(x) for x in args.lengths.split(",")], compile_only=args.compile_only, target=args.target
    )
    if spec.target is None and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: pass --compile-only --target 90 to compile the shapes for an H100")
    doc = run(spec, log=lambda line: print(line, flush=True), command=cli_command("hopper_probe", given, args.out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1, default=str))
    return doc


if __name__ == "__main__":
    main()
