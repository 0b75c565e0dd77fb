"""Figures of characterization and FLOPs, as matplotlib ``Figure`` objects (no pyplot state).

Reports convert them (e.g. to inline SVG). Categories always get the same colours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.flops import empirical_cdf
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.param_sweep import SweepRow, pareto_front

COLORS = {
    Category.DENSE: "#4d4d4d",
    Category.SINK: "#e69f00",
    Category.INTRA_IMAGE: "#0072b2",
    Category.INTRA_IMAGE_SINK: "#009e73",
}
_LABELS = [c.label for c in Category]


def category_heatmap(head_map: HeadMap, title: str | None = None) -> Figure:
    """Layer x head grid of categories (paper Fig. 4 style); linear layers of hybrid models stay blank."""
    cats = head_map.category_array()
    linear = np.array([k == "linear" for k in head_map.kinds()])[:, None]
    cats = np.ma.masked_array(cats, mask=np.broadcast_to(linear, cats.shape))
    fig = Figure(figsize=(max(4.0, 0.22 * head_map.num_heads + 2.5), max(3.0, 0.18 * head_map.num_layers + 1.5)))
    ax = fig.add_subplot()
    cmap = ListedColormap([COLORS[c] for c in Category])
    im = ax.imshow(
        cats,
        cmap=cmap,
        norm=BoundaryNorm(np.arange(-0.5, len(Category)), cmap.N),
        aspect="auto",
        interpolation="nearest",
    )
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title(title or f"{head_map.model_id}: head categories ({head_map.weights} weights)")
    bar = fig.colorbar(im, ax=ax, ticks=range(len(Category)))
    bar.ax.set_yticklabels(_LABELS)
    fig.tight_layout()
    return fig


def layer_shares(head_map: HeadMap, title: str | None = None) -> Figure:
    """Per layer, the share of its heads in each category (stacked bars)."""
    shares = head_map.layer_shares()
    fig = Figure(figsize=(max(5.0, 0.25 * head_map.num_layers + 2.0), 3.5))
    ax = fig.add_subplot()
    layers = np.arange(head_map.num_layers)
    bottom = np.zeros(head_map.num_layers)
    for c in Category:
        ax.bar(layers, shares[:, c], bottom=bottom, color=COLORS[c], label=c.label, width=0.85)
        bottom += shares[:, c]
    ax.set_xlabel("layer")
    ax.set_ylabel("share of heads")
    ax.set_ylim(0, 1)
    ax.set_title(title or f"{head_map.model_id}: categories per layer")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(Category), frameon=False)
    fig.tight_layout()
    return fig


def flops_cdf(reductions: Mapping[str, Sequence[float]], title: str = "Attention FLOPs reduction per prompt") -> Figure:
    """Empirical CDF of per-prompt FLOPs reduction, one curve per model or setting (paper Fig. 5 style)."""
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot()
    for name, values in reductions.items():
        x, y = empirical_cdf(values)
        if x.size:
            ax.step(100 * x, y, where="post", label=f"{name} (mean {100 * float(np.mean(x)):.1f}%)")
    ax.set_xlabel("FLOPs reduction (%)")
    ax.set_ylabel("share of prompts")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, title: str = "Planted vs recovered categories") -> Figure:
    """Confusion matrix (rows planted, columns recovered), counts written in the cells."""
    m = np.asarray(matrix)
    fig = Figure(figsize=(5.0, 4.2))
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(Category)), _LABELS, rotation=30, ha="right")
    ax.set_yticks(range(len(Category)), _LABELS)
    ax.set_xlabel("recovered")
    ax.set_ylabel("planted")
    for (i, j), n in np.ndenumerate(m):
        ax.text(j, i, str(int(n)), ha="center", va="center", color="white" if n > m.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def pareto_figure(rows: Sequence[SweepRow], title: str = "FLOPs reduction vs fidelity") -> Figure:
    """Every sweep point (mean NMSE of the chosen masks vs mean FLOPs reduction), the Pareto front joined."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    ax.scatter(
        [r.nmse_mean for r in rows],
        [100 * r.flops_reduction_mean for r in rows],
        s=14,
        color="#999999",
        label="grid points",
    )
    front = pareto_front(rows)
    ax.plot(
        [r.nmse_mean for r in front],
        [100 * r.flops_reduction_mean for r in front],
        "o-",
        color="#0072b2",
        label="Pareto front",
    )
    for r in front:
        ax.annotate(
            f"tau={r.tau:g}",
            (r.nmse_mean, 100 * r.flops_reduction_mean),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    if any(r.nmse_mean > 0 for r in rows):
        ax.set_xscale("symlog", linthresh=max(1e-6, min(r.nmse_mean for r in rows if r.nmse_mean > 0)))
    ax.set_xlabel("mean NMSE of the chosen masks")
    ax.set_ylabel("mean FLOPs reduction (%)")
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
