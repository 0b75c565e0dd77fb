"""Adapters ``qwen3_5`` and ``qwen3_5_moe``: transformers' Qwen3.5 classes, hybrid language towers.

Qwen3.5's text config lists ``layer_types``: most layers are ``linear_attention`` (Gated DeltaNet, a linear
attention with a recurrent state, which never calls the attention interface) and every ``full_attention_interval``-th
layer is softmax attention (with an output gate and partial rotary embeddings). bsight reads the kinds from
``layer_types`` (:func:`bsight.plugins.models.hf_vlm.text_layer_kinds`): methods, characterization and FLOPs see
the softmax layers only, and the linear ones run untouched.

The prompt template, video frames and processor are Qwen3-VL's (:mod:`bsight.plugins.models.qwen3_vl`).
"""

from __future__ import annotations

from transformers import Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration

from bsight.harness.hookspecs import hookimpl
from bsight.plugins.models.qwen3_vl import Qwen3VL


class Qwen35(Qwen3VL):
    name = "qwen3_5"
    description = (
        "Qwen3.5 (transformers Qwen3_5ForConditionalGeneration): hybrid, Gated DeltaNet linear layers left untouched; "
        "causal, M-RoPE, sinks = first tokens of each image"
    )
    model_class = Qwen3_5ForConditionalGeneration
    model_types = ("qwen3_5",)


class Qwen35Moe(Qwen35):
    name = "qwen3_5_moe"
    description = "Qwen3.5-MoE (transformers Qwen3_5MoeForConditionalGeneration): as qwen3_5, MoE language tower"
    model_class = Qwen3_5MoeForConditionalGeneration
    model_types = ("qwen3_5_moe",)


@hookimpl
def bsight_model_adapters():
    return [Qwen35, Qwen35Moe]
