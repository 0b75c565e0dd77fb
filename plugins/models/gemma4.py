"""Adapter ``gemma4``: transformers' Gemma 4 (``Gemma4ForConditionalGeneration``), image and video prompts.

What transformers' Gemma 4 code does, and what the adapter makes of it:

* **Layout.** The processor replaces each image placeholder (the tokenizer's ``image_token``) with
  ``boi`` + ``n`` image soft tokens + ``eoi``, where ``n`` depends on the image's size (aspect-preserving resize
  to at most ``max_soft_tokens``): the count is read from ``image_position_ids`` (non-padding patches /
  ``pooling_kernel_size**2``, as the model splits its features). A video is ``"<timestamp> " boi`` + ``n`` video
  soft tokens + ``eoi`` per frame: each frame is its own segment, checked against ``video_position_ids``.
* **Bidirectional images, sliding layers only.** With ``text_config.use_bidirectional_attention == "vision"``
  and ``mm_token_type_ids`` given, the model's mask lets each run of vision soft tokens (boundary tokens
  excluded) attend to itself bidirectionally in ``sliding_attention`` layers - AND(window, OR(causal, block)) -
  while ``full_attention`` layers stay causal. The adapter sets ``ModelInfo.bidirectional_layers`` from
  ``layer_types``, and the bridge gives full layers a causal layout. ``"all"`` (every token bidirectional) is
  refused: that is an encoder, not a causal prefill.
* **Per-layer shapes.** Full-attention layers are wider (``global_head_dim``) and may have other KV head counts
  (``per_layer_config``): ``ModelInfo.head_dims`` records the head dim of every layer for FLOPs.
* **KV sharing.** ``num_kv_shared_layers``: the last that many layers have no K/V projections and read the keys
  and values that the last unshared layer *of the same type* stored (``kv_sharing_modes``: ``store`` /
  ``reuse``). Their queries are their own and they still compute softmax attention, so for head maps they are
  ordinary layers with their own categories (layer kind ``shared_kv``): characterized, sparsified and counted.
  Only their KV cache is not theirs, which BlindSight (a prefill method) does not touch. Under an integer
  ``logits_to_keep`` (generation) transformers runs these layers on the last positions only: those text queries
  get dense attention with the model's mask from the bridge, and :meth:`Gemma4.prefill` keeps every query.
* **Scale.** Queries and keys are RMS-normed and the attention scale is 1.0; the bridge passes it through.

Sinks sit at fixed offsets inside each image (found by characterization); the default is the start token alone,
as for Gemma 3. The processor is composed from the checkpoint's image processor and tokenizer (transformers'
Gemma 4 processor also builds a video processor and an audio feature extractor, which need torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoTokenizer, Gemma4ForConditionalGeneration, PretrainedConfig
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import ModelInfo
from bsight.kernels.sparsity.layout import LayoutError, LayoutSpec, PromptLayout, SinkPolicy, layouts_from_batch
from bsight.plugins.models.hf_vlm import HFVLMAdapter

_MODEL_KEYS = (
    "pixel_values",
    "image_position_ids",
    "pixel_values_videos",
    "video_position_ids",
    "num_frames_per_video",
)


@dataclass
class Gemma4ImageProcessor:
    """The image half of transformers' Gemma 4 processor: each ``image_token`` placeholder in the text becomes
    ``boi`` + soft tokens + ``eoi``, as many soft tokens as the image processor gives that image."""

    image_processor: Any
    tokenizer: Any

    def __call__(
        self, text: str, images: list[Any], token_ids: dict[str, int], add_special_tokens: bool
    ) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        pieces = text.split(tok.image_token)
        if len(pieces) - 1 != len(images):
            raise ValueError(
                f"the prompt holds {len(pieces) - 1} {tok.image_token} placeholders for {len(images)} images"
            )
        out: dict[str, torch.Tensor] = {}
        if images:
            processed = self.image_processor(images=images, return_tensors="pt")
            counts = [int(n) for n in processed.pop("num_soft_tokens_per_image")]
            out.update(processed)
            text = pieces[0] + "".join(
                f"{tok.boi_token}{tok.image_token * n}{tok.eoi_token}{rest}" for n, rest in zip(counts, pieces[1:])
            )
        enc = tok([text], add_special_tokens=add_special_tokens, return_tensors="pt")
        ids = enc["input_ids"]
        out.update(input_ids=ids, attention_mask=enc["attention_mask"])
        out["mm_token_type_ids"] = (ids == token_ids["image"]).long() + 2 * (ids == token_ids["video"]).long()
        return out


def soft_token_counts(position_ids: torch.Tensor | None, pooling_kernel_size: int) -> list[int]:
    """Soft tokens per image (or video frame) as the model splits its features: non-padding patches / k**2."""
    if position_ids is None:
        return []
    return ((position_ids != -1).all(dim=-1).sum(dim=-1) // pooling_kernel_size**2).tolist()


def bidirectional_mode(config: PretrainedConfig) -> Literal["vision"] | None:
    mode = getattr(config.get_text_config(), "use_bidirectional_attention", None)
    if mode not in (None, "vision"):
        raise ValueError(
            f"Gemma 4 with use_bidirectional_attention={mode!r} attends bidirectionally over every token (an encoder); "
            "bsight's methods are for causal prefill"
        )
    return mode


class Gemma4(HFVLMAdapter):
    name = "gemma4"
    description = (
        "Gemma 4 (transformers Gemma4ForConditionalGeneration): images bidirectional in sliding layers, wide full "
        "layers, KV-shared layers characterized as attention; sinks at fixed offsets"
    )
    model_class = Gemma4ForConditionalGeneration
    model_types = ("gemma4",)
    image_placeholder = "<|image|>"  # used only without a chat template; encode() splits on the tokenizer's own
    default_sinks = SinkPolicy(kind="offsets", offsets=(0,))

    def load_processor(self, path: Path) -> Gemma4ImageProcessor:
        image_processor = AutoImageProcessor.from_pretrained(
            path, trust_remote_code=False, **self.options.image_processor
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        for attr in ("boi_token", "eoi_token", "image_token"):
            if not getattr(tokenizer, attr, None):
                raise ValueError(f"the Gemma 4 tokenizer in {path} does not name its {attr}")
        return Gemma4ImageProcessor(image_processor, tokenizer)

    def check_config(self, config: PretrainedConfig, where: str) -> None:
        super().check_config(config, where)
        bidirectional_mode(config)

    def _model_info(self, config, model_id, revision, weights) -> ModelInfo:  # noqa: D102 - see module doc
        info = super()._model_info(config, model_id, revision, weights)
        text = config.get_text_config()
        if bidirectional_mode(config) != "vision":
            return info
        bidir = [t == "sliding_attention" for t in text.layer_types]
        return info.model_copy(update={"bidirectional_layers": bidir if not all(bidir) else []})

    def spec_from_config(self, config: PretrainedConfig, sinks: SinkPolicy) -> LayoutSpec:
        return LayoutSpec(
            start_ids=(int(config.boi_token_id),),
            end_ids=(int(config.eoi_token_id),),
            inner_ids=(int(config.image_token_id), int(config.video_token_id)),
            bidirectional=bidirectional_mode(config) == "vision",
            sinks=sinks,
        )

    def encode(self, text: str, images: list[Any], add_special_tokens: bool) -> dict[str, torch.Tensor]:
        config = self._require().config
        ids = {"image": int(config.image_token_id), "video": int(config.video_token_id)}
        return self.processor(text, images, ids, add_special_tokens)

    def read_layouts(self, inputs: dict[str, torch.Tensor]) -> list[PromptLayout]:
        """Segments from the ids; each image's (and video frame's) soft-token count checked against the
        processor's patch positions. Images and video frames are consumed in prompt order, each from its list."""
        config = self._require().config
        spec = self.layout_spec()
        k = int(config.vision_config.pooling_kernel_size)
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        counts = {
            int(config.image_token_id): iter(soft_token_counts(inputs.get("image_position_ids"), k)),
            int(config.video_token_id): iter(soft_token_counts(inputs.get("video_position_ids"), k)),
        }
        valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        expected = []
        for row in range(ids.shape[0]):
            starts = torch.nonzero((ids[row] == spec.start_ids[0]) & valid[row]).flatten().tolist()
            row_expected = []
            for p in starts:
                kind = int(ids[row, p + 1]) if p + 1 < ids.shape[1] else -1
                if kind not in counts:
                    raise LayoutError(
                        f"row {row}: the segment opened at {p} holds token {kind}, no image or video token"
                    )
                n = next(counts[kind], None)
                if n is None:
                    raise LayoutError(f"row {row}: more image/video segments in the ids than the processor encoded")
                row_expected.append(n)
            expected.append(row_expected)
        for rest in counts.values():
            if next(rest, None) is not None:
                raise LayoutError("the processor encoded more images/video frames than the ids hold segments")
        return layouts_from_batch(ids, spec, mask, expected_inner=expected)

    def prefill(self, prepared, method) -> None:
        """The prefill with every query through every layer. transformers' Gemma 4 runs its KV-shared layers on the
        last ``logits_to_keep`` positions only when that is an int (what generation passes; the bridge then gives
        those few queries the model's own mask); characterization and pair counting need all queries of those
        layers, so the LM head's position is passed as an index tensor, which keeps the full sequence."""
        last = torch.tensor([prepared.inputs["input_ids"].shape[1] - 1], device=self._require().device)
        self.forward(prepared, method, use_cache=False, logits_to_keep=last)

    def prepared(self, inputs: dict[str, torch.Tensor]):
        """Only what the model's forward takes (plus ids, masks and token types)."""
        keep = {"input_ids", "attention_mask", "mm_token_type_ids", *_MODEL_KEYS}
        return super().prepared({k: v for k, v in inputs.items() if k in keep})


@hookimpl
def bsight_model_adapters():
    return [Gemma4]
