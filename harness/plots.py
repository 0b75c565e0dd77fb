"""Figures for reports: matplotlib Figure -> inline SVG, and the generic plots every section can use.

Reports are single self-contained HTML files, so each figure becomes inline SVG text. Several SVGs share one
HTML document, so the ids matplotlib writes (``patch_1``, clip paths, markers) get a per-plot prefix;
otherwise a ``<use href="#m...">`` in one plot could resolve to an element of another. Figures are built on
:class:`matplotlib.figure.Figure` directly (no pyplot global state). Section code from other modules may hand
in any Figure (heatmaps, ...) through :func:`make_plot`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

SVG_RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9}


@dataclass(frozen=True)
class Plot:
    """A rendered figure: ``name`` (unique within a report, a file stem), caption ``title``, ``svg`` text."""

    name: str
    title: str
    svg: str

    @property
    def file(self) -> str:
        """Path, relative to the run folder, where the Markdown report links this plot."""
        return f"plots/{self.name}.svg"


def new_figure(width: float = 6.0, height: float = 3.2) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def figure_to_svg(fig: Figure, prefix: str) -> str:
    """The figure as an ``<svg>`` element (no XML prolog, no timestamp) whose ids start with ``prefix``."""
    buf = io.StringIO()
    with rc_context({**SVG_RC, "svg.hashsalt": prefix}):  # fixed salt: the same figure gives the same SVG
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", prefix)
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{safe}-{m.group(1)}"', text)
    text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{safe}-{m.group(1)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{safe}-{m.group(1)})", text)
    return text


def make_plot(name: str, title: str, fig: Figure) -> Plot:
    return Plot(name=name, title=title, svg=figure_to_svg(fig, name))


LEGEND_INSIDE_MAX = 6  # more series than this: the legend goes to the right of the axes


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    hline: float | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> Figure:
    """One line per series (e.g. attention time or speedup vs prompt tokens, one series per method).

    ``styles`` gives matplotlib line keywords per series label (colour, linestyle, marker), so that plots
    with many series can encode two dimensions (say colour = head category, dash = method)."""
    many = len(series) > LEGEND_INSIDE_MAX
    fig = new_figure(width=8.0 if many else 6.0, height=3.6 if many else 3.2)
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label, **{"marker": "o", "markersize": 3, **(styles or {}).get(label, {})})
    if hline is not None:
        ax.axhline(hline, color="0.5", linewidth=0.8, linestyle="--")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if many:
        ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    elif len(series) > 1:
        ax.legend(frameon=False)
    return fig


def cdf_plot(series: Mapping[str, Sequence[float]], xlabel: str) -> Figure:
    """Empirical CDF of per-prompt values (e.g. FLOPs reduction), one step line per series."""
    fig = new_figure()
    ax = fig.add_subplot()
    for label, values in series.items():
        v = np.sort(np.asarray(values, dtype=float))
        if v.size:
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=f"{label} (n={v.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of prompts")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    return fig


def interval_plot(
    labels: Sequence[str], values: Sequence[float], lo: Sequence[float], hi: Sequence[float], xlabel: str
) -> Figure:
    """Point estimates with intervals, one row per label, and a zero line (accuracy deltas with CIs)."""
    fig = new_figure(height=1.2 + 0.3 * len(labels))
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    v = np.asarray(values, dtype=float)
    err = np.vstack([v - np.asarray(lo, dtype=float), np.asarray(hi, dtype=float) - v])
    ax.errorbar(v, y, xerr=err, fmt="o", capsize=3)
    ax.axvline(0.0, color="0.5", linewidth=0.8, linestyle="--")
    ax.set_yticks(y, list(labels))
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    return fig
