"""Shared base of the adapters for transformers' own VLM classes (Qwen2-VL, Qwen2.5-VL, Gemma 3, ...).

A concrete adapter names its model class and model types and supplies three small things: how to load its
processor, its :class:`LayoutSpec` (special-token ids from the config, sink policy, bidirectional images),
and how to read one :class:`PromptLayout` per batch row from the processor's outputs. Everything else -
resolving a checkpoint (local directory or hub id, offline-aware), loading with the language tower on
attention implementation ``"bsight"`` and the vision tower on ``"sdpa"``, building prompts from interleaved
parts through the checkpoint's chat template, prefill logits and greedy generation under a chosen method -
lives here. ``trust_remote_code`` is never enabled: only transformers' own classes are used.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoConfig, LogitsProcessor, LogitsProcessorList, PretrainedConfig, PreTrainedModel

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
    Sampling,
    TextPart,
)
from bsight.kernels.dispatch import sync
from bsight.kernels.sparsity.layerkinds import kinds_from_layer_types, require_softmax
from bsight.kernels.sparsity.layout import LayoutSpec, PromptLayout, SinkPolicy

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_KEY = "bsight_random_weights"  # config.json flag set on checkpoints with random weights
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]


class HFVLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="local checkpoint directory, or a hub id such as Qwen/Qwen2-VL-7B-Instruct")
    revision: str | None = None  # hub revision (branch, tag or commit)
    model_id: str | None = (
        None  # id recorded in results and matched with head maps; default: the hub id or directory name
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # "auto": the checkpoint's own dtype
    device: str = "auto"  # "auto": cuda if available, else cpu
    device_map: str | dict[str, int | str] | None = None  # "auto": spread over every visible GPU (one process only)
    sinks: SinkPolicy | None = None  # overrides the adapter's default sink policy
    vision_attn: Literal["sdpa", "eager"] = "sdpa"  # attention implementation of the vision tower
    offline: bool | None = None  # None: follow HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE
    cache_dir: str | None = None  # hub cache; default: huggingface_hub's
    weights: Literal["auto", "trained", "random"] = "auto"  # "auto": random iff config.json sets bsight_random_weights
    image_processor: dict[str, Any] = {}  # overrides for the image processor (e.g. max_pixels for Qwen)


def is_offline(explicit: bool | None = None) -> bool:
    """HF_HUB_OFFLINE semantics, read at call time (huggingface_hub reads its constant at import)."""
    if explicit is not None:
        return explicit
    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    if env:
        return env in {"1", "ON", "YES", "TRUE"}
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(checkpoint: str) -> bool:
    return checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") != 1 or "\\" in checkpoint


def resolve_checkpoint(
    checkpoint: str, revision: str | None = None, offline: bool | None = None, cache_dir: str | None = None
) -> tuple[Path, str]:
    """The local directory of a checkpoint given as a directory or a hub id, and its revision (the snapshot's
    commit for hub ids). A missing checkpoint is a FileNotFoundError naming everything that was looked for."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"checkpoint directory {path} has no config.json")
        return path, revision or ""
    if _looks_like_path(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r}: no such directory ({path.resolve()})")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = is_offline(offline)
    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        snap = Path(
            snapshot_download(
                checkpoint, revision=revision, cache_dir=cache, local_files_only=offline, allow_patterns=_HUB_FILES
            )
        )
    except (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        GatedRepoError,
        HFValidationError,
    ) as e:
        where = f"the hub cache {cache}" + (
            " (offline: HF_HUB_OFFLINE is set, nothing is downloaded)" if offline else " and the hub"
        )
        at = f" at revision {revision!r}" if revision else ""
        raise FileNotFoundError(
            f"checkpoint {checkpoint!r}{at} not found: no local directory {path.resolve()}, and no snapshot in {where} "
            f"({type(e).__name__})"
        ) from None
    if not (snap / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint!r}: the snapshot {snap} has no config.json")
    return snap, snap.name


def read_chat_template(path: Path, *holders: Any) -> str | None:
    """The checkpoint's chat template: from the loaded processor/tokenizer, else its template files."""
    for obj in holders:
        template = getattr(obj, "chat_template", None)
        if isinstance(template, str) and template:
            return template
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None


