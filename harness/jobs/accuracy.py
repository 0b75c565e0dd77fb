"""Job ``accuracy``: every model x method x task, greedy answers scored per sample, methods vs a baseline.

One unit per (model, method, task). For each sample: ``adapter.prepare``, ``adapter.generate`` (greedy) under
the method, ``task.extract``, ``task.score``; one :class:`AccuracyRow` per sample. Units are shardable: a
data-parallel session splits each unit's samples over its ranks.

The report pairs each method with the baseline (``dense``) on the samples both answered: the task's headline
score as upstream reports it (``Task.headline``: ``micro`` over samples, ``macro`` = mean of per-subtask
accuracies), its change vs the baseline with a paired bootstrap CI (stratified by subtask for ``macro``), the
share of samples whose extracted answer agrees with the baseline's, unparsed generations, and a per-subtask
breakdown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from bsight.harness import stats
from bsight.harness.jobs.base import (
    ConfigIssue,
    JobSpec,
    JobType,
    Metric,
    ResultRow,
    SectionData,
    Unit,
    fingerprint,
    name_issues,
    selected,
)
from bsight.harness.plots import Plot, interval_plot, make_plot

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Prepared, Sample, Task
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet


DEFAULT_MAX_NEW_TOKENS = 16  # for tasks that declare no default_max_new_tokens
Headline = Literal["micro", "macro"]


class AccuracySpec(JobSpec):
    type: Literal["accuracy"]
    models: list[str] | None = Field(None, description="names from `models:`; default all")
    methods: list[str] | None = Field(None, description="names from `methods:`; default all")
    tasks: list[str] | None = Field(None, description="names from `tasks:`; default all")
    baseline: str | None = Field("dense", description="method name the others are compared with; null for none")
    limit: int | None = Field(None, ge=1, description="first N samples of each task")
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description=f"tokens to generate; default: the task's default_max_new_tokens, else {DEFAULT_MAX_NEW_TOKENS}",
    )
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for the paired CI")
    confidence: float = Field(0.95, gt=0, lt=1)


class AccuracyRow(ResultRow):
    """One generated answer. ``key`` is the sample id."""

    sample_id: str
    task: str
    subtask: str
    model: str
    method: str
    weights: Literal["trained", "random"]
    prompt_tokens: int
    generation: str
    extracted: str | None
    rule: str
    gold: str
    correct: bool
    prefill_s: float
    total_s: float
    overhead_ms: dict[str, float]
    max_new_tokens: int | None = None  # the generation budget used (None in rows of older runs)


def run_seed(run: RunFolder) -> int:
    """The run's seed, which also seeds the bootstrap so a re-rendered report shows the same CIs."""
    return int(run.config_data().get("run", {}).get("seed", 0))


