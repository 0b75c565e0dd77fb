"""Model adapter ``tiny-llama``: a transformers LlamaForCausalLM with random weights built from a config.

Its attention goes through bsight's attention bridge, so the active method really computes the prefill.
Random weights: answers mean nothing as accuracy, and ``ModelInfo.weights`` says so.
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import LlamaConfig, LlamaForCausalLM

from bsight.harness import attention_bridge
from bsight.harness.interfaces import (
    AttentionMethod,
    Generation,
    ImagePart,
    ModelAdapter,
    ModelInfo,
    PassagePart,
    Prepared,
    Sample,
    TextPart,
)
from bsight.kernels.sparsity.layout import LayoutSpec, SinkPolicy, layouts_from_batch

from . import tokenizer as tok


class TinyLlamaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    head_dim: int = Field(16, ge=4)
    image_grid: int = Field(3, ge=1, description="an image becomes grid x grid intensity tokens")
    sink_fraction: float = Field(0.25, gt=0, le=1)
    seed: int = 0


class TinyLlama(ModelAdapter):
    name = "tiny-llama"
    description = "Random-weight tiny Llama (transformers, built from a config) with a character tokenizer; for tests"
    Options = TinyLlamaOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.model: LlamaForCausalLM | None = None

    def load(self) -> None:
        o = self.options
        config = LlamaConfig(
            vocab_size=tok.VOCAB_SIZE,
            hidden_size=o.heads * o.head_dim,
            intermediate_size=2 * o.heads * o.head_dim,
            num_hidden_layers=o.layers,
            num_attention_heads=o.heads,
            num_key_value_heads=o.kv_heads,
            head_dim=o.head_dim,
            max_position_embeddings=4096,
            pad_token_id=tok.PAD,
            bos_token_id=tok.BOS,
            eos_token_id=tok.EOS,
            initializer_range=0.2,
        )
        torch.manual_seed(o.seed)
        self.model = LlamaForCausalLM._from_config(config, attn_implementation=attention_bridge.register()).eval()

    @property
    def info(self) -> ModelInfo:
        o = self.options
        return ModelInfo(
            model_id=f"bsight-tinyext/tiny-llama-L{o.layers}H{o.heads}",
            revision=f"seed{o.seed}",
            num_layers=o.layers,
            num_heads=o.heads,
            num_kv_heads=o.kv_heads,
            head_dim=o.head_dim,
            sliding_windows=[None] * o.layers,
            weights="random",
        )

    def layout_spec(self) -> LayoutSpec:
        return LayoutSpec(
            start_ids=(tok.IMG_START,), end_ids=(tok.IMG_END,), sinks=SinkPolicy(fraction=self.options.sink_fraction)
        )

    def prepare(self, sample: Sample, continuation: str | None = None) -> Prepared:
        """Character tokens of the prompt, ending with "Answer:" and the sample's answer prefix; ``continuation``
        (teacher forcing) appended after it."""
        ids = [tok.BOS]
        for part in sample.parts:
            if isinstance(part, ImagePart):
                ids += tok.encode_image(part.image, self.options.image_grid)
            elif isinstance(part, (TextPart, PassagePart)):
                ids += tok.encode_text(part.text)
        ids += tok.encode_text("\nAnswer:" + sample.answer_prefix)
        ids += tok.encode_text(continuation or "")
        input_ids = torch.tensor([ids])
        mask = torch.ones_like(input_ids)
        return Prepared(
            inputs={"input_ids": input_ids, "attention_mask": mask},
            layouts=layouts_from_batch(input_ids, self.layout_spec(), mask),
        )

    @torch.no_grad()
    def generate(self, prepared: Prepared, method: AttentionMethod, max_new_tokens: int) -> Generation:
        """Greedy decoding: the prefill under ``method``, the decode steps dense over the KV cache."""
        assert self.model is not None, "load() first"
        ids, mask = prepared.inputs["input_ids"], prepared.inputs["attention_mask"]
        t0 = time.perf_counter()
        with attention_bridge.active_method(method, prepared.layouts):
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=True)
        prefill_s = time.perf_counter() - t0
        new: list[int] = []
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        while True:
            new.append(int(nxt))
            if new[-1] == tok.EOS or len(new) >= max_new_tokens:
                break
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            out = self.model(input_ids=nxt, attention_mask=mask, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        return Generation(
            text=tok.decode(new), prompt_tokens=int(ids.shape[1]), prefill_s=prefill_s, total_s=time.perf_counter() - t0
        )

    @torch.no_grad()
    def logits(self, prepared: Prepared, method: AttentionMethod, last: int | None = None) -> torch.Tensor:
        assert self.model is not None, "load() first"
        with attention_bridge.active_method(method, prepared.layouts):
            return self.model(**prepared.inputs, logits_to_keep=last or 0).logits
