"""Base classes of the three plugin families, and the small records they exchange with the core.

A plugin class declares ``name`` (what configs refer to), ``description`` (shown by ``bsight plugins``) and
``Options`` (a pydantic model with ``extra="forbid"``: a wrong option key in a config is a clear error that
names the field and what is allowed). The core instantiates plugins with validated options.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from bsight.kernels.dispatch import LayerCall
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
    options: list[str] = []  # multiple choice: option texts, lettered A, B, ... in order
    answer: str  # gold: a letter for multiple choice, else the answer text
    # Text the model's answer starts with, written by the adapter at the end of the prompt (chat models: at the
    # start of the assistant turn), e.g. the opening words of a quote the model must continue. Teacher-forced
    # scoring appends the gold continuation (``meta["gold_continuation"]``, else ``answer``) after it.
    answer_prefix: str = ""
    meta: dict[str, Any] = {}


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

    @abstractmethod
    def samples(self) -> Iterator[Sample]: ...

    @abstractmethod
    def extract(self, generation: str, sample: Sample) -> Extraction: ...

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
    def generate(self, prepared: Prepared, method: AttentionMethod, max_new_tokens: int) -> Generation: ...

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
        sync = device is not None and device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize(device)
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