class AccuracyJob(JobType):
    type = "accuracy"
    Spec = AccuracySpec
    Row = AccuracyRow
    section = "accuracy"
    title = "Accuracy"
    shardable = True

    def check(self, spec: AccuracySpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        issues = name_issues(spec, config, ("models", "methods", "tasks"))
        methods = selected(spec, config, "methods")
        if spec.baseline is not None and spec.baseline not in methods:
            issues.append(
                ConfigIssue(
                    ("baseline",),
                    f"{spec.baseline!r} is not among this job's methods ({', '.join(methods) or 'none'}); add it or set baseline: null",
                )
            )
        return issues

    def expand(self, spec: AccuracySpec, config: BenchmarkConfig) -> list[Unit]:
        from bsight.harness.jobs.baselines import method_pattern_identity
        from bsight.harness.jobs.flops import method_head_map_identity

        units = []
        index = next((i for i, s in enumerate(config.jobs) if s is spec), len(config.jobs))
        methods = selected(spec, config, "methods")
        if spec.baseline is not None:  # the baseline first, so partial runs have something to compare with
            methods = [spec.baseline] + [m for m in methods if m != spec.baseline]
        for model in selected(spec, config, "models"):
            for task in selected(spec, config, "tasks"):
                for method in methods:
                    # a head map re-characterized (or patterns re-searched) by an earlier job of this run makes the
                    # method's answers stale
                    inputs = [
                        i
                        for i in (
                            method_head_map_identity(config, method, index),
                            method_pattern_identity(config, method, index),
                        )
                        if i is not None
                    ]
                    fp = fingerprint(
                        self.type,
                        config.models[model].model_dump(),
                        config.methods[method].model_dump(),
                        config.tasks[task].model_dump(),
                        spec.max_new_tokens,
                        *inputs,
                    )
                    units.append(
                        Unit(
                            job=spec.name,
                            type=self.type,
                            id=f"{spec.name}/{model}/{method}/{task}",
                            model=model,
                            method=method,
                            task=task,
                            fingerprint=fp,
                        )
                    )
        return units

    def run_unit(self, spec: AccuracySpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[AccuracyRow]) -> None:
        adapter, method, task = ctx.model(unit.model), ctx.method(unit.method), ctx.task(unit.task)
        method.setup(adapter.info)
        samples = ctx.samples(unit.task, spec.limit)
        max_new_tokens = spec.max_new_tokens or task.default_max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        check_budget(rows, max_new_tokens, unit)
        ctx.expect(len(samples))
        ctx.note(headline=task.headline, max_new_tokens=max_new_tokens)
        mine = ctx.shard(samples, key=lambda s: s.id)
        todo = [s for s in mine if s.id not in rows.done]
        with ctx.progress(unit.id, total=len(mine), completed=len(mine) - len(todo)) as bar:
            for sample in todo:
                rows.append(
                    greedy_answer(
                        adapter,
                        method,
                        task,
                        sample,
                        adapter.prepare(sample),
                        max_new_tokens,
                        key=sample.id,
                        model=unit.model,
                        method_name=unit.method,
                        task_name=unit.task,
                    )
                )
                bar.advance()

    # ------------------------------------------------------------------------------------- reporting

    def _groups(self, run: RunFolder, records: list[UnitRecord]) -> list[dict]:
        """Per (job, model, task): each method's rows keyed by sample id, baseline first."""
        groups: dict[tuple[str, str, str], dict] = {}
        for rec in records:
            u = rec.unit
            spec: AccuracySpec = self.spec_of(rec)
            g = groups.setdefault(
                (u.job, u.model, u.task),
                {"job": u.job, "model": u.model, "task": u.task, "spec": spec, "methods": {}, "headline": "micro"},
            )
            g["methods"][u.method] = {"record": rec, "rows": {r.key: r for r in run.rows(u, AccuracyRow)}}
            if "headline" in rec.info:  # what the task declared when it ran (one task per group)
                g["headline"] = rec.info["headline"]
        return list(groups.values())

    def _method_stats(self, group: dict, seed: int) -> list[dict]:
        """Per method: headline accuracy, counts, and (against the baseline, on shared samples) the change with
        its paired CI and the answer agreement."""
        spec: AccuracySpec = group["spec"]
        headline: Headline = group["headline"]
        base = group["methods"].get(spec.baseline) if spec.baseline else None
        out = []
        for name, entry in group["methods"].items():
            rows = entry["rows"]
            correct = [r.correct for r in rows.values()]
            subtasks = [r.subtask for r in rows.values()]
            item: dict[str, Any] = {
                "method": name,
                "n": len(rows),
                "expected": entry["record"].expected,
                "status": entry["record"].status,
                "accuracy": stats.headline_accuracy(headline, subtasks, correct),
                "micro_accuracy": stats.accuracy(correct),
                "unparsed": stats.unparsed([r.extracted for r in rows.values()]),
                "is_baseline": name == spec.baseline,
                "delta": None,
                "agreement": None,
                "paired_n": 0,
                "prefill_ms": float(np.median([r.prefill_s for r in rows.values()]) * 1e3) if rows else float("nan"),
                "overhead_ms": float(np.mean([sum(r.overhead_ms.values()) for r in rows.values()]))
                if rows
                else float("nan"),
            }
            if base is not None and name != spec.baseline:
                keys = stats.paired(rows, base["rows"])
                d = stats.paired_bootstrap(
                    [rows[k].correct for k in keys],
                    [base["rows"][k].correct for k in keys],
                    resamples=spec.bootstrap,
                    confidence=spec.confidence,
                    seed=seed,
                    groups=[rows[k].subtask for k in keys] if headline == "macro" else None,
                )
                item.update(
                    delta=d,
                    paired_n=d.n,
                    agreement=stats.agreement(
                        [rows[k].extracted for k in keys], [base["rows"][k].extracted for k in keys]
                    )
                    if keys
                    else float("nan"),
                )
            out.append(item)
        return out

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        groups = [g for g in self._groups(run, records) if any(m["rows"] for m in g["methods"].values())]
        if not groups:
            return None
        tables, plots = [], []
        seed = run_seed(run)
        for gi, g in enumerate(groups):
            methods = self._method_stats(g, seed)
            weights = sorted({r.weights for m in g["methods"].values() for r in m["rows"].values()})
            subtasks = sorted({r.subtask for m in g["methods"].values() for r in m["rows"].values()})
            breakdown = []
            if len(subtasks) > 1:
                per_method = {
                    name: stats.by_group(
                        [r.subtask for r in m["rows"].values()], [r.correct for r in m["rows"].values()]
                    )
                    for name, m in g["methods"].items()
                }
                breakdown = [
                    {"subtask": st, "cells": [per_method[name].get(st, (float("nan"), 0)) for name in g["methods"]]}
                    for st in subtasks
                ]
            compared = [m for m in methods if m["delta"] is not None and m["paired_n"]]
            plot: Plot | None = None
            if compared:
                spec: AccuracySpec = g["spec"]
                fig = interval_plot(
                    [m["method"] for m in compared],
                    [100 * m["delta"].delta for m in compared],
                    [100 * m["delta"].lo for m in compared],
                    [100 * m["delta"].hi for m in compared],
                    f"accuracy change vs {spec.baseline}, percentage points ({spec.confidence:.0%} paired bootstrap CI)",
                )
                plot = make_plot(
                    f"accuracy-{gi}-{g['model']}-{g['task']}",
                    f"{g['model']} on {g['task']}: change vs {spec.baseline}",
                    fig,
                )
                plots.append(plot)
            tables.append(
                {
                    "job": g["job"],
                    "model": g["model"],
                    "task": g["task"],
                    "baseline": g["spec"].baseline,
                    "confidence": g["spec"].confidence,
                    "headline": g["headline"],
                    "random_weights": "random" in weights,
                    "methods": methods,
                    "method_names": list(g["methods"]),
                    "breakdown": breakdown,
                    "plot": plot,
                }
            )
        return SectionData(context={"tables": tables}, plots=plots)

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        out = []
        seed = run_seed(run)
        for g in self._groups(run, records):
            for m in self._method_stats(g, seed):
                if not m["n"]:
                    continue
                stem = f"{g['job']}/{g['model']}/{g['task']}/{m['method']}"
                out.append(Metric(name=f"{stem}/accuracy", value=m["accuracy"], higher_is_better=True))
                out.append(Metric(name=f"{stem}/unparsed_rate", value=m["unparsed"] / m["n"], higher_is_better=False))
                if m["agreement"] is not None and m["paired_n"]:
                    out.append(Metric(name=f"{stem}/agreement", value=m["agreement"], higher_is_better=True))
                    out.append(Metric(name=f"{stem}/delta", value=m["delta"].delta, higher_is_better=True))
        return out


def greedy_answer(
    adapter: ModelAdapter,
    method: AttentionMethod,
    task: Task,
    sample: Sample,
    prepared: Prepared,
    max_new_tokens: int,
    *,
    key: str,
    model: str,
    method_name: str,
    task_name: str,
) -> AccuracyRow:
    """Greedy generation under ``method``, extracted and scored by the task: one accuracy row (also the tau
    sweep's answers)."""
    method.overhead.take()  # count only this sample's overhead
    gen = adapter.generate(prepared, method, max_new_tokens)
    extraction = task.extract(gen.text, sample)
    return AccuracyRow(
        key=key,
        sample_id=sample.id,
        task=task_name,
        subtask=sample.subtask,
        model=model,
        method=method_name,
        weights=adapter.info.weights,
        prompt_tokens=gen.prompt_tokens,
        generation=gen.text,
        extracted=extraction.answer,
        rule=extraction.rule,
        gold=sample.answer,
        correct=bool(task.score(extraction, sample)),
        prefill_s=gen.prefill_s,
        total_s=gen.total_s,
        overhead_ms=method.overhead.take(),
        max_new_tokens=max_new_tokens,
    )


def check_budget(rows: Iterable[AccuracyRow], max_new_tokens: int, unit: Unit) -> None:
    """Refuse to extend rows generated with another budget (the task's default changed since): a unit's rows
    must all answer under the same conditions."""
    used = sorted(
        {r.max_new_tokens for r in rows if r.max_new_tokens is not None and r.max_new_tokens != max_new_tokens}
    )
    if used:
        raise ValueError(
            f"unit {unit.id}: stored rows were generated with max_new_tokens={used} but this session uses {max_new_tokens}; "
            "set max_new_tokens in the job to the stored value, or rerun with --fresh"
        )