def sample_content(sample: Sample) -> tuple[list[dict[str, str]], list[Any]]:
    """A sample as chat content items (``{"type": "text"|"image"}``) and its images, in prompt order.

    Passages become text. The task owns the whole prompt text (its options included, written once): nothing is
    added here. Adjacent text merges into one item so that chat templates add no separators inside the user's
    text.
    """
    content: list[dict[str, str]] = []
    images: list[Any] = []

    def text(t: str) -> None:
        if content and content[-1]["type"] == "text":
            content[-1]["text"] += t
        else:
            content.append({"type": "text", "text": t})

    for i, part in enumerate(sample.parts):
        if isinstance(part, ImagePart):
            if part.image is None:
                raise ValueError(f"sample {sample.id!r}: image part {i} ({part.ref!r}) has no decoded image")
            images.append(part.image.convert("RGB") if hasattr(part.image, "convert") else part.image)
            content.append({"type": "image"})
        elif isinstance(part, PassagePart):
            text(f"{part.title}\n{part.text}" if part.title else part.text)
        elif isinstance(part, TextPart):
            text(part.text)
        else:
            raise TypeError(
                f"sample {sample.id!r}: part {i} has unsupported kind {getattr(part, 'kind', type(part).__name__)!r}"
            )
    return content, images


def append_tokens(inputs: dict[str, torch.Tensor], ids: list[int]) -> dict[str, torch.Tensor]:
    """One-row processor outputs with text tokens ``ids`` appended: every per-token tensor (``[1, S]``, like
    ``input_ids``) grows by ``len(ids)`` - the ids themselves, 1 in ``attention_mask``, 0 (text) in token-type
    tensors such as Gemma 3's ``token_type_ids`` and Qwen's ``mm_token_type_ids``; pixels and grids stay."""
    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError(f"a continuation is appended to one prompt at a time, got a batch of {input_ids.shape[0]}")
    if not ids:
        return dict(inputs)
    new = torch.tensor([ids], dtype=input_ids.dtype, device=input_ids.device)
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.shape == input_ids.shape:
            tail = (
                new
                if key == "input_ids"
                else torch.full_like(new, 1 if key == "attention_mask" else 0, dtype=value.dtype)
            )
            value = torch.cat([value, tail.to(value.device)], dim=1)
        out[key] = value
    return out


def text_layer_kinds(text: PretrainedConfig) -> list[str]:
    """Per-layer kinds of a transformers text config (see :mod:`bsight.kernels.sparsity.layerkinds`):
    ``layer_types`` says which layers are softmax attention (``full_attention``, ``sliding_attention``) and which
    are not (``linear_attention``: Qwen3.5's Gated DeltaNet; ``mamba``, ``conv``); KV sharing comes from
    ``kv_sharing_modes`` (Gemma 4: ``"reuse"`` layers read the last unshared layer of their type) or, for configs
    with only ``num_kv_shared_layers`` (Gemma 3n), the last that many layers."""
    n = text.num_hidden_layers
    shared = None
    modes = getattr(text, "kv_sharing_modes", None)
    if modes is not None:
        shared = [m == "reuse" for m in modes]
    elif getattr(text, "num_kv_shared_layers", 0):
        shared = [i >= n - int(text.num_kv_shared_layers) for i in range(n)]
    return kinds_from_layer_types(getattr(text, "layer_types", None), n, shared)


def text_per_layer(text: PretrainedConfig, name: str) -> list:
    """Per-layer values of an attribute of a heterogeneous config (``per_layer_config``: Gemma 4's wider full
    layers), where reading the global value raises; [] for homogeneous configs."""
    per_layer = getattr(text, "per_layer_config", None)
    if not per_layer:
        return []
    values = [getattr(per_layer[i], name, None) for i in range(text.num_hidden_layers)]
    return values if any(v is not None for v in values) else []


def text_head_dims(text: PretrainedConfig, default: int | None) -> list[int]:
    """Per-layer head dims of a heterogeneous config (``[]`` for a homogeneous one)."""
    dims = text_per_layer(text, "head_dim")
    if not dims or (default is None and None in dims):
        return []
    return [int(d if d is not None else default) for d in dims]


def _most_common(values: list) -> Any:
    values = [v for v in values if v is not None]
    return max(set(values), key=values.count) if values else None


