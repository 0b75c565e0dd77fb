"""Adapter ``gemma3``: transformers' Gemma 3 (``Gemma3ForConditionalGeneration``) with its own processor.

Layout: an image is ``<start_of_image>`` + ``mm_tokens_per_image`` soft tokens + ``<end_of_image>``; every
image has the same length. The soft tokens attend to each other bidirectionally (transformers builds this
from ``token_type_ids``; the boundary tokens stay causal), and most layers use a sliding window. Sinks sit at
fixed offsets inside each image (found by characterization); the default is the start token alone, a
placeholder until a characterized policy is passed as ``sinks`` (or comes with a head map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, Gemma3ForConditionalGeneration, PretrainedConfig

from bsight.harness.hookspecs import hookimpl
from bsight.kernels.sparsity.layout import LayoutSpec, PromptLayout, SinkPolicy, layouts_from_batch
from bsight.plugins.models.hf_vlm import HFVLMAdapter


def _token(config: PretrainedConfig, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"the Gemma 3 config sets none of {', '.join(names)}")


class Gemma3(HFVLMAdapter):
    name = "gemma3"
    description = (
        "Gemma 3 (transformers Gemma3ForConditionalGeneration): bidirectional images, sliding "
        "window, sinks at fixed offsets"
    )
    model_class = Gemma3ForConditionalGeneration
    model_types = ("gemma3",)
    image_placeholder = "<start_of_image>"
    default_sinks = SinkPolicy(kind="offsets", offsets=(0,))

    def load_processor(self, path: Path) -> Any:
        return AutoProcessor.from_pretrained(path, trust_remote_code=False, **self.options.image_processor)

    def spec_from_config(self, config: PretrainedConfig, sinks: SinkPolicy) -> LayoutSpec:
        return LayoutSpec(
            start_ids=(_token(config, "boi_token_id", "boi_token_index"),),
            end_ids=(_token(config, "eoi_token_id", "eoi_token_index"),),
            inner_ids=(_token(config, "image_token_id", "image_token_index"),),
            bidirectional=True,
            sinks=sinks,
        )

    def encode(self, text: str, images: list[Any], add_special_tokens: bool) -> dict[str, torch.Tensor]:
        return dict(
            self.processor(
                text=[text],
                images=[images] if images else None,
                return_tensors="pt",
                add_special_tokens=add_special_tokens,
            )
        )

    def read_layouts(self, inputs: dict[str, torch.Tensor]) -> list[PromptLayout]:
        spec = self.layout_spec()
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        per_image = int(self._require().config.mm_tokens_per_image)
        valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        counts = ((ids == spec.start_ids[0]) & valid).sum(-1).tolist()
        return layouts_from_batch(ids, spec, mask, expected_inner=[[per_image] * n for n in counts])


@hookimpl
def bsight_model_adapters():
    return [Gemma3]
