"""Characterization results: per-prompt NMSE tables of one model on one dataset, and the prompt-level rule.

The expensive part of characterization (running the model, :mod:`bsight.harness.characterize`) writes these
tables; selection (:func:`select_categories`), aggregation and sweeps work on them without the model, so any
tau can be re-selected later.

Hybrid models: a layer that is not softmax attention (``layer_kinds``, see
:mod:`bsight.kernels.sparsity.layerkinds`) is not characterized: its NMSE row is empty and its pairs are zero.
In the dense arrays (:meth:`CharacterizationResult.nmse_array`) its heads get NMSE ``inf`` - every prompt
selects ``dense`` there, at zero pairs - and :func:`~bsight.kernels.sparsity.aggregate.build_head_map` writes the
layer as ``linear`` with no categories.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bsight.kernels.sparsity.artifacts import load_json_model
from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES, Category
from bsight.kernels.sparsity.headmap import DatasetInfo
from bsight.kernels.sparsity.layerkinds import LayerKind, is_softmax, require_softmax, resolve
from bsight.kernels.sparsity.layout import SinkPolicy

RESULT_SCHEMA_VERSION = 1


class PromptRecord(BaseModel):
    """One prompt's characterization tables: everything selection, aggregation and sweeps need."""

    model_config = ConfigDict(extra="forbid")
    id: str
    num_tokens: int = Field(ge=0)
    num_images: int = Field(ge=0)
    image_queries: int = Field(ge=0)
    nmse: list[
        list[list[float]]
    ]  # [layer][query head][sparse category: sink, intra_image, intra_image_sink]; [] linear
    pairs: list[list[int]]  # [layer][category: dense, sink, intra_image, intra_image_sink] kept pairs per head

    @model_validator(mode="after")
    def _check(self) -> PromptRecord:
        if len(self.nmse) != len(self.pairs):
            raise ValueError(f"prompt {self.id}: {len(self.nmse)} layers of NMSE but {len(self.pairs)} of pairs")
        if any(len(h) != len(SPARSE_CATEGORIES) for layer in self.nmse for h in layer):
            raise ValueError(f"prompt {self.id}: NMSE rows must hold {len(SPARSE_CATEGORIES)} sparse categories")
        if any(len(p) != len(Category) for p in self.pairs):
            raise ValueError(f"prompt {self.id}: pair rows must hold {len(Category)} categories")
        return self


class SkippedPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    reason: str


class CharacterizationResult(BaseModel):
    """Per-prompt NMSE tables of one model on one dataset (cache of the expensive part of characterization)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = RESULT_SCHEMA_VERSION
    model_id: str
    model_revision: str = ""
    weights: Literal["trained", "random", "synthetic"]
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    sliding_windows: list[int | None]
    layer_kinds: list[LayerKind] = []  # per layer ([] = all "attention"); linear layers are not characterized
    dataset: DatasetInfo
    sink_policy: SinkPolicy
    prompts: list[PromptRecord] = []
    skipped: list[SkippedPrompt] = []
    tool_version: str = ""
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _check(self) -> CharacterizationResult:
        if len(self.sliding_windows) != self.num_layers:
            raise ValueError(f"{len(self.sliding_windows)} sliding windows for {self.num_layers} layers")
        kinds = resolve(self.layer_kinds, self.num_layers)
        require_softmax(kinds, self.num_layers, f"model {self.model_id}")
        heads = [self.num_heads if is_softmax(k) else 0 for k in kinds]
        for p in self.prompts:
            if len(p.nmse) != self.num_layers or any(len(layer) != n for layer, n in zip(p.nmse, heads)):
                raise ValueError(
                    f"prompt {p.id}: NMSE table is not {self.num_layers} layers x {self.num_heads} heads"
                    + (" (no rows for linear layers)" if "linear" in kinds else "")
                )
        return self

    def kinds(self) -> list[str]:
        return resolve(self.layer_kinds, self.num_layers)

    def nmse_array(self) -> np.ndarray:
        """``float64 [prompts, layers, heads, 3]``; ``inf`` for the heads of linear layers (never selected)."""
        out = np.full((len(self.prompts), self.num_layers, self.num_heads, len(SPARSE_CATEGORIES)), np.inf)
        for layer, kind in enumerate(self.kinds()):
            if is_softmax(kind) and self.prompts:
                out[:, layer] = np.asarray([p.nmse[layer] for p in self.prompts], dtype=np.float64)
        return out

    def pairs_array(self) -> np.ndarray:
        """``int64 [prompts, layers, 4]``."""
        return np.asarray([p.pairs for p in self.prompts], dtype=np.int64).reshape(-1, self.num_layers, len(Category))

    def choices(self, tau: float) -> np.ndarray:
        """Category each prompt selects for each head at threshold ``tau``: ``int64 [prompts, layers, heads]``."""
        return select_categories(self.nmse_array(), self.pairs_array(), tau)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CharacterizationResult:
        return load_json_model(cls, Path(path), "characterization result")


def select_categories(nmse: np.ndarray, pairs: np.ndarray, tau: float) -> np.ndarray:
    """The prompt-level rule: per head, the category with the fewest kept pairs among those with
    NMSE <= tau; none passes -> dense. Ties (equal pairs, i.e. the same mask on this prompt) go to the
    superset category (``intra_image_sink`` > ``intra_image`` > ``sink``).

    ``nmse [..., H, 3]``, ``pairs [..., 4]`` with the same leading dims; returns ``int64 [..., H]``.
    """
    nmse = np.asarray(nmse, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.float64)
    if (
        nmse.shape[-1] != len(SPARSE_CATEGORIES)
        or pairs.shape[-1] != len(Category)
        or nmse.shape[:-2] != pairs.shape[:-1]
    ):
        raise ValueError(f"nmse [..., heads, 3] and pairs [..., 4] disagree: {nmse.shape} vs {pairs.shape}")
    sparse_pairs = np.broadcast_to(pairs[..., None, 1:], nmse.shape)
    cost = np.where(nmse <= tau, sparse_pairs, np.inf)[..., ::-1]  # reversed: argmin's first hit = superset
    best = len(SPARSE_CATEGORIES) - 1 - np.argmin(cost, axis=-1)
    chosen = np.asarray([c.value for c in SPARSE_CATEGORIES])[best]
    return np.where(np.isfinite(cost.min(axis=-1)), chosen, Category.DENSE.value).astype(np.int64)


def nmse_of_categories(nmse: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """NMSE each head incurs under the given categories (dense = 0): ``nmse [..., L, H, 3]``,
    ``categories [L, H]`` -> ``[..., L, H]``. The fidelity side of a head map on characterized prompts."""
    nmse = np.asarray(nmse, dtype=np.float64)
    cats = np.asarray(categories, dtype=np.int64)
    padded = np.concatenate([np.zeros_like(nmse[..., :1]), nmse], axis=-1)  # column 0 = dense
    index = np.broadcast_to(cats[..., None], (*nmse.shape[:-1], 1))
    return np.take_along_axis(padded, index, axis=-1)[..., 0]
