"""Dataset-level aggregation: from per-prompt category choices to one prompt-independent head map.

Per head, the share of prompts that chose each category (the histogram). Rule (DESIGN.md section 1):
dense share > delta -> ``dense``; otherwise the predominant sparse category; if that category's share is
below gamma -> ``intra_image_sink``, the superset of the other two sparse masks. Shares are over all
characterized prompts; ties between sparse categories go to the superset side.
"""

from __future__ import annotations

import numpy as np

from bsight.kernels.sparsity.artifacts import tool_version
from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES, Category
from bsight.kernels.sparsity.characterization import CharacterizationResult
from bsight.kernels.sparsity.headmap import CharacterizationParams, HeadMap
from bsight.kernels.sparsity.layerkinds import is_softmax

DEFAULT_PARAMS = CharacterizationParams(tau=0.05, delta=0.2, gamma=0.5)
"""Provisional defaults: the paper's values did not survive extraction. Re-choose them from a sweep
(:func:`bsight.kernels.sparsity.param_sweep.sweep`) on a trained model before publishing a head map."""


def category_histograms(choices: np.ndarray) -> np.ndarray:
    """``choices [prompts, layers, heads]`` -> ``float64 [layers, heads, 4]`` shares (column = category value)."""
    choices = np.asarray(choices, dtype=np.int64)
    if choices.ndim != 3 or choices.shape[0] == 0:
        raise ValueError(f"choices must be [prompts >= 1, layers, heads], got shape {choices.shape}")
    return np.stack([(choices == c.value).mean(axis=0) for c in Category], axis=-1)


def aggregate_categories(histograms: np.ndarray, delta: float, gamma: float) -> np.ndarray:
    """Apply the dataset-level rule to ``histograms [..., 4]``; returns ``int64 [...]`` category values."""
    hist = np.asarray(histograms, dtype=np.float64)
    sparse_values = np.array([c.value for c in SPARSE_CATEGORIES])
    sparse = hist[..., sparse_values][..., ::-1]  # reversed so that argmax's first hit is the superset
    best = len(SPARSE_CATEGORIES) - 1 - np.argmax(sparse, axis=-1)
    best_share = np.take_along_axis(sparse[..., ::-1], best[..., None], axis=-1)[..., 0]
    out = np.where(best_share < gamma, Category.INTRA_IMAGE_SINK.value, sparse_values[best])
    return np.where(hist[..., Category.DENSE] > delta, Category.DENSE.value, out).astype(np.int64)


def build_head_map(result: CharacterizationResult, params: CharacterizationParams = DEFAULT_PARAMS) -> HeadMap:
    """The head map of a characterized model: selection at ``params.tau`` per prompt, then aggregation."""
    if not result.prompts:
        raise ValueError(
            f"no characterized prompts for {result.model_id} ({len(result.skipped)} skipped): nothing to aggregate"
        )
    hist = category_histograms(result.choices(params.tau))
    cats = aggregate_categories(hist, params.delta, params.gamma)
    labels = [c.label for c in Category]
    softmax = [is_softmax(k) for k in result.kinds()]  # linear layers (hybrid models): no categories
    return HeadMap(
        model_id=result.model_id,
        model_revision=result.model_revision,
        weights=result.weights,
        num_layers=result.num_layers,
        num_heads=result.num_heads,
        layer_kinds=result.layer_kinds,
        categories=[[Category(int(c)).label for c in row] if keep else [] for row, keep in zip(cats, softmax)],
        params=params,
        dataset=result.dataset.model_copy(update={"size": len(result.prompts)}),
        histograms=[
            [{labels[c]: float(h[c]) for c in range(len(Category))} for h in row] if keep else []
            for row, keep in zip(hist, softmax)
        ],
        sink_policy=result.sink_policy,
        tool_version=result.tool_version or tool_version(),
    )
