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
    categories: list[list[str]]  # [layer][query head] -> category label
    params: CharacterizationParams
    dataset: DatasetInfo
    histograms: list[list[dict[str, float]]] = []  # [layer][head] -> {category label: share of prompts}
    sink_policy: SinkPolicy
    tool_version: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _check(self) -> HeadMap:
        if len(self.categories) != self.num_layers or any(len(r) != self.num_heads for r in self.categories):
            raise ValueError(f"categories must be {self.num_layers} layers x {self.num_heads} heads")
        bad = {c for r in self.categories for c in r} - _LABELS
        if bad:
            raise ValueError(f"unknown categories {sorted(bad)}; allowed: {sorted(_LABELS)}")
        if self.histograms and (
            len(self.histograms) != self.num_layers or any(len(r) != self.num_heads for r in self.histograms)
        ):
            raise ValueError(f"histograms must be {self.num_layers} layers x {self.num_heads} heads")
        bad = {c for r in self.histograms for h in r for c in h} - _LABELS
        if bad:
            raise ValueError(f"unknown categories {sorted(bad)} in histograms; allowed: {sorted(_LABELS)}")
        return self

    def category_array(self) -> np.ndarray:
        """``int64 [num_layers, num_heads]`` of :class:`Category` values (FLOPs, sweeps, figures)."""
        return np.array([[Category.parse(c).value for c in r] for r in self.categories], dtype=np.int64)

    def layer_categories(self, layer: int) -> torch.Tensor:
        """Int tensor ``[num_heads]`` of :class:`Category` values for one layer (kernel / reference input)."""
        return torch.tensor([Category.parse(c).value for c in self.categories[layer]], dtype=torch.int32)

    def shares(self) -> dict[str, float]:
        """Share of all heads in each category."""
        flat = [c for r in self.categories for c in r]
        return {c.label: flat.count(c.label) / len(flat) for c in Category}

    def layer_shares(self) -> np.ndarray:
        """``float64 [num_layers, 4]``: share of each layer's heads in each category (column = value)."""
        cats = self.category_array()
        return np.stack([(cats == c.value).mean(axis=1) for c in Category], axis=1)

    def check_model(self, num_layers: int, num_heads: int) -> None:
        if (num_layers, num_heads) != (self.num_layers, self.num_heads):
            raise ValueError(
                f"head map for {self.model_id} is {self.num_layers} layers x {self.num_heads} heads, "
                f"the model has {num_layers} x {num_heads}"
            )

    @classmethod
    def uniform(
        cls, model_id: str, num_layers: int, num_heads: int, category: Category | str, sink_policy: SinkPolicy, **kw
    ) -> HeadMap:
        """Every head in one category (all-dense maps for equivalence tests, all-sparse for timing)."""
        label = Category.parse(category).label
        return cls(
            model_id=model_id,
            num_layers=num_layers,
            num_heads=num_heads,
            categories=[[label] * num_heads for _ in range(num_layers)],
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
