"""Attention dispatch: the one road from a layer's q, k, v to a kernel.

``causal_sdpa`` is plain causal attention through PyTorch SDPA; ``layout_attention`` applies per-head
BlindSight categories (the Triton kernel on CUDA, else the chunked float32 reference); ``dense_prefill`` is
the model's own mask (SDPA when it is plain causal, else the layout path with every head dense). Methods,
characterization and benchmarks all call these, so each case has one implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bsight.kernels import dense_policy
from bsight.kernels.dense_policy import (  # noqa: F401 - re-exported: the dense policy lives in dense_policy
    _CUDNN_FIRST,
    DensePolicy,
    _priority,
    policy_causal_sdpa,
    sdpa_policy,
)
from bsight.kernels.reference import reference_attention
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.metadata import LayoutMeta

log = logging.getLogger(__name__)


def sync(device: torch.device | str | None) -> None:
    """Wait for the work queued on ``device`` when it is a GPU (nothing to wait for on the CPU or None): the one
    synchronization helper of wall-clock timings (overhead meters, benchmarks, jobs)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class LayerCall:
    """What an attention method learns about the layer it is called for."""

    layer_idx: int
    scale: float
    window: int | None = None  # sliding window of this layer, if any


SdpaBackend = Literal["auto", "cudnn", "flash", "efficient", "math"]
_BACKENDS: dict[str, SDPBackend] = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
_AUTO_ORDER = _CUDNN_FIRST  # long prefill; see DensePolicy for the per-phase, per-length choice


@contextmanager
def _sdpa_backend(backend: SdpaBackend, device: torch.device, length: int = 0) -> Iterator[None]:
    if backend == "auto":
        if device.type != "cuda":
            yield
            return
        ctx = _priority(dense_policy.DENSE_POLICY.order(length, length))
    else:
        ctx = sdpa_kernel([_BACKENDS[backend]])
    with ctx:
        yield


def causal_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    backend: SdpaBackend = "auto",
    expand_kv: bool = False,
) -> torch.Tensor:
    """Plain causal attention ``q [Hq, S, D]``, ``k, v [Hkv, S, D]`` -> ``[Hq, S, D]`` through SDPA.

    GQA goes through ``enable_gqa`` unless ``expand_kv`` repeats K/V to every query head first (some
    backends take only equal head counts; which is faster is measured, not assumed).
    """
    Hq, Hkv = q.shape[0], k.shape[0]
    if expand_kv and Hq != Hkv:
        k, v = k.repeat_interleave(Hq // Hkv, 0), v.repeat_interleave(Hq // Hkv, 0)
    if backend == "auto":
        return policy_causal_sdpa(q[None], k[None], v[None], scale=scale, enable_gqa=k.shape[0] != Hq)[0]
    with _sdpa_backend(backend, q.device):
        return F.scaled_dot_product_attention(
            q[None], k[None], v[None], is_causal=True, scale=scale, enable_gqa=k.shape[0] != Hq
        )[0]


def is_plain_causal(meta: LayoutMeta, call: LayerCall) -> bool:
    """True when the model's own mask is plain causal for this prompt: no bidirectional image and no sliding
    window that the prompt reaches."""
    return not meta.has_bidirectional and (call.window is None or call.window >= meta.length)


def dense_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: LayoutMeta,
    call: LayerCall,
    backend: SdpaBackend = "auto",
    expand_kv: bool = False,
) -> torch.Tensor:
    """Dense prefill under the model's own mask. Plain causal layers take SDPA; bidirectional images or a
    sliding window that the prompt reaches need the layout's mask, applied by the BlindSight kernel (GPU) or
    the chunked reference (CPU) with every head dense, never materializing S x S."""
    if is_plain_causal(meta, call):
        return causal_sdpa(q, k, v, call.scale, backend, expand_kv)
    cats = torch.full((q.shape[0],), Category.DENSE.value, dtype=torch.int32, device=q.device)
    return layout_attention(q, k, v, meta, cats, call)


KernelChoice = Literal["auto", "triton", "reference"]
DenseHeads = Literal["sdpa", "kernel"]
AttentionFn = Callable[..., torch.Tensor]
_warned: set[str] = set()


def fallback_warnings() -> list[str]:
    """The distinct fallback warnings logged in this process (benchmarks record them beside their timings)."""
    return sorted(_warned)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _triton_kernel(fallback: bool) -> AttentionFn | None:
    """``bsight.kernels.blindsight_attention`` (same signature as ``reference_attention``), or None."""
    try:
        from bsight.kernels import blindsight_attention as kernels  # looked up at call time: a build may lack it

        return kernels.blindsight_attention
    except (ImportError, AttributeError) as e:
        if not fallback:
            raise RuntimeError(f"bsight.kernels.blindsight_attention is unavailable ({type(e).__name__}: {e})") from e
        _warn_once(
            f"bsight.kernels.blindsight_attention is unavailable ({type(e).__name__}: {e}); "
            "falling back to the chunked reference attention (correct, but slow on GPU)"
        )
        return None


def layout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: LayoutMeta,
    categories: torch.Tensor,
    call: LayerCall,
    kernel: KernelChoice = "auto",
    fallback: bool = True,
    dense_heads: DenseHeads = "sdpa",
) -> torch.Tensor:
    """Attention under the layout's per-head masks: the Triton kernel on CUDA (or wherever ``kernel="triton"``,
    e.g. under ``TRITON_INTERPRET=1``), else the reference. A kernel that is missing, or that refuses the case
    (NotImplementedError or TypeError: a dtype or head dim it lacks, say), falls back to the reference with a
    log line, or raises when ``fallback`` is off (benchmarks must not time the reference by accident). The
    kernel sends dense heads of plain causal layers to SDPA itself unless ``dense_heads="kernel"``."""
    use_triton = kernel == "triton" or (kernel == "auto" and q.is_cuda)
    fn = _triton_kernel(fallback) if use_triton else None
    if fn is not None:
        extra = {"dense_backend": "kernel"} if dense_heads == "kernel" else {}
        try:
            return fn(q, k, v, meta, categories, scale=call.scale, window=call.window, **extra)
        except (NotImplementedError, TypeError) as e:  # the kernel refuses a case (window, dtype, head dim, device)
            if not fallback:
                raise
            _warn_once(
                f"blindsight kernel does not handle this case ({type(e).__name__}: {e}); using the reference "
                "attention for it"
            )
    return reference_attention(q, k, v, meta, categories, scale=call.scale, window=call.window)
