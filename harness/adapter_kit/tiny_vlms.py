"""Tiny random-weight checkpoints of the real VLM classes, written in the exact on-disk schema.

Each builder saves what a hub snapshot holds - ``config.json``, ``model.safetensors``,
``generation_config.json``, tokenizer files, image processor / processor config, chat template - into a
directory, so tests load through the adapters' real loader path. The tokenizers are built locally with the
``tokenizers`` library (byte-level vocabularies plus each model's special tokens, with small ids that the
config then names); the chat templates follow the shape of the released ones (user turn, image placeholder
per image item, generation prompt). Weights are random (seeded) and the config says so
(``bsight_random_weights``), so nothing built here can pass for a trained model.

Families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5 and Qwen3.5-MoE (hybrid: Gated DeltaNet linear-attention layers
between full-attention ones) through :func:`qwen_checkpoint`; Gemma 3 (:func:`gemma_checkpoint`); Gemma 4
(:func:`gemma4_checkpoint`: sliding and full layers of different head dims, KV sharing, bidirectional vision
tokens in sliding layers). :data:`BUILDERS` maps each ``model_type`` to a builder (``bsight check-adapter``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    GemmaTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

from bsight.plugins.models.hf_vlm import RANDOM_WEIGHTS_KEY

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.1,
    rms_norm_eps=1e-6,
)


def qwen_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE over the 256 byte symbols, plus the Qwen-VL special tokens (ids 256...)."""
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({s: len(vocab) + i for i, s in enumerate(QWEN_SPECIALS)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    tok.chat_template = QWEN_TEMPLATE
    return tok


QWEN35_LAYERS = ("linear_attention", "full_attention", "linear_attention", "full_attention")


def qwen_checkpoint(
    directory: Path,
    kind: str = "qwen2_vl",
    seed: int = 0,
    num_layers: int = 2,
    layer_types: tuple[str, ...] | None = None,
) -> Path:
    """A tiny Qwen2-VL (``kind="qwen2_vl"``), Qwen2.5-VL (``"qwen2_5_vl"``), Qwen3-VL (``"qwen3_vl"``,
    ``"qwen3_vl_moe"``), Qwen3.5
    (``"qwen3_5"``) or Qwen3.5-MoE (``"qwen3_5_moe"``) checkpoint in ``directory``. Qwen3.5 models are hybrid:
    ``layer_types`` (default :data:`QWEN35_LAYERS`) mixes ``linear_attention`` (Gated DeltaNet) and
    ``full_attention`` layers, with partial rotary embeddings (a quarter of each head)."""
    tok = qwen_tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    special = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    text = dict(
        TEXT,
        **special,
        num_hidden_layers=num_layers,
        vocab_size=len(tok),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    common = dict(
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if kind == "qwen2_vl":
        vision = dict(
            depth=1,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        config, cls = Qwen2VLConfig(vision_config=vision, **common), Qwen2VLForConditionalGeneration
    elif kind in ("qwen3_vl", "qwen3_vl_moe"):
        text["head_dim"] = 16
        text["rope_parameters"] = dict(text["rope_parameters"], mrope_interleaved=True)
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=16,
            deepstack_visual_indexes=[0],
        )
        if kind == "qwen3_vl":
            config, cls = Qwen3VLConfig(vision_config=vision, **common), Qwen3VLForConditionalGeneration
        else:
            text.update(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
            config, cls = Qwen3VLMoeConfig(vision_config=vision, **common), Qwen3VLMoeForConditionalGeneration
    elif kind in ("qwen3_5", "qwen3_5_moe"):
        types = list(layer_types or QWEN35_LAYERS)
        text.update(
            head_dim=16,
            num_hidden_layers=len(types),
            layer_types=types,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            # partial rotary: 16 * 0.25 = 4 rotary dims, so the M-RoPE sections cover 2 frequencies
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [1, 1, 0],
                "mrope_interleaved": True,
                "partial_rotary_factor": 0.25,
            },
        )
        vision = dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=16,
        )
        if kind == "qwen3_5":
            config, cls = Qwen3_5Config(vision_config=vision, **common), Qwen3_5ForConditionalGeneration
        else:
            text.pop("intermediate_size")
            text.update(
                moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2
            )
            config, cls = Qwen3_5MoeConfig(vision_config=vision, **common), Qwen3_5MoeForConditionalGeneration
    elif kind == "qwen2_5_vl":
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        )
        config, cls = Qwen2_5_VLConfig(vision_config=vision, **common), Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(f"unknown kind {kind!r}")
    patch = config.vision_config.patch_size
    factor = 2 * patch
    processor = Qwen2VLImageProcessor(
        min_pixels=factor * factor,
        max_pixels=factor * factor * 16,
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
    )
    return _save(directory, config, cls, seed, special, tok, processor)


def gemma_tokenizer() -> GemmaTokenizer:
    """Byte-fallback BPE (bytes as ``<0xNN>``, spaces as ``\u2581``) plus the Gemma 3 special tokens."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({f"<0x{b:02X}>": 5 + b for b in range(256)})
    vocab["\u2581"] = len(vocab)  # the space symbol, so that decoding restores spaces
    vocab.update({s: len(vocab) + i for i, s in enumerate(GEMMA_SPECIALS)})
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=[],
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tok.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}, replace_extra_special_tokens=False
    )
    return tok


def gemma_checkpoint(
    directory: Path,
    seed: int = 0,
    sliding_window: int = 6,
    layer_types: tuple[str, ...] = ("sliding_attention", "full_attention", "sliding_attention"),
) -> Path:
    """A tiny Gemma 3 checkpoint: 16 soft tokens per image (longer than the default sliding window of 6)."""
    tok = gemma_tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in GEMMA_SPECIALS}
    text = dict(
        TEXT,
        num_hidden_layers=len(layer_types),
        layer_types=list(layer_types),
        sliding_window=sliding_window,
        head_dim=16,
        query_pre_attn_scalar=16,
        vocab_size=len(tok),
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    special = dict(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, ids["<end_of_turn>"]],
        pad_token_id=tok.pad_token_id,
    )
    config = Gemma3Config(
        text_config=dict(text, **special),
        vision_config=vision,
        mm_tokens_per_image=16,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    image_processor = Gemma3ImageProcessor(size={"height": 32, "width": 32})  # PIL backend when torchvision is absent
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_length=16, chat_template=GEMMA_TEMPLATE
    )
    return _save(directory, config, Gemma3ForConditionalGeneration, seed, special, processor=processor)


GEMMA4_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<|image>", "<image|>", "<|image|>", "<|video|>", "<|audio|>"]
GEMMA4_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA4_LAYERS = ("sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention")


def gemma4_tokenizer() -> GemmaTokenizer:
    """Byte-fallback BPE plus Gemma 4 style special tokens: ``<|image>`` / ``<image|>`` open and close an image,
    ``<|image|>`` is one soft token (and the chat template's placeholder), ``<|video|>`` a video soft token."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({f"<0x{b:02X}>": 5 + b for b in range(256)})
    vocab["\u2581"] = len(vocab)
    vocab.update({s: len(vocab) + i for i, s in enumerate(GEMMA4_SPECIALS)})
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=[],
        extra_special_tokens={"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>"},
    )
    tok.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>", "<|video|>", "<|audio|>"]},
        replace_extra_special_tokens=False,
    )
    tok.chat_template = GEMMA4_TEMPLATE
    return tok


def gemma4_checkpoint(
    directory: Path,
    seed: int = 0,
    sliding_window: int = 8,
    layer_types: tuple[str, ...] = GEMMA4_LAYERS,
    num_kv_shared_layers: int = 2,
    bidirectional: str | None = "vision",
) -> Path:
    """A tiny Gemma 4 checkpoint: sliding layers (head dim 16, window 8 < an image's soft tokens) and full layers
    (head dim 32, as ``global_head_dim``), the last ``num_kv_shared_layers`` layers reusing the KV of the last
    unshared layer of their type, and vision tokens bidirectional in sliding layers (``bidirectional="vision"``).
    Images get up to 70 soft tokens (4-pixel patches pooled 2 x 2)."""
    tok = gemma4_tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in GEMMA4_SPECIALS}
    special = dict(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, ids["<end_of_turn>"]],
        pad_token_id=tok.pad_token_id,
    )
    text = dict(
        TEXT,
        **special,
        head_dim=16,
        global_head_dim=32,
        num_hidden_layers=len(layer_types),
        layer_types=list(layer_types),
        sliding_window=sliding_window,
        num_kv_shared_layers=num_kv_shared_layers,
        use_bidirectional_attention=bidirectional,
        hidden_size_per_layer_input=8,
        vocab_size=len(tok),
        vocab_size_per_layer_input=len(tok),
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
        },
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=4,
        pooling_kernel_size=2,
        position_embedding_size=64,
    )
    config = Gemma4Config(
        text_config=text,
        vision_config=vision,
        boi_token_id=ids["<|image>"],
        eoi_token_id=ids["<image|>"],
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        audio_token_id=ids["<|audio|>"],
    )
    image_processor = Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=70, pooling_kernel_size=2)
    return _save(directory, config, Gemma4ForConditionalGeneration, seed, special, tok, image_processor)


