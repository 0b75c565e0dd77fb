"""Full-size VLM architectures with RANDOM weights, from the published config.json of each checkpoint.

    bsight random-model qwen2-vl-7b --out random-models/qwen2-vl-7b      # writes config.json + preprocessor config
    bsight random-model qwen2-vl-7b --tiny --out runs/models/tiny-qwen2-vl   # a tiny loadable checkpoint (CPU runs)

No trained weights can be downloaded on the machines this harness runs on, yet timing needs the real shapes
(hidden sizes, heads, layers, vision towers). So each architecture here is the upstream ``config.json``
(transcribed from the hub: Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct, google/gemma-3-4b-it) and its
image preprocessing. :func:`build` creates transformers' own model class from it with random weights directly on
the device; the checkpoint directory the command writes has no weights and its config says
``bsight_random_weights: true``, so nothing built here can pass for a trained model. Timings do not depend on
weight values; accuracy measured on these models is not accuracy (agreement with dense is a fidelity check of the
computation only).

``--tiny`` writes instead what the tests load: a tiny checkpoint of the architecture's family in the exact hub
on-disk schema (transformers' own class, 2 layers, seeded RANDOM weights, a byte-level tokenizer and a chat
template; :mod:`bsight.harness.adapter_kit.tiny_vlms`), which a config's model adapter loads like any local
checkpoint. It makes the VLM pipeline (characterization, head maps, tau sweeps) runnable end to end on a CPU; its
numbers exercise the pipeline and are never evidence about a trained model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RANDOM_WEIGHTS_KEY = "bsight_random_weights"  # the same flag the adapters read (plugins/models/hf_vlm.py)

_QWEN_COMMON: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
_QWEN_PREPROCESSOR: dict[str, Any] = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2-vl-7b": {
        "hub_id": "Qwen/Qwen2-VL-7B-Instruct",
        "adapter": "qwen2_vl",
        "config": {
            **_QWEN_COMMON,
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            "max_position_embeddings": 32768,
            "vision_config": {
                "depth": 32,
                "embed_dim": 1280,
                "mlp_ratio": 4,
                "num_heads": 16,
                "in_chans": 3,
                "hidden_size": 3584,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
        },
        "preprocessor": _QWEN_PREPROCESSOR,
    },
    "qwen2.5-vl-7b": {
        "hub_id": "Qwen/Qwen2.5-VL-7B-Instruct",
        "adapter": "qwen2_5_vl",
        "config": {
            **_QWEN_COMMON,
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "max_position_embeddings": 128000,
            "vision_config": {
                "depth": 32,
                "hidden_act": "silu",
                "hidden_size": 1280,
                "intermediate_size": 3420,
                "num_heads": 16,
                "in_chans": 3,
                "out_hidden_size": 3584,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "spatial_patch_size": 14,
                "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2,
                "temporal_patch_size": 2,
            },
        },
        "preprocessor": _QWEN_PREPROCESSOR,
    },
    "gemma-3-4b": {
        "hub_id": "google/gemma-3-4b-it",
        "adapter": "gemma3",
        "config": {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "boi_token_index": 255999,
            "eoi_token_index": 256000,
            "eos_token_id": [1, 106],
            "image_token_index": 262144,
            "initializer_range": 0.02,
            "mm_tokens_per_image": 256,
            "torch_dtype": "bfloat16",
            "text_config": {
                "model_type": "gemma3_text",
                "hidden_size": 2560,
                "intermediate_size": 10240,
                "num_hidden_layers": 34,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "head_dim": 256,
                "query_pre_attn_scalar": 256,
                "sliding_window": 1024,
                "sliding_window_pattern": 6,
                "rope_theta": 1000000.0,
                "rope_local_base_freq": 10000.0,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "max_position_embeddings": 131072,
                "vocab_size": 262208,
                "rms_norm_eps": 1e-06,
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": 1152,
                "image_size": 896,
                "intermediate_size": 4304,
                "num_attention_heads": 16,
                "num_hidden_layers": 27,
                "patch_size": 14,
                "vision_use_head": False,
            },
        },
        "preprocessor": {
            "image_size": 896,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "rescale_factor": 0.00392156862745098,
        },
    },
}
# tiny variants: same classes and code paths, for CPU tests of the benchmark machinery (never timed)
TINY: dict[str, dict[str, Any]] = {
    "qwen2-vl-7b": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 152064,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": 64},
    },
    "qwen2.5-vl-7b": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 2,
            "fullatt_block_indexes": [1],
        },
    },
    "gemma-3-4b": {
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 64,
        },
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
}
WEIGHTS_LABEL = "RANDOM weights (architecture from the published config.json; NOT a trained model)"


def spec(arch: str) -> dict[str, Any]:
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "rope_scaling" else v
        )
    return out


def config_dict(arch: str, num_layers: int | None = None, tiny: bool = False) -> dict[str, Any]:
    """The published config (``num_layers`` cuts the language tower, for quick checks; say so where it is used;
    ``tiny``: the CPU-test variant, :data:`TINY`)."""
    cfg = json.loads(json.dumps(spec(arch)["config"]))
    if tiny:
        cfg = _merge(cfg, TINY[arch])
    if num_layers is not None:
        (cfg.get("text_config") or cfg)["num_hidden_layers"] = num_layers
    return cfg


@contextmanager
def _default_dtype(dtype) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(arch: str, device, dtype, seed: int = 0, num_layers: int | None = None, tiny: bool = False):
    """transformers' own model class for ``arch`` with random weights made on ``device`` in ``dtype``."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    torch.manual_seed(seed)
    cfg_dict = {**config_dict(arch, num_layers, tiny), "torch_dtype": str(dtype).removeprefix("torch.")}
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    with _default_dtype(dtype), torch.device(device):
        model = AutoModelForImageTextToText.from_config(config)
    if {p.dtype for p in model.parameters()} != {dtype}:
        model = model.to(dtype)
    return model.eval()


