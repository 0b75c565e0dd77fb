"""Adapters ``qwen3_vl`` and ``qwen3_vl_moe``: transformers' Qwen3-VL classes (dense and MoE language towers).

Images keep Qwen2-VL's template: ``<|vision_start|>`` + ``t * h * w / merge**2`` pads + ``<|vision_end|>``, pad
count from the vision grid, M-RoPE from ``mm_token_type_ids`` (1 image, 2 video). Videos differ: transformers'
Qwen3-VL processor writes every temporal grid step as its own ``<t seconds><|vision_start|>`` + ``h * w /
merge**2`` video pads + ``<|vision_end|>``, and the model splits ``video_grid_thw`` into one grid per frame the
same way. So each frame is a segment with its own boundary tokens, and a video grid of ``t`` steps accounts for
the next ``t`` video segments (:func:`qwen3_layouts`).

The processor is composed exactly as for Qwen2-VL (the checkpoint's image processor + tokenizer; transformers'
processor insists on a video processor, which needs torchvision).
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

from bsight.harness.hookspecs import hookimpl
from bsight.kernels.sparsity.layout import LayoutSpec, PromptLayout
from bsight.plugins.models.qwen2_vl import Qwen2VL, qwen_layouts


def per_frame_grids(video_grid_thw: torch.Tensor | None) -> torch.Tensor | None:
    """``[videos, 3]`` grids as ``[frames, 3]`` with ``t = 1``: one grid per temporal step, in order (what
    transformers' Qwen3-VL / Qwen3.5 models do before matching grids to ``<|vision_start|>`` spans)."""
    if video_grid_thw is None:
        return None
    grids = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0).clone()
    grids[:, 0] = 1
    return grids


def qwen3_layouts(
    input_ids: torch.Tensor,
    spec: LayoutSpec,
    config: PretrainedConfig,
    attention_mask: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
) -> list[PromptLayout]:
    """One layout per row for the Qwen3 template: images as in Qwen2-VL, each video frame its own segment whose
    pad count is checked against its frame's grid."""
    return qwen_layouts(input_ids, spec, config, attention_mask, image_grid_thw, per_frame_grids(video_grid_thw))


class Qwen3VL(Qwen2VL):
    name = "qwen3_vl"
    description = (
        "Qwen3-VL (transformers Qwen3VLForConditionalGeneration): causal, M-RoPE, video frames as segments, "
        "sinks = first tokens of each image"
    )
    model_class = Qwen3VLForConditionalGeneration
    model_types = ("qwen3_vl",)

    def read_layouts(self, inputs: dict[str, torch.Tensor]) -> list[PromptLayout]:
        return qwen3_layouts(
            inputs["input_ids"],
            self.layout_spec(),
            self._require().config,
            inputs.get("attention_mask"),
            inputs.get("image_grid_thw"),
            inputs.get("video_grid_thw"),
        )


class Qwen3VLMoe(Qwen3VL):
    name = "qwen3_vl_moe"
    description = "Qwen3-VL-MoE (transformers Qwen3VLMoeForConditionalGeneration): as qwen3_vl, MoE language tower"
    model_class = Qwen3VLMoeForConditionalGeneration
    model_types = ("qwen3_vl_moe",)


@hookimpl
def bsight_model_adapters():
    return [Qwen3VL, Qwen3VLMoe]