def byte_level_tokenizer(specials: list[str], eos: str, pad: str, chat_template: str | None = None) -> Qwen2Tokenizer:
    """A tokenizer for a new family's tiny checkpoint: byte-level BPE over the 256 byte symbols (no merges) plus
    ``specials`` (ids 256, 257, ... in order), saved as ``Qwen2Tokenizer`` files that ``AutoTokenizer`` loads."""
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({s: len(vocab) + i for i, s in enumerate(specials)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token=eos, pad_token=pad)
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def save_checkpoint(
    directory: Path, config, model_class, *parts, seed: int = 0, generation: dict | None = None
) -> Path:
    """Write a random-weight checkpoint as a hub snapshot holds it: ``config.json`` (flagged
    ``bsight_random_weights``), ``model.safetensors``, ``generation_config.json`` (``generation`` keys, e.g. the
    special token ids) and each of ``parts`` (tokenizer, image processor, processor) saved beside them."""
    parts = list(parts) + [None] * (3 - len(parts))
    return _save(directory, config, model_class, seed, generation or {}, *parts[:3])


def _save(
    directory: Path, config, cls, seed: int, special: dict, tokenizer=None, image_processor=None, processor=None
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    setattr(config, RANDOM_WEIGHTS_KEY, True)
    torch.manual_seed(seed)
    model = cls(config).eval()
    model.generation_config.update(**special)
    model.save_pretrained(directory)
    for part in (tokenizer, image_processor, processor):
        if part is not None:
            part.save_pretrained(directory)
    return directory


BUILDERS = {
    "qwen2_vl": lambda d, seed=0: qwen_checkpoint(d, "qwen2_vl", seed),
    "qwen2_5_vl": lambda d, seed=0: qwen_checkpoint(d, "qwen2_5_vl", seed),
    "qwen3_vl": lambda d, seed=0: qwen_checkpoint(d, "qwen3_vl", seed),
    "qwen3_vl_moe": lambda d, seed=0: qwen_checkpoint(d, "qwen3_vl_moe", seed),
    "qwen3_5": lambda d, seed=0: qwen_checkpoint(d, "qwen3_5", seed),
    "qwen3_5_moe": lambda d, seed=0: qwen_checkpoint(d, "qwen3_5_moe", seed),
    "gemma3": lambda d, seed=0: gemma_checkpoint(d, seed),
    "gemma4": lambda d, seed=0: gemma4_checkpoint(d, seed),
}
"""``model_type`` -> ``builder(directory, seed=0) -> directory`` for every family this kit knows."""
