"""Base classes of the three plugin families, and the small records they exchange with the core.

A plugin class declares ``name`` (what configs refer to), ``description`` (shown by ``bsight plugins``) and
``Options`` (a pydantic model with ``extra="forbid"``: a wrong option key in a config is a clear error that
names the field and what is allowed). The core instantiates plugins with validated options.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bsight.kernels.dispatch import LayerCall, sync
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.layerkinds import LayerKind, resolve, softmax_layers
from bsight.kernels.sparsity.layout import LayoutSpec, PromptLayout, SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Plugin:
    """Common shape of adapters, tasks and methods."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        self.options = options if isinstance(options, self.Options) else self.Options.model_validate(options or {})


# --------------------------------------------------------------------------------------------- tasks


class TextPart(BaseModel):
    kind: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image at its place in the prompt. ``ref`` names it (file, dataset field, package resource)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    kind: Literal["image"] = "image"
    ref: str
    image: Any = Field(default=None, exclude=True)  # PIL.Image.Image, decoded by the task


class PassagePart(BaseModel):
    """A text passage that forms its own segment (multi-document prompts: passages play images' role)."""

    kind: Literal["passage"] = "passage"
    text: str
    title: str = ""


Part = TextPart | ImagePart | PassagePart


class Sample(BaseModel):
    """One deterministic benchmark item: interleaved parts (question included), options, gold answer."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    id: str
    task: str
    subtask: str = ""
    parts: list[Part]
    # multiple choice: option texts, lettered A, B, ... in order, for extraction and scoring. The task writes them
    # into its own prompt (``parts``), once; adapters add nothing to the prompt text.
    options: list[str] = []
    answer: str  # gold: a letter for multiple choice, else the answer text
    # Text the model's answer starts with, written by the adapter at the end of the prompt (chat models: at the
    # start of the assistant turn), e.g. the opening words of a quote the model must continue. Teacher-forced
    # scoring appends the gold continuation (``meta["gold_continuation"]``, else ``answer``) after it.
    answer_prefix: str = ""
    meta: dict[str, Any] = {}

    @model_validator(mode="after")
    def _options_can_be_lettered(self) -> Sample:
        """Options are lettered A..Z: more than 26, or an empty one, is an error naming the sample."""
        if len(self.options) > 26:
            raise ValueError(f"sample {self.id!r}: {len(self.options)} options cannot be lettered A..Z (at most 26)")
        for k, option in enumerate(self.options):
            if not option.strip():
                raise ValueError(f"sample {self.id!r}: option {chr(ord('A') + k)} is empty")
        return self


@dataclass(frozen=True)
class Decoding:
    """How a task's scoring protocol generates: ``max_new_tokens`` (None: the job's default) and greedy
    (``temperature`` 0) or temperature sampling, which the accuracy job seeds per sample."""

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Sampling:
    """Seeded temperature sampling for one generation (``ModelAdapter.generate(..., sampling=...)``)."""

    temperature: float
    seed: int
    top_p: float = 1.0


@dataclass(frozen=True)
class Extraction:
    """What an answer extractor made of a generation: ``answer`` is None when it could not parse it."""

    answer: str | None
    rule: str  # which layer of the extractor matched ("letter", "option_text", "the_answer_is", "raw", "none")


class Task(Plugin, ABC):
    """A benchmark. ``samples()`` is deterministic: same order and content on every call."""

    version: ClassVar[str] = "1"
    headline: ClassVar[Literal["micro", "macro"]] = (
        "micro"  # overall score upstream: over samples, or mean of per-subtask accuracies
    )
    default_max_new_tokens: ClassVar[int | None] = (
        None  # generation budget upstream gives it; None: the accuracy job's default
    )

    protocol: str = "bsight"  # scoring protocol (prompt, decoding, extraction); tasks with options set it per instance

    @abstractmethod
    def samples(self) -> Iterator[Sample]: ...

    @abstractmethod
    def extract(self, generation: str, sample: Sample) -> Extraction: ...

    def decoding(self) -> Decoding:
        """Generation settings of this task's protocol (default: greedy, ``default_max_new_tokens``)."""
        return Decoding(max_new_tokens=self.default_max_new_tokens)

    def score(self, extraction: Extraction, sample: Sample) -> bool:
        return extraction.answer is not None and extraction.answer.strip().lower() == sample.answer.strip().lower()

    def revision(self) -> str:
        """Dataset revision recorded in provenance (hub revision, file hash, or the task's version)."""
        return f"{self.name}@{self.version}"


# -------------------------------------------------------------------------------------------- models


