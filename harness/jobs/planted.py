"""Job ``planted``: the proof on planted structure - characterization recovers known head categories.

Each trial (one seed) draws random head categories for a synthetic model (:func:`planted_labels`), builds
q, k, v whose attention follows them on realistic multi-image layouts (:mod:`bsight.kernels.sparsity.planted`:
e.g. 20 images of 256 tokens after short text labels), characterizes every layer exactly as a real model
is characterized (prompt-level NMSE selection at tau, dataset-level aggregation with delta and gamma) and
compares the recovered head map with the planted labels. One row per trial; its part of the characterization
section shows the recovery rate against the target (98%) and the confusion matrix (figure and table). No model
and no GPU: the default CPU run includes it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.characterize import characterize_layers
from bsight.harness.figures import confusion_figure
from bsight.harness.hookspecs import hookimpl
from bsight.harness.jobtypes import ConfigIssue, JobSpec, JobType, Metric, ResultRow, SectionData, Unit, fingerprint
from bsight.harness.plots import make_plot
from bsight.kernels.dispatch import LayerCall
from bsight.kernels.sparsity.aggregate import DEFAULT_PARAMS, build_head_map
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.characterization import CharacterizationResult
from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.planted import confusion_matrix, planted_labels, planted_qkv, realistic_layout

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet


class PlantedPrompt(BaseModel):
    """One synthetic prompt: a text prefix, ``images`` images each after a text label, a question."""

    model_config = ConfigDict(extra="forbid")
    images: int = Field(20, ge=1)
    image_tokens: int = Field(256, ge=3)
    label_tokens: int = Field(16, ge=0)
    prefix_tokens: int = Field(64, ge=0)
    question_tokens: int = Field(64, ge=1)


def _default_prompts() -> list[PlantedPrompt]:
    return [PlantedPrompt(), PlantedPrompt(images=9, image_tokens=180, label_tokens=5)]


class PlantedSpec(JobSpec):
    type: Literal["planted"]
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        [0], min_length=1, description="one trial per seed (labels, q, k, v all drawn from it)"
    )
    layers: int = Field(4, ge=1)
    heads: int = Field(16, ge=1, description="query heads per layer")
    kv_heads: int = Field(4, ge=1)
    head_dim: int = Field(64, ge=8)
    prompts: list[PlantedPrompt] = Field(default_factory=_default_prompts, min_length=1)
    sink_fraction: float = Field(0.01, gt=0, le=1)
    diffuse_share: float = Field(0.25, ge=0, le=1, description="share of heads planted dense (diffuse attention)")
    tau: float = Field(DEFAULT_PARAMS.tau, gt=0)
    delta: float = Field(DEFAULT_PARAMS.delta, ge=0, le=1)
    gamma: float = Field(DEFAULT_PARAMS.gamma, ge=0, le=1)
    target: float = Field(0.98, ge=0, le=1, description="recovery rate the proof needs")
    threads: int = Field(
        1,
        ge=1,
        description="torch intra-op threads while a trial runs (its many small tensor ops gain nothing from more)",
    )


class PlantedRow(ResultRow):
    """One trial (``key``: ``seed<n>``): planted vs recovered categories and the recovery rate."""

    seed: int
    recovery: float
    confusion: list[list[int]]  # [planted][recovered], rows/columns in Category order
    tokens: list[int]  # length of each prompt
    seconds: float


def run_trial(spec: PlantedSpec, seed: int) -> PlantedRow:
    """Plant, characterize, aggregate, compare: one trial."""
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    labels = planted_labels(spec.layers, spec.heads, g, spec.diffuse_share)
    sinks = SinkPolicy(fraction=spec.sink_fraction)
    layouts = [
        realistic_layout(
            p.images,
            p.image_tokens,
            prefix_tokens=p.prefix_tokens,
            label_tokens=p.label_tokens,
            question_tokens=p.question_tokens,
            sinks=sinks,
        )
        for p in spec.prompts
    ]
    records = []
    for i, lay in enumerate(layouts):
        layers = (
            (
                *planted_qkv(lay, labels[layer], spec.kv_heads, spec.head_dim, g),
                LayerCall(layer_idx=layer, scale=spec.head_dim**-0.5),
            )
            for layer in range(spec.layers)
        )
        records.append(characterize_layers(f"planted{i}", lay, layers))
    result = CharacterizationResult(
        model_id="planted",
        weights="synthetic",
        num_layers=spec.layers,
        num_heads=spec.heads,
        num_kv_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        sliding_windows=[None] * spec.layers,
        dataset=DatasetInfo(name="planted", size=len(layouts)),
        sink_policy=sinks,
        prompts=records,
    )
    found = build_head_map(
        result, CharacterizationParams(tau=spec.tau, delta=spec.delta, gamma=spec.gamma)
    ).category_array()
    matrix = confusion_matrix(labels.numpy(), found)
    return PlantedRow(
        key=f"seed{seed}",
        seed=seed,
        recovery=float(np.trace(matrix) / matrix.sum()),
        confusion=matrix.tolist(),
        tokens=[lay.length for lay in layouts],
        seconds=time.perf_counter() - t0,
    )


class PlantedJob(JobType):
    type = "planted"
    report_order = 40
    Spec = PlantedSpec
    Row = PlantedRow
    section = "characterization"  # with the characterize job's part
    title = "Planted-structure check"

    def check(self, spec: PlantedSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        issues = []
        if spec.heads % spec.kv_heads:
            issues.append(
                ConfigIssue(
                    ("kv_heads",), f"{spec.heads} query heads are not a multiple of {spec.kv_heads} key/value heads"
                )
            )
        if len(set(spec.seeds)) != len(spec.seeds):
            issues.append(ConfigIssue(("seeds",), f"seeds must be distinct, got {spec.seeds}"))
        return issues

    def expand(self, spec: PlantedSpec, config: BenchmarkConfig) -> list[Unit]:
        fp = fingerprint(self.type, spec.model_dump(exclude={"name", "type", "seeds", "target", "threads"}))
        return [Unit(job=spec.name, type=self.type, id=spec.name, fingerprint=fp)]

    def run_unit(self, spec: PlantedSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[PlantedRow]) -> None:
        ctx.expect(len(spec.seeds))
        todo = [s for s in spec.seeds if f"seed{s}" not in rows.done]
        before = torch.get_num_threads()
        torch.set_num_threads(spec.threads)
        try:
            with ctx.progress(unit.id, total=len(spec.seeds), completed=len(spec.seeds) - len(todo)) as bar:
                for seed in todo:
                    rows.append(run_trial(spec, seed))
                    bar.advance()
        finally:
            torch.set_num_threads(before)

    def _trials(self, run: RunFolder, rec: UnitRecord) -> list[PlantedRow]:
        spec: PlantedSpec = self.spec_of(rec)
        stored = {r.seed: r for r in run.rows(rec.unit, PlantedRow)}
        return [stored[s] for s in spec.seeds if s in stored]

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        jobs, plots = [], []
        labels = [c.label for c in Category]
        for rec in records:
            trials = self._trials(run, rec)
            if not trials:
                continue
            spec: PlantedSpec = self.spec_of(rec)
            total = np.sum([t.confusion for t in trials], axis=0)
            rate = float(np.trace(total) / total.sum())
            plot = make_plot(
                f"planted-{rec.unit.job}-confusion",
                f"Planted vs recovered head categories: {spec.layers} layers x {spec.heads} heads x "
                f"{len(trials)} trial(s)",
                confusion_figure(total),
            )
            plots.append(plot)
            jobs.append(
                {
                    "job": rec.unit.job,
                    "spec": spec,
                    "trials": trials,
                    "expected": len(spec.seeds),
                    "recovery": rate,
                    "passed": rate >= spec.target,
                    "confusion": [
                        {"planted": labels[i], "counts": [int(x) for x in row], "total": int(row.sum())}
                        for i, row in enumerate(total)
                    ],
                    "labels": labels,
                    "plot": plot,
                    "heads_total": int(total.sum()),
                }
            )
        if not jobs:
            return None
        return SectionData(context={"jobs": jobs}, plots=plots)

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        out = []
        for rec in records:
            trials = self._trials(run, rec)
            if trials:
                total = np.sum([t.confusion for t in trials], axis=0)
                out.append(
                    Metric(
                        name=f"{rec.unit.job}/recovery",
                        value=float(np.trace(total) / total.sum()),
                        higher_is_better=True,
                    )
                )
        return out


@hookimpl
def bsight_job_types():
    return [PlantedJob]