def _adapter_hint(model_type: str) -> str:
    """Which registered adapter loads ``model_type`` or, when none does, the adapters there are and the closest
    model type (error path only: it loads the plugin registry)."""
    import difflib

    from bsight.harness.plugins import load_registry

    try:
        registry = load_registry()
        by_type = {
            t: name
            for name in registry.names("model")
            for t in getattr(registry.get("model", name), "model_types", ()) or ()
        }
    except Exception:  # noqa: BLE001 - a hint must never hide the error it decorates
        return ""
    if model_type in by_type:
        return f" (adapter {by_type[model_type]!r} loads it)"
    near = difflib.get_close_matches(model_type, list(by_type), n=1, cutoff=0.0)
    closest = f"; closest: {near[0]!r} (adapter {by_type[near[0]]!r})" if near else ""
    return f" (no registered adapter loads {model_type!r}; adapters: {', '.join(registry.names('model'))}{closest})"


class _StepClock(LogitsProcessor):
    """Records when generation asks for next-token scores: the first time when prefill (TTFT) is done, then
    once per decode step. Synchronized, which costs nothing extra: generation's stopping check already waits
    for every step."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model, self.times = model, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        _sync(self.model)
        self.times.append(time.perf_counter())
        return scores


class GreedyRun(NamedTuple):
    """One generation's new token ids and clock: prefill (to the first scores), total, and each decode step."""

    ids: torch.Tensor
    prefill_s: float
    total_s: float
    step_s: list[float]


def _sync(model: PreTrainedModel) -> None:
    """Wait for every GPU the model lives on (several when loaded with a device_map)."""
    placed = getattr(model, "hf_device_map", None)
    names = {f"cuda:{d}" if isinstance(d, int) else str(d) for d in placed.values()} if placed else {str(model.device)}
    for name in sorted(n for n in names if n.startswith("cuda")):
        sync(name)