class ModelInfo(BaseModel):
    """Shapes and identity of a loaded model's language tower, as attention methods and FLOPs need them."""

    model_id: str
    revision: str = ""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_windows: list[int | None]  # per layer; None = full attention
    weights: Literal["trained", "random"]
    # per layer: "attention" | "shared_kv" (softmax over another layer's keys/values) | "linear" (linear attention,
    # Mamba: not softmax attention, never reaches a method); [] = every layer "attention" (see layerkinds)
    layer_kinds: list[LayerKind] = []
    head_dims: list[int] = []  # per layer where layers differ (Gemma 4's global layers); [] = head_dim everywhere
    # per layer: whether the layout's bidirectional image regions apply there (Gemma 4: sliding layers only, its
    # full-attention layers stay causal); [] = in every layer (Gemma 3)
    bidirectional_layers: list[bool] = []

    def layer_is_bidirectional(self, layer: int) -> bool:
        return not self.bidirectional_layers or (0 <= layer < self.num_layers and self.bidirectional_layers[layer])

    def kinds(self) -> list[str]:
        """The kind of every layer (``[]`` resolved to all ``attention``)."""
        return resolve(self.layer_kinds, self.num_layers)

    def attention_layers(self) -> list[int]:
        """Indices of the softmax-attention layers: the ones methods, characterization and FLOPs see."""
        return softmax_layers(self.layer_kinds, self.num_layers)

    def layer_head_dims(self) -> list[int]:
        return list(self.head_dims) if self.head_dims else [self.head_dim] * self.num_layers


@dataclass
class Prepared:
    """A sample turned into model inputs, with one layout per batch row."""

    inputs: dict[str, torch.Tensor]
    layouts: list[PromptLayout]

    @property
    def num_tokens(self) -> int:
        return max(lay.num_valid for lay in self.layouts)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    prefill_s: float
    total_s: float


class ModelAdapter(Plugin, ABC):
    """Loads one VLM family and runs it with a swappable attention method (no reload between methods)."""

    @abstractmethod
    def load(self) -> None:
        """Load weights (local directory, hub id, or an installed package); a clear error when missing."""

    @property
    @abstractmethod
    def info(self) -> ModelInfo: ...

    @abstractmethod
    def layout_spec(self) -> LayoutSpec: ...

    @abstractmethod
    def prepare(self, sample: Sample, continuation: str | None = None) -> Prepared:
        """The sample as model inputs, ending with its ``answer_prefix``. ``continuation`` (teacher forcing: a
        gold answer) is appended as tokens after the prompt, whose tokens stay an exact prefix of the result,
        so positions ``P-1 .. P+n-2`` of the logits score the ``n`` continuation tokens of a ``P``-token prompt."""

    @abstractmethod
    def generate(
        self, prepared: Prepared, method: AttentionMethod, max_new_tokens: int, *, sampling: Sampling | None = None
    ) -> Generation:
        """Greedy generation; with ``sampling``, seeded temperature sampling (the accuracy job passes it only for
        a protocol that samples, so an adapter without it fails with a TypeError instead of silently greedy)."""

    @abstractmethod
    def logits(self, prepared: Prepared, method: AttentionMethod, last: int | None = None) -> torch.Tensor:
        """Prefill logits ``[B, S, vocab]`` under ``method`` (fidelity metrics, tests); ``last=n`` keeps only the
        last ``n`` positions ``[B, n, vocab]`` (the LM head over every position of a long prompt costs more
        than the model for large vocabularies)."""

    def prefill(self, prepared: Prepared, method: AttentionMethod) -> None:
        """Run the prompt's prefill under ``method`` for what the method records (characterization probes,
        kept-pair logs), keeping no output. The default calls :meth:`logits`; adapters should override it to
        skip the ``S x vocab`` LM head (e.g. transformers' ``logits_to_keep=1``), which at long prompts costs
        more memory than the attention being studied."""
        self.logits(prepared, method)


# ------------------------------------------------------------------------------------------- methods


