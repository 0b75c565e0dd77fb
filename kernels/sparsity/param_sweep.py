"""Parameter sweep: FLOPs reduction vs fidelity for a grid of (tau, delta, gamma), from stored NMSE tables.

Each grid point builds the head map that characterization would ship, then measures it on the characterized
prompts: model-level FLOPs reduction per prompt (exact kept-pair counts) and the NMSE every head incurs
under its head-map category (dense heads incur 0). No model run is needed, so a sweep over hundreds of
points takes seconds. Rows leave room for task agreement, filled in by the task runners.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from bsight.kernels.sparsity.aggregate import DEFAULT_PARAMS, aggregate_categories, category_histograms
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.characterization import CharacterizationResult, nmse_of_categories
from bsight.kernels.sparsity.flops import reduction_from_pairs
from bsight.kernels.sparsity.layout import SinkPolicy


class SweepRow(BaseModel):
    """One grid point. ``nmse_*`` are over all (prompt, layer, head) triples of the characterized prompts."""

    model_config = ConfigDict(extra="forbid")
    tau: float
    delta: float
    gamma: float
    sink_policy: SinkPolicy  # of the characterization run (sweep the sink fraction with one run per policy)
    flops_reduction_mean: float
    flops_reduction_median: float
    flops_reduction_min: float
    nmse_mean: float
    nmse_p99: float
    nmse_max: float
    shares: dict[str, float]  # share of heads in each category
    agreement: float | None = None  # share of task samples whose answer matches dense (set by task runs)
    task_scores: dict[str, float] = {}  # per-task accuracy or agreement, set by task runs


def sweep(
    result: CharacterizationResult,
    taus: Sequence[float],
    deltas: Sequence[float] | None = None,
    gammas: Sequence[float] | None = None,
) -> list[SweepRow]:
    """Rows for every combination of the given values (``deltas``/``gammas`` default to the defaults)."""
    if not result.prompts:
        raise ValueError(f"no characterized prompts for {result.model_id}: nothing to sweep")
    nmse, pairs = result.nmse_array(), result.pairs_array()
    softmax = np.array([k != "linear" for k in result.kinds()])  # hybrid models: linear layers have no heads
    rows = []
    for tau in sorted(set(taus)):
        hist = category_histograms(result.choices(tau))
        for delta, gamma in itertools.product(deltas or [DEFAULT_PARAMS.delta], gammas or [DEFAULT_PARAMS.gamma]):
            cats = aggregate_categories(hist, delta, gamma)
            red = reduction_from_pairs(pairs, cats)
            err = nmse_of_categories(nmse, cats)[..., softmax, :]
            rows.append(
                SweepRow(
                    tau=tau,
                    delta=delta,
                    gamma=gamma,
                    sink_policy=result.sink_policy,
                    flops_reduction_mean=float(red.mean()),
                    flops_reduction_median=float(np.median(red)),
                    flops_reduction_min=float(red.min()),
                    nmse_mean=float(err.mean()),
                    nmse_p99=float(np.quantile(err, 0.99)),
                    nmse_max=float(err.max()),
                    shares={c.label: float((cats[softmax] == c.value).mean()) for c in Category},
                )
            )
    return rows


def pareto_front(
    rows: Sequence[SweepRow], fidelity: str = "nmse_mean", saving: str = "flops_reduction_mean"
) -> list[SweepRow]:
    """Rows no other row beats on both axes (lower ``fidelity`` error, higher ``saving``), by saving."""
    front = [
        r
        for r in rows
        if not any(
            getattr(o, fidelity) <= getattr(r, fidelity)
            and getattr(o, saving) >= getattr(r, saving)
            and (getattr(o, fidelity) < getattr(r, fidelity) or getattr(o, saving) > getattr(r, saving))
            for o in rows
        )
    ]
    return sorted(front, key=lambda r: getattr(r, saving))
