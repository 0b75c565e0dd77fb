"""The head map: the versioned artifact of characterization, one JSON file per model.

It holds each (layer, query head)'s category, the parameters and dataset that chose them, the per-head
category histograms behind the choice, and the sink policy. Method ``blindsight`` loads it at inference and
needs no run-time statistics.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bsight.kernels.sparsity.artifacts import load_json_model, tool_version
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.layerkinds import LayerKind, first_mismatch, is_softmax, require_softmax, resolve
from bsight.kernels.sparsity.layout import SinkPolicy

SCHEMA_VERSION = 1
_LABELS = {c.label for c in Category}


class CharacterizationParams(BaseModel):
    """tau: NMSE threshold per prompt; delta: dense share above which a head stays dense; gamma: share the
    predominant sparse category needs, else the head falls back to ``intra_image_sink``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tau: float = Field(gt=0)
    delta: float = Field(ge=0, le=1)
    gamma: float = Field(ge=0, le=1)


class DatasetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int = Field(ge=0)
    revision: str = ""


class HeadMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    model_id: str
    model_revision: str = ""
    # what the attention patterns came from: never present a random-weight map as a model's real map
    weights: Literal["trained", "random", "synthetic", "unknown"] = "unknown"
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    # per layer: "attention", "shared_kv" (softmax over another layer's KV: has categories) or "linear" (not
    # softmax attention: no categories, ``categories[layer] == []``); [] = every layer "attention" (older maps)
    layer_kinds: list[LayerKind] = []
    categories: list[list[str]]  # [layer][query head] -> category label ([] for a linear layer)
    params: CharacterizationParams
    dataset: DatasetInfo
    histograms: list[list[dict[str, float]]] = []  # [layer][head] -> {category label: share of prompts}
    sink_policy: SinkPolicy
    tool_version: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _check(self) -> HeadMap:
        kinds = resolve(self.layer_kinds, self.num_layers)
        require_softmax(self.layer_kinds, self.num_layers, f"head map for {self.model_id}")
        heads = [self.num_heads if is_softmax(k) else 0 for k in kinds]
        if len(self.categories) != self.num_layers or any(len(r) != n for r, n in zip(self.categories, heads)):
            raise ValueError(
                f"categories must be {self.num_layers} layers x {self.num_heads} heads"
                + (" (no categories for linear layers)" if "linear" in kinds else "")
            )
        bad = {c for r in self.categories for c in r} - _LABELS
        if bad:
            raise ValueError(f"unknown categories {sorted(bad)}; allowed: {sorted(_LABELS)}")
        if self.histograms and (
            len(self.histograms) != self.num_layers or any(len(r) != n for r, n in zip(self.histograms, heads))
        ):
            raise ValueError(f"histograms must be {self.num_layers} layers x {self.num_heads} heads")
        bad = {c for r in self.histograms for h in r for c in h} - _LABELS
        if bad:
            raise ValueError(f"unknown categories {sorted(bad)} in histograms; allowed: {sorted(_LABELS)}")
        return self

    def kinds(self) -> list[str]:
        """The kind of every layer (``layer_kinds`` with ``[]`` resolved to all ``attention``)."""
        return resolve(self.layer_kinds, self.num_layers)

    def is_softmax_layer(self, layer: int) -> bool:
        return is_softmax(self.kinds()[layer])

    def category_array(self) -> np.ndarray:
        """``int64 [num_layers, num_heads]`` of :class:`Category` values (FLOPs, sweeps, figures). Rows of linear
        layers hold ``dense`` as an inert placeholder: their kept-pair rows are zero in every pair table built with
        the layer kinds (:func:`bsight.kernels.sparsity.flops.layer_pair_table`), so they count for nothing."""
        dense = [Category.DENSE.label] * self.num_heads
        return np.array(
            [[Category.parse(c).value for c in (r if r else dense)] for r in self.categories], dtype=np.int64
        )

    def layer_categories(self, layer: int) -> torch.Tensor:
        """Int tensor ``[num_heads]`` of :class:`Category` values for one layer (kernel / reference input)."""
        if not self.is_softmax_layer(layer):
            raise ValueError(f"layer {layer} of {self.model_id} is {self.kinds()[layer]!r}: it has no head categories")
        return torch.tensor([Category.parse(c).value for c in self.categories[layer]], dtype=torch.int32)

    def shares(self) -> dict[str, float]:
        """Share of all softmax-attention heads in each category."""
        flat = [c for r in self.categories for c in r]
        return {c.label: flat.count(c.label) / len(flat) for c in Category}

    def layer_shares(self) -> np.ndarray:
        """``float64 [num_layers, 4]``: share of each layer's heads in each category (column = value); NaN rows
        for linear layers."""
        cats = self.category_array()
        out = np.stack([(cats == c.value).mean(axis=1) for c in Category], axis=1)
        out[[not is_softmax(k) for k in self.kinds()]] = np.nan
        return out

    def check_model(self, num_layers: int, num_heads: int, layer_kinds: list[str] | None = None) -> None:
        """The model's shape (and, when given, its per-layer kinds) must be the head map's; a kind mismatch
        names the first layer that differs."""
        if (num_layers, num_heads) != (self.num_layers, self.num_heads):
            raise ValueError(
                f"head map for {self.model_id} is {self.num_layers} layers x {self.num_heads} heads, "
                f"the model has {num_layers} x {num_heads}"
            )
        if layer_kinds is not None:
            layer = first_mismatch(self.layer_kinds, layer_kinds, num_layers)
            if layer is not None:
                raise ValueError(
                    f"head map for {self.model_id} does not match the model's layer kinds: layer {layer} is "
                    f"{self.kinds()[layer]!r} in the head map but {resolve(layer_kinds, num_layers)[layer]!r} in the "
                    "model (characterize this model again)"
                )

    @classmethod
    def uniform(
        cls, model_id: str, num_layers: int, num_heads: int, category: Category | str, sink_policy: SinkPolicy, **kw
    ) -> HeadMap:
        """Every head in one category (all-dense maps for equivalence tests, all-sparse for timing)."""
        label = Category.parse(category).label
        kinds = resolve(kw.pop("layer_kinds", []), num_layers)
        return cls(
            model_id=model_id,
            num_layers=num_layers,
            num_heads=num_heads,
            layer_kinds=kinds if "linear" in kinds or "shared_kv" in kinds else [],
            categories=[[label] * num_heads if is_softmax(k) else [] for k in kinds],
            params=kw.pop("params", CharacterizationParams(tau=1.0, delta=1.0, gamma=0.0)),
            dataset=kw.pop("dataset", DatasetInfo(name="none", size=0)),
            sink_policy=sink_policy,
            tool_version=kw.pop("tool_version", tool_version()),
            **kw,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> HeadMap:
        """Load and validate; errors name the file and what is wrong with it."""
        return load_json_model(cls, Path(path), "head map")