def write_checkpoint(arch: str, out: Path) -> Path:
    """A weightless checkpoint directory: the published config (flagged random) and image preprocessing."""
    s = spec(arch)
    out.mkdir(parents=True, exist_ok=True)
    config = {**config_dict(arch), RANDOM_WEIGHTS_KEY: True, "bsight_source": f"published config.json of {s['hub_id']}"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(s["preprocessor"], indent=2) + "\n")
    (out / "README.md").write_text(
        f"# {arch}: {WEIGHTS_LABEL}\n\nArchitecture of {s['hub_id']} (its config.json). No weights are stored: "
        "`bsight.harness.random_models.build` creates them at random on the device. Timing only; never accuracy.\n"
    )
    return out


def write_tiny_checkpoint(arch: str, out: Path, seed: int = 0) -> Path:
    """A tiny loadable checkpoint of ``arch``'s family (the tests' builder of its adapter, RANDOM weights seeded by
    ``seed``), with a README saying so."""
    from bsight.harness.adapter_kit.tiny_vlms import BUILDERS

    s = spec(arch)
    BUILDERS[s["adapter"]](out, seed=seed)
    (out / "README.md").write_text(
        f"# tiny {s['adapter']} checkpoint: RANDOM weights (seed {seed}); NOT a trained model\n\n"
        f"transformers' own class of the {s['hub_id']} family at a tiny size (bsight.harness.adapter_kit.tiny_vlms), "
        "written by `bsight random-model --tiny` for CPU runs of the pipeline. Its outputs exercise the pipeline; "
        "they are never accuracy or evidence about a trained model.\n"
    )
    return out


def add_parser(sub) -> None:
    """Register ``bsight random-model`` (called from :mod:`bsight.harness.cli`)."""
    p = sub.add_parser(
        "random-model",
        help="write a full-size VLM architecture (published config.json) for random-weight timing runs",
    )
    p.add_argument("arch", choices=sorted(ARCHITECTURES) + ["all"])
    p.add_argument("--out", required=True, help="directory (with 'all': one subdirectory per architecture)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="instead a tiny loadable checkpoint of the architecture's family (2 layers, RANDOM weights, byte-level "
        "tokenizer, chat template: the tests' checkpoints) for CPU runs of the pipeline, e.g. transfer_vlm.yaml",
    )
    p.add_argument("--seed", type=int, default=0, help="with --tiny: the seed of its random weights (default 0)")
    p.set_defaults(func=cmd_random_model)


def cmd_random_model(args: argparse.Namespace) -> int:
    archs = sorted(ARCHITECTURES) if args.arch == "all" else [args.arch]
    for arch in archs:
        out = Path(args.out) / arch if args.arch == "all" else Path(args.out)
        if args.tiny:
            write_tiny_checkpoint(arch, out, args.seed)
            print(f"{arch}: {out} (tiny {spec(arch)['adapter']} checkpoint, RANDOM weights, seed {args.seed})")
        else:
            write_checkpoint(arch, out)
            print(f"{arch}: {out} ({WEIGHTS_LABEL})")
    return 0
