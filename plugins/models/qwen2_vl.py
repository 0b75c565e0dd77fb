"""Adapters ``qwen2_vl`` and ``qwen2_5_vl``: transformers' Qwen2-VL / Qwen2.5-VL classes.

Layout: an image (or video) is ``<|vision_start|>`` + pads + ``<|vision_end|>``; the pad count is the
vision grid's ``t * h * w / merge_size**2``. Video frames share one pair of boundary tokens and are split
into one segment per temporal grid step. Sinks: the first ``ceil(fraction * len)`` tokens of each segment.
Attention is causal everywhere; positions are M-RoPE, for which the model needs ``mm_token_type_ids``.

Processor: transformers' Qwen2-VL processor classes insist on their video processor, which needs
torchvision, even for image prompts. Image prompts need only its image part - the image processor gives the
grid, and each ``<|image_pad|>`` placeholder becomes grid-many pads before tokenization - so we compose the
checkpoint's own image processor and tokenizer exactly that way and need no torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    PretrainedConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.auto.image_processing_auto import (
    AutoImageProcessor,
)  # the top-level name needs torchvision in 5.17

from bsight.harness.hookspecs import hookimpl
from bsight.kernels.sparsity.layout import LayoutError, LayoutSpec, PromptLayout, SinkPolicy, layout_from_ids
from bsight.plugins.models.hf_vlm import HFVLMAdapter

IMAGE_PAD = "<|image_pad|>"


@dataclass
class QwenImageProcessor:
    """The image half of transformers' Qwen2-VL processor: image processor + tokenizer (see module doc)."""

    image_processor: Any
    tokenizer: Any

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def __call__(
        self, text: str, images: list[Any], image_token_id: int, add_special_tokens: bool
    ) -> dict[str, torch.Tensor]:
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"the prompt holds {len(pieces) - 1} {IMAGE_PAD} placeholders for {len(images)} images")
        out: dict[str, torch.Tensor] = {}
        if images:
            out.update(self.image_processor(images=images, return_tensors="pt"))
            counts = (out["image_grid_thw"].prod(-1) // self.merge_size**2).tolist()
            text = pieces[0] + "".join(IMAGE_PAD * n + rest for n, rest in zip(counts, pieces[1:]))
        enc = self.tokenizer([text], add_special_tokens=add_special_tokens, return_tensors="pt")
        out.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        out["mm_token_type_ids"] = (enc["input_ids"] == image_token_id).to(torch.int32)
        return out


def qwen_layouts(
    input_ids: torch.Tensor,
    spec: LayoutSpec,
    config: PretrainedConfig,
    attention_mask: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
) -> list[PromptLayout]:
    """One layout per row. Grids are consumed in prompt order, images and videos separately, as the model
    does; each segment's pad count is checked against its grid, and videos split into one segment per frame."""
    merge = config.vision_config.spatial_merge_size
    image_id, video_id = config.image_token_id, config.video_token_id
    grids = {
        image_id: iter([] if image_grid_thw is None else image_grid_thw.tolist()),
        video_id: iter([] if video_grid_thw is None else video_grid_thw.tolist()),
    }
    ids = input_ids.cpu().numpy()
    mask = None if attention_mask is None else attention_mask.cpu().numpy()
    layouts = []
    for row in range(ids.shape[0]):
        valid = np.ones(ids.shape[1], bool) if mask is None else mask[row].astype(bool)
        starts = [int(p) for p in np.flatnonzero(np.isin(ids[row], spec.start_ids) & valid)]
        expected, splits = [], {}
        for i, p in enumerate(starts):
            kind = int(ids[row, p + 1]) if p + 1 < ids.shape[1] else -1
            if kind not in grids:
                raise LayoutError(
                    f"row {row}: the segment opened at position {p} holds token {kind}, neither image nor video pad"
                )
            grid = next(grids[kind], None)
            if grid is None:
                raise LayoutError(
                    f"row {row}: more {'video' if kind == video_id else 'image'} segments in the ids than grids"
                )
            t, hw = grid[0], grid[1] * grid[2] // merge**2
            expected.append(t * hw)
            if kind == video_id and t > 1:  # frames share the boundary tokens: first and last frame carry them
                splits[i] = [hw + 1] + [hw] * (t - 2) + [hw + 1]
        layouts.append(
            layout_from_ids(ids[row], spec, None if mask is None else mask[row], expected, splits or None, row=row)
        )
    for kind, rest in grids.items():
        if next(rest, None) is not None:
            raise LayoutError(f"more {'video' if kind == video_id else 'image'} grids than segments in the ids")
    return layouts


class Qwen2VL(HFVLMAdapter):
    name = "qwen2_vl"
    description = (
        "Qwen2-VL (transformers Qwen2VLForConditionalGeneration): causal, M-RoPE, sinks = first tokens of each image"
    )
    model_class = Qwen2VLForConditionalGeneration
    model_types = ("qwen2_vl",)
    image_placeholder = f"<|vision_start|>{IMAGE_PAD}<|vision_end|>"

    def load_processor(self, path: Path) -> QwenImageProcessor:
        image_processor = AutoImageProcessor.from_pretrained(
            path, trust_remote_code=False, **self.options.image_processor
        )
        return QwenImageProcessor(image_processor, AutoTokenizer.from_pretrained(path, trust_remote_code=False))

    def spec_from_config(self, config: PretrainedConfig, sinks: SinkPolicy) -> LayoutSpec:
        return LayoutSpec(
            start_ids=(config.vision_start_token_id,),
            end_ids=(config.vision_end_token_id,),
            inner_ids=(config.image_token_id, config.video_token_id),
            bidirectional=False,
            sinks=sinks,
        )

    def encode(self, text: str, images: list[Any], add_special_tokens: bool) -> dict[str, torch.Tensor]:
        return self.processor(text, images, self._require().config.image_token_id, add_special_tokens)

    def read_layouts(self, inputs: dict[str, torch.Tensor]) -> list[PromptLayout]:
        return qwen_layouts(
            inputs["input_ids"],
            self.layout_spec(),
            self._require().config,
            inputs.get("attention_mask"),
            inputs.get("image_grid_thw"),
            inputs.get("video_grid_thw"),
        )


class Qwen25VL(Qwen2VL):
    name = "qwen2_5_vl"
    description = (
        "Qwen2.5-VL (transformers Qwen2_5_VLForConditionalGeneration): causal, M-RoPE, sinks = first "
        "tokens of each image"
    )
    model_class = Qwen2_5_VLForConditionalGeneration
    model_types = ("qwen2_5_vl",)


@hookimpl
def bsight_model_adapters():
    return [Qwen2VL, Qwen25VL]
