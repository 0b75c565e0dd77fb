"""A tiny random-weight InternVL checkpoint in the hub's on-disk schema (docs/adding-a-vlm.md)."""

from __future__ import annotations

from pathlib import Path

from transformers import InternVLConfig, InternVLForConditionalGeneration
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from bsight.harness.adapter_kit.tiny_vlms import byte_level_tokenizer, save_checkpoint

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """32 x 32 tiles of 8 x 8 patches, pixel-shuffled by 0.5: 4 context tokens per tile, up to 4 tiles + thumbnail."""
    tok = byte_level_tokenizer(SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=TEMPLATE)
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    special = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            model_type="qwen2",
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tok),
            **special,
        ),
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=4,  # (32 / 8)**2 patches * 0.5**2
        downsample_ratio=0.5,
    )
    images = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4)
    return save_checkpoint(
        directory, config, InternVLForConditionalGeneration, tok, images, seed=seed, generation=special
    )
