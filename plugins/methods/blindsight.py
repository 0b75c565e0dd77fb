"""Method ``blindsight``: a static head map (one category per layer and query head) applied in prefill.

The head map comes from characterization (a JSON file, :class:`HeadMap`) or, for timing and tests, is one
category for every head. Prefill hands each layer's per-head categories to the Triton kernel on the GPU
(``bsight.kernels.blindsight_attention``, which sends the dense heads of plain causal layers to SDPA, cuDNN
first) and to the chunked float32 reference on the CPU; plain causal layers whose heads are all dense go to
SDPA directly. Nothing is estimated at run time: the only overhead is the per-prompt layout metadata, which
the bridge measures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod, LayerCall, ModelInfo
from bsight.harness.sparsity.categories import Category
from bsight.harness.sparsity.headmap import HeadMap
from bsight.harness.sparsity.layout import SinkPolicy
from bsight.harness.sparsity.metadata import LayoutMeta
from bsight.kernels.reference import reference_attention
from bsight.plugins.methods.dense import SdpaBackend, causal_sdpa, is_plain_causal

log = logging.getLogger(__name__)

KernelChoice = Literal["auto", "triton", "reference"]
DenseHeads = Literal["sdpa", "kernel"]
AttentionFn = Callable[..., torch.Tensor]
_warned: set[str] = set()


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
        _warn_once(f"bsight.kernels.blindsight_attention is unavailable ({type(e).__name__}: {e}); "
                   "falling back to the chunked reference attention (correct, but slow on GPU)")
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
            _warn_once(f"blindsight kernel does not handle this case ({type(e).__name__}: {e}); using the reference attention for it")
    return reference_attention(q, k, v, meta, categories, scale=call.scale, window=call.window)


class BlindsightOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    head_map: str | HeadMap | None = None  # path of a head map JSON file (or the head map itself)
    uniform: str | None = None  # instead of a head map: every head in this category (timing, tests)
    sink_policy: SinkPolicy | None = None  # override; default: the head map's policy (uniform: the adapter's)
    kernel: KernelChoice = "auto"  # "auto": Triton kernel on CUDA, reference on CPU
    fallback: bool = True  # reference attention where the kernel is missing or raises NotImplementedError
    dense_heads: DenseHeads = "sdpa"  # in the kernel, dense heads of plain causal layers go to SDPA, or stay in it
    sdpa_backend: SdpaBackend = "auto"  # SDPA backend of plain causal layers whose heads are all dense

    @model_validator(mode="after")
    def _check(self) -> BlindsightOptions:
        if (self.head_map is None) == (self.uniform is None):
            raise ValueError("blindsight needs exactly one of 'head_map' (a head map file) or 'uniform' (a category)")
        if self.uniform is not None:
            Category.parse(self.uniform)
        return self


class Blindsight(AttentionMethod):
    name = "blindsight"
    description = "Static per-head categories from a head map (dense, sink, intra_image, intra_image_sink); Triton kernel on GPU"
    Options = BlindsightOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.head_map: HeadMap | None = None
        self.sink_policy: SinkPolicy | None = self.options.sink_policy  # read by the attention bridge
        self._categories: list[torch.Tensor] = []  # int32 [Hq] per layer, kept on the CPU (no device sync to read)
        self._all_dense: list[bool] = []

    def setup(self, model: ModelInfo) -> None:
        """Load the head map (or build the uniform one) and check it against the model's shape."""
        super().setup(model)
        opts = self.options
        with self.overhead.measure("head_map_load"):
            if opts.uniform is not None:
                hm = HeadMap.uniform(model.model_id, model.num_layers, model.num_heads, opts.uniform, opts.sink_policy or SinkPolicy())
            else:
                hm = opts.head_map if isinstance(opts.head_map, HeadMap) else HeadMap.load(opts.head_map)
        hm.check_model(model.num_layers, model.num_heads)
        if opts.uniform is None and hm.model_id != model.model_id:
            log.warning("head map was characterized on %r, applying it to %r (same shape)", hm.model_id, model.model_id)
        self.head_map = hm
        self.sink_policy = opts.sink_policy or (hm.sink_policy if opts.uniform is None else None)
        self._categories = [hm.layer_categories(layer) for layer in range(model.num_layers)]
        self._all_dense = [not bool(c.any()) for c in self._categories]

    def _layer(self, layer_idx: int) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("blindsight: setup(model_info) must run before prefill")
        if not 0 <= layer_idx < len(self._categories):
            raise ValueError(f"layer index {layer_idx} outside the head map's {len(self._categories)} layers")
        return self._categories[layer_idx]

    def head_categories(self, layer_idx: int) -> torch.Tensor | None:
        return self._layer(layer_idx).clone()

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall) -> torch.Tensor:
        cats = self._layer(call.layer_idx)
        opts = self.options
        if is_plain_causal(meta, call) and (meta.num_images == 0 or self._all_dense[call.layer_idx]):
            return causal_sdpa(q, k, v, call.scale, opts.sdpa_backend)  # every category is plain causal here
        return layout_attention(q, k, v, meta, cats, call, opts.kernel, opts.fallback, opts.dense_heads)


@hookimpl
def bsight_attention_methods():
    return [Blindsight]
