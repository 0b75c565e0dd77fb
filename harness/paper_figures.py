"""The paper's per-model figures that need more than a head map's categories (issue 18).

* :func:`attention_maps` - one layer's pooled attention matrix per head, segment boundaries drawn, each head
  titled with its category (paper Fig. 2; Fig. 7 for Gemma's fixed-offset sinks);
* :func:`inter_image_share` - per layer, the share of image queries' attention mass on other images, beside the
  share of the attention computation that is inter-image (Fig. 1b, one prompt);
* :func:`inter_image_vs_images` - the same shares against the number of images in the prompt (Fig. 1b);
* :func:`category_choice` - per layer, the distribution of the per-prompt category choice over the dataset,
  from the head map's histograms (Fig. 3);
* :func:`sink_votes` - a histogram of the voted in-image sink offsets, the chosen ones marked (Fig. 7's sinks).

All return :class:`matplotlib.figure.Figure` objects (no pyplot state); categories keep the colours of
:mod:`bsight.harness.figures`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from bsight.harness.figures import COLORS
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.headmap import HeadMap


def attention_maps(
    pooled: np.ndarray,
    length: int,
    spans: Sequence[tuple[int, int]],
    categories: Sequence[str] | None = None,
    title: str = "",
    max_cols: int = 8,
) -> Figure:
    """``pooled [Hq, P, P]`` (mean attention weight per cell) of one layer, one panel per query head, on a log
    colour scale per head; image segments ``[start, end)`` (token positions of a ``length``-token prompt) are
    outlined on both axes. ``categories[h]`` titles head ``h`` in its category's colour."""
    pooled = np.asarray(pooled, dtype=float)
    heads, P = pooled.shape[0], pooled.shape[1]
    cols = min(max_cols, heads)
    rows = math.ceil(heads / cols)
    fig = Figure(figsize=(1.9 * cols + 0.4, 1.95 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    scale = P / length
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= heads:
            ax.set_axis_off()
            continue
        m = pooled[h]
        top = float(m.max()) if m.size and m.max() > 0 else 1.0
        ax.imshow(
            np.where(m > 0, m, np.nan),
            norm=LogNorm(vmin=top * 1e-4, vmax=top),
            cmap="magma",
            interpolation="nearest",
            aspect="equal",
        )
        for a, e in spans:
            for x in (a * scale - 0.5, e * scale - 0.5):
                ax.axvline(x, color="#56b4e9", linewidth=0.3, alpha=0.6)
                ax.axhline(x, color="#56b4e9", linewidth=0.3, alpha=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
        label = categories[h] if categories else None
        color = COLORS[Category.parse(label)] if label else "black"
        ax.set_title(f"head {h}" + (f": {label}" if label else ""), fontsize=7, color=color)
    fig.suptitle(title + f"\n(query rows x key columns, {P}x{P} cells average-pooled from {length} tokens)", fontsize=8)
    return fig


def inter_image_share(shares: Mapping[int, float], computation: float, title: str = "") -> Figure:
    """Per layer: share of image queries' attention mass on other images (bars, mean over heads), and the share of
    the prompt's attention computation (query-key pairs) that is inter-image (dashed line)."""
    fig = Figure(figsize=(max(5.0, 0.25 * len(shares) + 2.0), 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(list(shares), [100 * v for v in shares.values()], color="#0072b2", width=0.8, label="attention mass")
    ax.axhline(
        100 * computation, color="#d55e00", linestyle="--", linewidth=1, label="share of computation (full attention)"
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("inter-image share (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    return fig


def inter_image_vs_images(
    images: Sequence[int], per_layer: Sequence[Mapping[int, float]], computation: Sequence[float], title: str = ""
) -> Figure:
    """Against the number of images: the inter-image mass share (mean over layers, band = min..max layer) and
    the inter-image share of the attention computation."""
    x = np.asarray(images, dtype=float)
    vals = [np.asarray(list(d.values()), dtype=float) for d in per_layer]
    mean = np.array([100 * v.mean() if v.size else np.nan for v in vals])
    lo = np.array([100 * v.min() if v.size else np.nan for v in vals])
    hi = np.array([100 * v.max() if v.size else np.nan for v in vals])
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between(x, lo, hi, color="#0072b2", alpha=0.15, label="attention mass: min..max over layers")
    ax.plot(x, mean, "o-", color="#0072b2", label="attention mass: mean over layers")
    ax.plot(
        x,
        100 * np.asarray(computation, dtype=float),
        "s--",
        color="#d55e00",
        label="share of computation (full attention)",
    )
    ax.set_xlabel("images (segments) in the prompt")
    ax.set_ylabel("inter-image share (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(x)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=7)
    return fig


def choice_shares(head_map: HeadMap) -> np.ndarray:
    """``float64 [num_layers, 4]``: per layer, the share of (head, prompt) choices of each category, from the
    head map's per-head histograms; NaN rows for layers without histograms (linear layers, older maps)."""
    out = np.full((head_map.num_layers, len(Category)), np.nan)
    for layer, heads in enumerate(head_map.histograms):
        if heads:
            out[layer] = [np.mean([h.get(c.label, 0.0) for h in heads]) for c in Category]
    return out


def category_choice(head_map: HeadMap, title: str | None = None) -> Figure:
    """Per layer, the distribution of the per-prompt category choice over the dataset (stacked bars)."""
    shares = np.nan_to_num(choice_shares(head_map))
    fig = Figure(figsize=(max(6.5, 0.25 * head_map.num_layers + 2.0), 3.5), layout="constrained")
    ax = fig.add_subplot()
    layers = np.arange(head_map.num_layers)
    bottom = np.zeros(head_map.num_layers)
    for c in Category:
        ax.bar(layers, shares[:, c], bottom=bottom, color=COLORS[c], label=c.label, width=0.85)
        bottom += shares[:, c]
    ax.set_xlabel("layer")
    ax.set_ylabel("share of per-prompt choices")
    ax.set_ylim(0, 1)
    ax.set_title(
        title or f"{head_map.model_id}: per-prompt category choice over {head_map.dataset.size} prompts", fontsize=9
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(Category), frameon=False, fontsize=8)
    return fig


def sink_votes(votes: Sequence[int], chosen: Sequence[int], title: str = "") -> Figure:
    """Votes per in-image offset (bars), the chosen sink offsets in another colour and labelled."""
    v = np.asarray(votes, dtype=float)
    chosen = sorted(set(chosen))
    fig = Figure(figsize=(6.0, 3.0), layout="constrained")
    ax = fig.add_subplot()
    offsets = np.arange(v.size)
    colors = ["#d55e00" if o in chosen else "#999999" for o in offsets]
    ax.bar(offsets, v, color=colors, width=1.0)
    for o in chosen:
        if o < v.size:
            ax.annotate(str(o), (o, v[o]), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xlabel("offset inside the image (tokens from its start token)")
    ax.set_ylabel("votes")
    ax.set_xlim(-1, max(v.size, 1))
    ax.set_title(title or f"sink-offset votes; chosen: {', '.join(map(str, chosen)) or 'none'}", fontsize=9)
    return fig
