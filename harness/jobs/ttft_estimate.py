"""Estimated time to first token of a head map from published H100 measurements (library of the job types).

No GPU is needed: the estimate is Amdahl's law over two published results shipped with bsight,

- the dense attention share of TTFT, ``p = attention_ms / ttft_ms`` of dense Qwen2-VL-7B at one prompt length
  (``reports/published/ttft_h100.json``), and
- per head category, the attention time of the BlindSight kernel (``ours``) relative to cuDNN dense attention
  at that length, ``t_c / t_dense`` (``reports/published/kernel_sweep_h100.json``; dense heads: 1),

weighted by a head map's category shares: ``TTFT_ratio = (1 - p) + p * sum_c share_c * t_c / t_dense`` and
speedup ``1 / TTFT_ratio`` (:func:`estimated_ttft_speedup`). It is what that head map's category mix would give
on an H100 for a Qwen2-VL-7B-shaped prompt, not a measurement of the model the run used or of this machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bsight.harness.jobs.published import load_published
from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES, Category

TTFT_FILE = "reports/published/ttft_h100.json"
KERNEL_FILE = "reports/published/kernel_sweep_h100.json"
TOKENS = 36_864  # the shortest length both published results measured
LAYOUT = "mixed"  # the kernel sweep's layout of mixed image sizes (its targets use it; slower than equal "peers")
SPARSE_METHOD, DENSE_METHOD = "ours", "cudnn"  # kernel sweep methods: BlindSight's kernel, the dense reference


def estimated_ttft_speedup(
    shares: Mapping[str, float], attention_share: float, time_ratio: Mapping[str, float]
) -> float:
    """Amdahl's estimate of the TTFT speedup of a head map over dense attention.

    ``shares``: share of the heads per category label (normalized by their sum, so shares over the softmax
    heads of a map with other layers work too); ``attention_share``: ``p``, dense attention's share of dense
    TTFT, in [0, 1]; ``time_ratio``: per category label the attention time relative to dense, ``t_c / t_dense``
    (``dense`` defaults to 1). Returns ``1 / ((1 - p) + p * sum_c share_c * t_c / t_dense)``: 1.0 for an
    all-dense map, ``1 / ((1 - p) + p * t_c / t_dense)`` (the Amdahl bound of category ``c``) for an all-``c``
    map. A category with a positive share and no time ratio is a ValueError naming it.
    """
    if not 0.0 <= attention_share <= 1.0:
        raise ValueError(f"attention share must be in [0, 1], got {attention_share}")
    total = sum(shares.values())
    if not total > 0 or any(v < 0 for v in shares.values()):
        raise ValueError(f"category shares must be >= 0 with a positive sum, got {dict(shares)}")
    ratios = {Category.DENSE.label: 1.0, **time_ratio}
    missing = sorted(c for c, v in shares.items() if v > 0 and c not in ratios)
    if missing:
        raise ValueError(f"no attention time ratio for categories {missing}; known: {sorted(ratios)}")
    attention = sum(v * ratios[c] for c, v in shares.items() if v > 0) / total
    return 1.0 / ((1.0 - attention_share) + attention_share * attention)


@dataclass(frozen=True)
class PublishedSource:
    """One published JSON an estimate reads: its path, SHA-256 (first 16 hex digits) and provenance."""

    file: str
    sha256: str
    git_commit: str | None
    gpu: str | None
    date: str | None

    def text(self) -> str:
        commit = (self.git_commit or "unrecorded commit")[:12]
        return (
            f"{self.file} (sha256 {self.sha256}; {self.gpu or 'unrecorded GPU'}, commit {commit}, {self.date or '?'})"
        )


@dataclass(frozen=True)
class TTFTEstimate:
    """The published numbers :func:`estimated_ttft_speedup` is evaluated with, and where they come from."""

    attention_share: float  # p: dense attention ms / dense TTFT ms
    dense_ttft_ms: float
    dense_attention_ms: float
    time_ratio: dict[str, float]  # per sparse category: t_c / t_dense
    tokens: int
    layout: str
    model: str
    sources: tuple[PublishedSource, ...] = field(default=())
    # the TTFT file's own blindsight run at that length: its head map's shares and measured TTFT speedup
    measured_shares: dict[str, float] | None = None
    measured_speedup: float | None = None

    def speedup(self, shares: Mapping[str, float]) -> float:
        """The estimated TTFT speedup of a head map with these category shares."""
        return estimated_ttft_speedup(shares, self.attention_share, self.time_ratio)

    def bounds(self) -> dict[str, float]:
        """Per sparse category: the speedup of a map whose heads are all of that category (Amdahl bound)."""
        return {c: self.speedup({c: 1.0}) for c in self.time_ratio}

    def caption(self) -> str:
        """What the estimate is, plainly, with the files it comes from."""
        return (
            f"estimated TTFT speedup on an H100 for a {self.model}-shaped prompt of {self.tokens:,} tokens, from "
            f"published measurements ({', '.join(s.file for s in self.sources)}), not measured on this machine"
        )

    def note(self) -> str:
        """The numbers and provenance behind the estimate (for a table note)."""
        ratios = ", ".join(f"{c} {r:.3f}" for c, r in self.time_ratio.items())
        return (
            f"Estimated TTFT speedup = 1 / ((1 - p) + p * sum_c share_c * t_c / t_dense), with p = "
            f"{self.attention_share:.3f} (dense attention {self.dense_attention_ms:.1f} ms of TTFT "
            f"{self.dense_ttft_ms:.1f} ms) and t_c / t_dense of the BlindSight kernel vs cuDNN dense ({self.layout} "
            f"image sizes): {ratios}; dense heads 1. It assumes each head runs at its category's rate and nothing "
            f"but attention changes.{self.check()} Sources: {'; '.join(s.text() for s in self.sources)}."
        )

    def check(self) -> str:
        """The estimate next to the published measured TTFT speedup of that run's own head map, if recorded."""
        if not self.measured_shares or not self.measured_speedup:
            return ""
        dense = self.measured_shares.get(Category.DENSE.label, 0.0)
        return (
            f" Check: for the published run's own head map ({dense:.0%} dense heads) it gives "
            f"{self.speedup(self.measured_shares):.3f}x; that run measured {self.measured_speedup:.3f}x."
        )


