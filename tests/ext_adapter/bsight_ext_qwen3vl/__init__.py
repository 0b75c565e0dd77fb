"""Adapter ``qwen3_vl`` for transformers' Qwen3-VL, living outside bsight (see docs/adding-a-vlm.md).

Qwen3-VL keeps Qwen2-VL's prompt template (``<|vision_start|>`` + pads + ``<|vision_end|>``, pad count from
the vision grid, M-RoPE from ``mm_token_type_ids``), so the adapter is the Qwen2-VL one with another model
class; its layout, sinks and processor handling are inherited.
"""

from __future__ import annotations

from transformers import Qwen3VLForConditionalGeneration

from bsight.harness.hookspecs import hookimpl
from bsight.plugins.models.qwen2_vl import Qwen2VL


class Qwen3VL(Qwen2VL):
    name = "qwen3_vl"
    description = "Qwen3-VL (transformers Qwen3VLForConditionalGeneration), from the bsight-ext-qwen3vl package"
    model_class = Qwen3VLForConditionalGeneration
    model_types = ("qwen3_vl",)


@hookimpl
def bsight_model_adapters():
    return [Qwen3VL]
