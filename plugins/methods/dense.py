"""Method ``dense``: the model's own attention, the reference every other method is compared with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch.nn.attention import SDPBackend, sdpa_kernel

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod, LayerCall
from bsight.harness.sparsity.categories import Category
from bsight.harness.sparsity.metadata import LayoutMeta

SdpaBackend = Literal["auto", "cudnn", "flash", "efficient", "math"]
_BACKENDS: dict[str, SDPBackend] = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
# cuDNN first: on H100 it is the fastest dense prefill kernel (see peers' timings); torch falls through the
# list when a backend cannot take the inputs.
_AUTO_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextmanager
def _sdpa_backend(backend: SdpaBackend, device: torch.device) -> Iterator[None]:
    if backend == "auto":
        if device.type != "cuda":
            yield
            return
        try:
            ctx = sdpa_kernel(_AUTO_ORDER, set_priority=True)
        except TypeError:  # torch without set_priority: its own order
            ctx = sdpa_kernel(_AUTO_ORDER)
    else:
        ctx = sdpa_kernel([_BACKENDS[backend]])
    with ctx:
        yield


def causal_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: SdpaBackend = "auto", expand_kv: bool = False
) -> torch.Tensor:
    """Plain causal attention ``q [Hq, S, D]``, ``k, v [Hkv, S, D]`` -> ``[Hq, S, D]`` through SDPA.

    GQA goes through ``enable_gqa`` unless ``expand_kv`` repeats K/V to every query head first (some
    backends take only equal head counts; which is faster is measured, not assumed).
    """
    Hq, Hkv = q.shape[0], k.shape[0]
    if expand_kv and Hq != Hkv:
        k, v = k.repeat_interleave(Hq // Hkv, 0), v.repeat_interleave(Hq // Hkv, 0)
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
    from bsight.plugins.methods.blindsight import layout_attention  # the kernel dispatch lives with the method

    cats = torch.full((q.shape[0],), Category.DENSE.value, dtype=torch.int32, device=q.device)
    return layout_attention(q, k, v, meta, cats, call)


class DenseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: SdpaBackend = "auto"  # SDPA backend of plain causal layers ("auto": cuDNN, flash, efficient, math)
    expand_kv: bool = False  # repeat K/V to every query head instead of SDPA's enable_gqa


class Dense(AttentionMethod):
    name = "dense"
    description = "The model's own mask (causal; Gemma 3 bidirectional inside images; sliding windows kept)"
    Options = DenseOptions

    def prefill(self, q, k, v, meta, call):
        return dense_prefill(q, k, v, meta, call, self.options.backend, self.options.expand_kv)

    def head_categories(self, layer_idx: int) -> torch.Tensor | None:
        assert self.model is not None, "setup() first"
        return torch.full((self.model.num_heads,), Category.DENSE.value, dtype=torch.int32)


@hookimpl
def bsight_attention_methods():
    return [Dense]