def _source(path: str, digest: str, doc: dict[str, Any]) -> PublishedSource:
    prov = doc.get("provenance") or {}
    return PublishedSource(
        file=path,
        sha256=digest,
        git_commit=prov.get("git_commit"),
        gpu=prov.get("gpu"),
        date=str(prov.get("created") or prov.get("date") or "")[:10] or None,
    )


def published_ttft_estimate(
    ttft_file: str = TTFT_FILE, kernel_file: str = KERNEL_FILE, tokens: int = TOKENS, layout: str = LAYOUT
) -> TTFTEstimate | None:
    """The estimate's numbers from the published TTFT and kernel sweep results at ``tokens``: None when either
    file is absent; a file without the numbers at that length is a ValueError naming what is missing."""
    ttft, kernel = load_published(ttft_file), load_published(kernel_file)
    if ttft is None or kernel is None:
        return None
    (tdoc, tsha), (kdoc, ksha) = ttft, kernel
    entry = next((e for e in tdoc.get("lengths", []) if e.get("target_tokens") == tokens), None)
    dense = (entry or {}).get("dense") or {}
    if not dense.get("ttft_ms") or dense.get("attention_ms") is None:
        raise ValueError(f"published result {ttft_file}: no dense ttft_ms and attention_ms at {tokens} tokens")
    ms: dict[tuple[str, str], float] = {}
    for r in kdoc.get("rows", []):
        if r.get("tokens") == tokens and r.get("layout") == layout and isinstance(r.get("ms"), int | float):
            ms.setdefault((r.get("method"), r.get("category")), float(r["ms"]))
    t_dense = ms.get((DENSE_METHOD, Category.DENSE.label))
    wanted = [c.label for c in SPARSE_CATEGORIES]
    absent = [c for c in wanted if (SPARSE_METHOD, c) not in ms]
    if not t_dense or absent:
        raise ValueError(
            f"published result {kernel_file}: at {tokens} tokens ({layout} layout) need {DENSE_METHOD} dense and "
            f"{SPARSE_METHOD} {', '.join(wanted)}; missing: {', '.join(absent) or DENSE_METHOD + ' dense'}"
        )
    p = float(dense["attention_ms"]) / float(dense["ttft_ms"])
    if not (0.0 <= p <= 1.0 and math.isfinite(p)):
        raise ValueError(f"published result {ttft_file}: dense attention share {p} at {tokens} tokens")
    shares = (tdoc.get("head_map") or {}).get("shares")
    measured = (entry.get("speedup") or {}).get("ttft")
    model = str((tdoc.get("model") or {}).get("id") or "Qwen/Qwen2-VL-7B-Instruct").split("/")[-1]
    return TTFTEstimate(
        attention_share=p,
        dense_ttft_ms=float(dense["ttft_ms"]),
        dense_attention_ms=float(dense["attention_ms"]),
        time_ratio={c: ms[(SPARSE_METHOD, c)] / t_dense for c in wanted},
        tokens=tokens,
        layout=layout,
        model=model.removesuffix("-Instruct"),
        sources=(_source(ttft_file, tsha, tdoc), _source(kernel_file, ksha, kdoc)),
        measured_shares={str(k): float(v) for k, v in shares.items()} if isinstance(shares, dict) else None,
        measured_speedup=float(measured) if isinstance(measured, int | float) else None,
    )
