"""The dense baseline's SDPA policy: which backend runs each phase and length (floor 2, imports only torch).

:mod:`bsight.kernels.dispatch` (method ``dense``, blindsight's all-dense layers), the BlindSight kernel's dense
heads and the attention bridge's decode steps all read :data:`DENSE_POLICY` here at call time, so one policy
governs every dense SDPA call (a benchmark may swap it, e.g. to time each decode backend).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS: dict[str, SDPBackend] = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_FLASH_FIRST = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]


@dataclass(frozen=True)
class DensePolicy:
    """The fastest honest dense SDPA per phase and length, per-shape costs included (``"auto"`` backend).

    Measured on the H100 (``python -m bsight.harness.benchmarks.sdpa_policy``, reports/published/
    sdpa_policy_h100.json; 28/4 heads of 128, bf16): cuDNN builds a plan for every new shape (40-70 ms on the
    first call of a length, prefill or decode), flash pays nothing per shape. Steady state, cuDNN is faster at
    every prefill length (16K: 3.2 vs 6.0 ms a call; 147K: 260 vs 459 ms) and equal at decode (0.07-0.13 ms).
    So: decode (``q_len != kv_len``) -> flash, which never pays per KV length; prefill shorter than
    ``flash_below`` -> flash (28 layers save < 70 ms on cuDNN there, less than one plan); longer prefill ->
    cuDNN, its length right-padded to a multiple of ``cudnn_bucket`` (exact for causal attention: padded keys
    come after every real query; padded rows are dropped), so prompts of nearby lengths share one plan.
    """

    flash_below: int = 16_384
    cudnn_bucket: int = 1024
    decode_backend: str = "flash"  # first choice for decode steps (benchmarks time the others against it)

    def order(self, q_len: int, kv_len: int) -> list[SDPBackend]:
        if q_len != kv_len:
            first = BACKENDS[self.decode_backend]
            return [first] + [b for b in _FLASH_FIRST if b != first]
        if q_len < self.flash_below:
            return _FLASH_FIRST
        return _CUDNN_FIRST

    def padded_length(self, length: int) -> int:
        b = self.cudnn_bucket
        return length if b <= 1 or length < self.flash_below else -(-length // b) * b


DENSE_POLICY = DensePolicy()


def _priority(order: list[SDPBackend]):
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch without set_priority: its own order
        return sdpa_kernel(order)


@contextmanager
def sdpa_policy(q_len: int, kv_len: int, device: torch.device) -> Iterator[None]:
    """SDPA calls inside take :data:`DENSE_POLICY`'s backend order for this phase and length (CUDA only)."""
    if device.type != "cuda":
        yield
        return
    with _priority(DENSE_POLICY.order(q_len, kv_len)):
        yield


def policy_causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """Causal ``F.scaled_dot_product_attention`` on ``[B, H, S, D]`` under :data:`DENSE_POLICY` (right-padded to
    its bucket where cuDNN runs the length)."""
    S = q.shape[-2]
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
    Sp = DENSE_POLICY.padded_length(S)
    if Sp != S:
        pad = (0, 0, 0, Sp - S)
        q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    with _priority(DENSE_POLICY.order(Sp, Sp)):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
    return out[..., :S, :] if Sp != S else out
