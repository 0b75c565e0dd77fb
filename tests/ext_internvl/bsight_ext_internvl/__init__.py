"""Adapter ``internvl`` for transformers' InternVL (docs/adding-a-vlm.md, worked example).

InternVL writes each image as ``<img>`` + ``image_seq_length * num_patches`` ``<IMG_CONTEXT>`` tokens + ``</img>``;
``num_patches`` (tiles plus a thumbnail) comes from the image processor. Attention is causal, 1-D RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, InternVLForConditionalGeneration, PretrainedConfig
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # no torchvision needed

from bsight.harness.hookspecs import hookimpl
from bsight.kernels.sparsity.layout import LayoutSpec, PromptLayout, SinkPolicy, layouts_from_batch
from bsight.plugins.models.hf_vlm import HFVLMAdapter

START, END, CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


@dataclass
class InternVLImageProcessor:
    """The image half of transformers' InternVL processor (whose video processor needs torchvision): the
    checkpoint's image processor and tokenizer. ``tokenizer`` is what the adapter decodes and templates with."""

    image_processor: Any
    tokenizer: Any
    image_seq_length: int

    def __call__(self, text: str, images: list[Any], add_special_tokens: bool) -> dict[str, torch.Tensor]:
        pieces = text.split(CONTEXT)  # the chat template writes one CONTEXT per image
        if len(pieces) - 1 != len(images):
            raise ValueError(f"the prompt holds {len(pieces) - 1} {CONTEXT} placeholders for {len(images)} images")
        out: dict[str, torch.Tensor] = {}
        if images:
            processed = self.image_processor(images=images, return_tensors="pt")
            out["pixel_values"] = processed["pixel_values"]
            out["num_patches"] = processed["num_patches"]  # kept for the layout check, not passed to the model
            text = pieces[0] + "".join(
                f"{START}{CONTEXT * self.image_seq_length * int(n)}{END}{rest}"
                for n, rest in zip(processed["num_patches"], pieces[1:])
            )
        enc = self.tokenizer([text], add_special_tokens=add_special_tokens, return_tensors="pt")
        out.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out


class InternVL(HFVLMAdapter):
    name = "internvl"
    description = "InternVL (transformers InternVLForConditionalGeneration), from the bsight-ext-internvl package"
    model_class = InternVLForConditionalGeneration
    model_types = ("internvl",)
    image_placeholder = CONTEXT  # one image in a prompt without a chat template
    default_sinks = SinkPolicy(kind="fraction", fraction=0.01)
    layout_only_keys = ("num_patches",)  # read_layouts checks it; the model's forward does not take it

    @staticmethod
    def tiny_checkpoint(directory: Path) -> Path:
        """What ``bsight check-adapter internvl`` builds when given no checkpoint."""
        from bsight_ext_internvl.tiny import tiny_checkpoint

        return tiny_checkpoint(directory)

    def load_processor(self, path: Path) -> InternVLImageProcessor:
        image_processor = AutoImageProcessor.from_pretrained(path, **self.options.image_processor)
        tokenizer = AutoTokenizer.from_pretrained(path)
        seq = int(self._config_image_seq_length(path))
        return InternVLImageProcessor(image_processor, tokenizer, seq)

    @staticmethod
    def _config_image_seq_length(path: Path) -> int:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path).image_seq_length

    def spec_from_config(self, config: PretrainedConfig, sinks: SinkPolicy) -> LayoutSpec:
        # the config names only the context token; <img> and </img> are the tokenizer's
        tok = self.tokenizer
        return LayoutSpec(
            start_ids=(tok.convert_tokens_to_ids(START),),
            end_ids=(tok.convert_tokens_to_ids(END),),
            inner_ids=(int(config.image_token_id),),
            bidirectional=False,
            sinks=sinks,
        )

    def encode(self, text: str, images: list[Any], add_special_tokens: bool) -> dict[str, torch.Tensor]:
        return self.processor(text, images, add_special_tokens)

    def read_layouts(self, inputs: dict[str, torch.Tensor]) -> list[PromptLayout]:
        # every segment's length is checked against what the image processor produced (expected_inner)
        seq = int(self._require().config.image_seq_length)
        patches = iter([] if "num_patches" not in inputs else inputs["num_patches"].tolist())
        spec = self.layout_spec()
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        starts = ((ids == spec.start_ids[0]) & valid).sum(-1).tolist()
        expected = [[seq * int(next(patches)) for _ in range(n)] for n in starts]
        return layouts_from_batch(ids, spec, mask, expected_inner=expected)


@hookimpl
def bsight_model_adapters():
    return [InternVL]
