"""Method ``blindsight``: a static head map (one category per layer and query head) applied in prefill.

The head map comes from characterization (a JSON file, :class:`HeadMap`) or, for timing and tests, is one
category for every head. Prefill hands each layer's per-head categories to the Triton kernel on the GPU
(``bsight.kernels.blindsight_attention``, which sends the dense heads of plain causal layers to SDPA, cuDNN
first) and to the chunked float32 reference on the CPU; plain causal layers whose heads are all dense go to
SDPA directly. Nothing is estimated at run time: the only overhead is the per-prompt layout metadata, which
the bridge measures.

Hybrid models: layers that are not softmax attention (``linear`` in the model's and the head map's layer kinds:
Qwen3.5's Gated DeltaNet, Mamba) never call the attention interface, so they run untouched; the head map has
no categories for them and must agree with the model on every layer's kind.
"""

from __future__ import annotations

import logging

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod, ModelInfo
from bsight.kernels.dispatch import (
    DenseHeads,
    KernelChoice,
    LayerCall,
    SdpaBackend,
    causal_sdpa,
    is_plain_causal,
    layout_attention,
)
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.plugins.methods.head_map_option import HeadMapOption

log = logging.getLogger(__name__)


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


class Blindsight(HeadMapOption, AttentionMethod):
    name = "blindsight"
    description = (
        "Static per-head categories from a head map (dense, sink, intra_image, intra_image_sink); Triton kernel on GPU"
    )
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
                hm = HeadMap.uniform(
                    model.model_id,
                    model.num_layers,
                    model.num_heads,
                    opts.uniform,
                    opts.sink_policy or SinkPolicy(),
                    layer_kinds=model.kinds(),
                )
            else:
                hm = opts.head_map if isinstance(opts.head_map, HeadMap) else HeadMap.load(opts.head_map)
        hm.check_model(model.num_layers, model.num_heads, model.kinds())
        if opts.uniform is None and hm.model_id != model.model_id:
            log.warning("head map was characterized on %r, applying it to %r (same shape)", hm.model_id, model.model_id)
        self.head_map = hm
        self.sink_policy = opts.sink_policy or (hm.sink_policy if opts.uniform is None else None)
        none = torch.zeros(0, dtype=torch.int32)  # linear layers: no categories (never called)
        self._categories = [
            hm.layer_categories(layer) if hm.is_softmax_layer(layer) else none for layer in range(model.num_layers)
        ]
        self._all_dense = [not bool(c.any()) for c in self._categories]

    def _layer(self, layer_idx: int) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("blindsight: setup(model_info) must run before prefill")
        if not 0 <= layer_idx < len(self._categories):
            raise ValueError(f"layer index {layer_idx} outside the head map's {len(self._categories)} layers")
        cats = self._categories[layer_idx]
        if cats.numel() == 0:
            raise ValueError(
                f"layer {layer_idx} is {self.head_map.kinds()[layer_idx]!r}, not softmax attention: no categories"
            )
        return cats

    def head_categories(self, layer_idx: int) -> torch.Tensor | None:
        """A softmax layer's categories; None for a linear layer (nothing to count or sparsify there)."""
        if self.head_map is not None and not self.head_map.is_softmax_layer(layer_idx):
            return None
        return self._layer(layer_idx).clone()

    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall
    ) -> torch.Tensor:
        cats = self._layer(call.layer_idx)
        opts = self.options
        if is_plain_causal(meta, call) and (meta.num_images == 0 or self._all_dense[call.layer_idx]):
            return causal_sdpa(q, k, v, call.scale, opts.sdpa_backend)  # every category is plain causal here
        return layout_attention(q, k, v, meta, cats, call, opts.kernel, opts.fallback, opts.dense_heads)


@hookimpl
def bsight_attention_methods():
    return [Blindsight]