class HFVLMAdapter(ModelAdapter):
    """Base of transformers VLM adapters; see the module docstring for what a subclass supplies."""

    Options = HFVLMOptions
    model_class: ClassVar[type[PreTrainedModel]]
    model_types: ClassVar[tuple[str, ...]]  # config.model_type values this adapter loads
    image_placeholder: ClassVar[str]  # what stands for one image in a prompt without chat template
    default_sinks: ClassVar[SinkPolicy] = SinkPolicy()
    # processor outputs that read_layouts checks against but the model's forward does not take (dropped after)
    layout_only_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.model: PreTrainedModel | None = None
        self.processor: Any = None
        self.tokenizer: Any = None
        self.chat_template: str | None = None
        self._info: ModelInfo | None = None

    # ------------------------------------------------------------------ what a subclass supplies

    @abstractmethod
    def load_processor(self, path: Path) -> Any:
        """The checkpoint's processor (must expose ``tokenizer``)."""

    @abstractmethod
    def spec_from_config(self, config: PretrainedConfig, sinks: SinkPolicy) -> LayoutSpec:
        """The layout spec: special-token ids from the model config, with this sink policy."""

    @abstractmethod
    def encode(self, text: str, images: list[Any], add_special_tokens: bool) -> dict[str, torch.Tensor]:
        """Processor outputs (input ids, pixels, grids, token types) for one prompt text with its images."""

    @abstractmethod
    def read_layouts(self, inputs: dict[str, torch.Tensor]) -> list[PromptLayout]:
        """One layout per batch row of processor outputs, checked against the vision grid's token counts."""

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Load weights and processor from a local directory or the hub cache (offline-aware)."""
        opts = self.options
        path, revision = resolve_checkpoint(opts.checkpoint, opts.revision, opts.offline, opts.cache_dir)
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        self.check_config(config, where=str(path))
        dtype = "auto" if opts.dtype == "auto" else _DTYPES[opts.dtype]
        attention_bridge.register()
        model = self.model_class.from_pretrained(
            path,
            config=config,
            dtype=dtype,
            attn_implementation=self.attn_implementation(),
            trust_remote_code=False,
            local_files_only=True,
            device_map=opts.device_map,
        )
        random = opts.weights == "random" or (
            opts.weights == "auto" and bool(getattr(config, RANDOM_WEIGHTS_KEY, False))
        )
        model_id = opts.model_id or (opts.checkpoint if path.name == revision and revision else path.name)
        self.attach(
            model,
            self.load_processor(path),
            model_id=model_id,
            revision=revision,
            weights="random" if random else "trained",
        )
        self.chat_template = read_chat_template(path, self.processor, self.tokenizer)

    def check_config(self, config: PretrainedConfig, where: str) -> None:
        if config.model_type not in self.model_types:
            raise ValueError(
                f"{where} holds a {config.model_type!r} model; adapter {self.name!r} loads "
                f"{', '.join(self.model_types)}{_adapter_hint(config.model_type)}"
            )

    def attn_implementation(self) -> dict[str, str]:
        """Language tower through the bsight bridge; vision tower on transformers' own implementation."""
        return {
            "": "sdpa",
            "text_config": attention_bridge.ATTN_IMPLEMENTATION,
            "vision_config": self.options.vision_attn,
        }

    def attach(
        self,
        model: PreTrainedModel,
        processor: Any,
        *,
        model_id: str,
        revision: str = "",
        weights: Literal["trained", "random"],
    ) -> None:
        """Adopt an already built model (e.g. random weights for timing) and its processor (may be None when
        inputs are built by hand). Sets the attention implementations and moves the model to the device."""
        self.check_config(model.config, where=f"model {model_id!r}")
        attention_bridge.register()
        if model.config.get_text_config()._attn_implementation != attention_bridge.ATTN_IMPLEMENTATION:
            model.set_attn_implementation(self.attn_implementation())
        device = self.device
        if getattr(model, "hf_device_map", None) is None and model.device != device:
            model = model.to(device)
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        self._info = self._model_info(model.config, model_id, revision, weights)

    @property
    def device(self) -> torch.device:
        if self.options.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.options.device)

    def _require(self) -> PreTrainedModel:
        if self.model is None:
            raise RuntimeError(f"adapter {self.name!r}: call load() first")
        return self.model

    # ------------------------------------------------------------------ what the core asks for

    @staticmethod
    def _model_info(
        config: PretrainedConfig, model_id: str, revision: str, weights: Literal["trained", "random"]
    ) -> ModelInfo:
        text = config.get_text_config()
        heads = text.num_attention_heads
        head_dims = text_head_dims(text, None)
        head_dim = (
            _most_common(head_dims) if head_dims else getattr(text, "head_dim", None) or text.hidden_size // heads
        )
        layer_types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
        window = getattr(text, "sliding_window", None)
        kinds = text_layer_kinds(text)
        require_softmax(kinds, text.num_hidden_layers, f"model {model_id!r} ({config.model_type})")
        return ModelInfo(
            model_id=model_id,
            revision=revision,
            num_layers=text.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=_most_common(text_per_layer(text, "num_key_value_heads"))
            or getattr(text, "num_key_value_heads", None)
            or heads,
            head_dim=head_dim,
            sliding_windows=[window if t == "sliding_attention" else None for t in layer_types],
            weights=weights,
            layer_kinds=kinds if set(kinds) != {"attention"} else [],
            head_dims=head_dims if len(set(head_dims)) > 1 else [],
        )

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError(f"adapter {self.name!r}: call load() first")
        return self._info

    def layout_spec(self) -> LayoutSpec:
        return self.spec_from_config(self._require().config, self.options.sinks or self.default_sinks)

    def prompt_text(self, content: list[dict[str, str]], answer_prefix: str = "") -> str:
        """The prompt through the checkpoint's chat template (generation prompt added, then ``answer_prefix`` as
        the start of the assistant's turn), or plain text with the model's image placeholder when the checkpoint
        has no template (``answer_prefix`` on a new line)."""
        if self.chat_template is None:
            text = "".join(item["text"] if item["type"] == "text" else self.image_placeholder for item in content)
            return f"{text}\n{answer_prefix}" if answer_prefix else text
        return (
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}],
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=True,
            )
            + answer_prefix
        )

    def prepare(self, sample: Sample, continuation: str | None = None) -> Prepared:
        """Processor inputs of the sample's prompt; ``continuation`` is tokenized on its own and appended, so the
        prompt's tokens stay an exact prefix (teacher forcing)."""
        if self.processor is None:
            raise RuntimeError(f"adapter {self.name!r} has no processor (attached without one); build inputs by hand")
        content, images = sample_content(sample)
        inputs = self.encode(
            self.prompt_text(content, sample.answer_prefix), images, add_special_tokens=self.chat_template is None
        )
        if continuation:
            inputs = append_tokens(inputs, self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        return self.prepared(inputs)

    def prepared(self, inputs: dict[str, torch.Tensor]) -> Prepared:
        """Processor outputs on the model's device (pixels in its dtype) with their layouts."""
        model = self._require()
        layouts = self.read_layouts(inputs)
        moved = {}
        for key, value in inputs.items():
            if not isinstance(value, torch.Tensor) or key in self.layout_only_keys:
                continue
            value = value.to(model.device)
            moved[key] = value.to(model.dtype) if value.is_floating_point() else value
        return Prepared(moved, layouts)

    def bind(self, method: AttentionMethod) -> AttentionMethod:
        """Set the method up for this model (once; methods swap without reloading weights)."""
        if method.model != self.info:
            method.setup(self.info)
        return method

    def forward(
        self,
        prepared: Prepared,
        method: AttentionMethod,
        *,
        logits_to_keep: int = 0,
        timer: attention_bridge.AttentionTimer | None = None,
        **kwargs: Any,
    ):
        """One prefill forward pass with ``method`` computing prefill attention (model outputs)."""
        model = self._require()
        self.bind(method)
        with torch.inference_mode(), attention_bridge.active_method(method, prepared.layouts, timer):
            return model(**prepared.inputs, logits_to_keep=logits_to_keep, **kwargs)

    def logits(self, prepared: Prepared, method: AttentionMethod, last: int | None = None) -> torch.Tensor:
        return self.forward(prepared, method, use_cache=False, logits_to_keep=last or 0).logits.float()

    def prefill(self, prepared: Prepared, method: AttentionMethod) -> None:
        """The prefill under ``method`` with the LM head on the last position only (``logits_to_keep=1``, which
        transformers' Qwen2-VL, Qwen2.5-VL and Gemma 3 classes take in 5.17 and 5.23): characterization and
        pair counting need the attention calls, not ``S x vocab`` logits."""
        self.forward(prepared, method, use_cache=False, logits_to_keep=1)

    def generate(
        self, prepared: Prepared, method: AttentionMethod, max_new_tokens: int, *, sampling: Sampling | None = None
    ) -> Generation:
        """Greedy generation (seeded temperature sampling with ``sampling``): prefill under ``method``, decode dense
        over the full KV cache."""
        ids, prefill_s, total_s, _ = self._greedy(prepared, method, max_new_tokens, sampling)
        text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""
        return Generation(text=text, prompt_tokens=prepared.layouts[0].num_valid, prefill_s=prefill_s, total_s=total_s)

    def generate_ids(self, prepared: Prepared, method: AttentionMethod, max_new_tokens: int) -> torch.Tensor:
        """New token ids of a greedy generation (batch of one)."""
        return self._greedy(prepared, method, max_new_tokens)[0]

    def _greedy(
        self, prepared: Prepared, method: AttentionMethod, max_new_tokens: int, sampling: Sampling | None = None
    ) -> GreedyRun:
        model = self._require()
        if len(prepared.layouts) != 1:
            raise ValueError(f"generate takes one prompt at a time, got a batch of {len(prepared.layouts)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.bind(method)
        config = copy.deepcopy(model.generation_config)
        config.update(
            do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, max_new_tokens=max_new_tokens
        )
        if sampling is not None:  # plain temperature sampling (top_k off), seeded for this generation
            config.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            torch.manual_seed(sampling.seed)
        if config.pad_token_id is None:
            config.pad_token_id = (
                config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
            )
        clock = _StepClock(model)
        _sync(model)
        t0 = time.perf_counter()
        with torch.inference_mode(), attention_bridge.active_method(method, prepared.layouts):
            out = model.generate(
                **prepared.inputs, generation_config=config, logits_processor=LogitsProcessorList([clock])
            )
        _sync(model)
        total = time.perf_counter() - t0
        marks = clock.times or [t0 + total]
        steps = [b - a for a, b in zip(marks, marks[1:])]
        return GreedyRun(out[0, prepared.inputs["input_ids"].shape[1] :].cpu(), marks[0] - t0, total, steps)