@dataclass
class OverheadMeter:
    """Wall-clock milliseconds a method spends outside attention proper (pattern estimation, mask
    building), kept apart from attention time so reports can show both."""

    ms: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def measure(self, what: str, device: torch.device | None = None) -> Iterator[None]:
        sync(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(device)
            self.ms[what] = self.ms.get(what, 0.0) + 1e3 * (time.perf_counter() - t0)

    def take(self) -> dict[str, float]:
        out, self.ms = self.ms, {}
        return out


class AttentionMethod(Plugin, ABC):
    """Prefill attention for one layer of one unpadded sequence.

    ``prefill`` gets ``q [Hq, S, D]`` and ``k, v [Hkv, S, D]`` (after RoPE, not expanded for GQA) and the
    prompt's :class:`LayoutMeta`, and returns ``[Hq, S, D]``. Decode steps never reach a method: they run
    dense over the full KV cache.

    A method may set ``sink_policy`` (e.g. the policy its head map was characterized with); the attention
    bridge then recomputes each prompt's sinks with it before building the layout metadata.
    """

    sink_policy: SinkPolicy | None = None
    # The static head map the method runs, if any (set by ``setup``): reports show where it came from.
    head_map: HeadMap | None = None

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.overhead = OverheadMeter()
        self.model: ModelInfo | None = None

    def setup(self, model: ModelInfo) -> None:
        """Bind to a model (load and check a head map, say). Called once per model, before any prefill."""
        self.model = model

    @abstractmethod
    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall
    ) -> torch.Tensor: ...

    def head_categories(self, layer_idx: int) -> torch.Tensor | None:
        """Static per-head categories of a layer (int tensor ``[Hq]``), or None for dynamic methods."""
        return None

    # ----------------------------------------------------------------------------- what jobs may ask
    # Jobs never name a method plugin or its options; they ask these.

    # The model's own attention: the reference every other method is read against (``dense``).
    is_reference: ClassVar[bool] = False
    # Artifact kinds the method can be handed through ``with_artifact`` (``blindsight``: "head_map").
    accepts: ClassVar[tuple[str, ...]] = ()
    # A method that needs an offline search over prompts before it runs (MMInference's pattern search): the
    # kind of artifact the search writes and its options model; None for methods that need none.
    search_artifact: ClassVar[str | None] = None
    SearchOptions: ClassVar[type[BaseModel] | None] = None

    @classmethod
    def artifacts(cls, options: dict[str, Any]) -> list[tuple[str, str]]:
        """The files (kind, path as configured) these options make the method read, so a job can check that
        they exist or that an earlier job writes them, and fingerprint their content."""
        return []

    @classmethod
    def with_artifact(cls, options: dict[str, Any], kind: str, value: Any) -> dict[str, Any]:
        """These options, changed so the method runs ``value`` (an artifact object or file) of ``kind``, one of
        ``accepts`` (the tau sweep runs each tau's head map this way)."""
        raise NotImplementedError(
            f"method {cls.name!r} takes no {kind} (it accepts: {', '.join(cls.accepts) or 'none'})"
        )

    @classmethod
    def search(cls, adapter: ModelAdapter, sample: Sample, options: BaseModel) -> Any:
        """Run the offline search on one prompt and return the artifact (an object with ``save(path)``) that
        ``with_artifact(options, cls.search_artifact, ...)`` or a file option then reads."""
        raise NotImplementedError(f"method {cls.name!r} needs no offline search")

    def describe(self) -> dict[str, Any]:
        """What a report records about the method's static inputs (after ``setup``): ``head_map``, the
        provenance and category shares of the head map it runs, and ``notes``, short phrases (e.g. "every
        head intra_image")."""
        if self.head_map is None:
            return {}
        hm = self.head_map
        return {
            "head_map": {
                "model_id": hm.model_id,
                "weights": hm.weights,
                "dataset": hm.dataset.name,
                "size": hm.dataset.size,
                "tau": hm.params.tau,
                "shares": hm.shares(),
            }
        }

    @classmethod
    def save_artifact(cls, data: dict[str, Any], path: Path) -> None:
        """Write the search's artifact (as ``search`` returned it, in JSON data) to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def summarize_artifact(cls, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Display fields of an artifact this method's search wrote (its JSON data), for reports."""
        return {}

    def static_categories(self, model: ModelInfo) -> np.ndarray | None:
        """``int64 [layers, heads]`` categories when the method has them for every softmax-attention layer
        (counted from the layout alone), None for a dynamic method. Rows of linear layers (hybrid models) are
        ``dense`` placeholders: they count zero pairs. Call after ``setup``."""
        attention = set(model.attention_layers())
        layers = [self.head_categories(layer) if layer in attention else None for layer in range(model.num_layers)]
        if all(c is None for c in layers):
            return None
        if any(c is None for i, c in enumerate(layers) if i in attention):
            raise ValueError(f"method {self.name!r} gives static head categories for some layers only")
        placeholder = np.full(model.num_heads, Category.DENSE.value, dtype=np.int64)
        cats = np.stack(
            [
                placeholder if c is None else np.asarray(c.cpu() if hasattr(c, "cpu") else c, dtype=np.int64)
                for c in layers
            ]
        )
        if cats.shape != (model.num_layers, model.num_heads):
            raise ValueError(
                f"method {self.name!r} gives head categories of shape {cats.shape}, "
                f"the model has {model.num_layers} x {model.num_heads}"
            )
        return cats
