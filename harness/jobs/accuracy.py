"""Job ``accuracy``: every model x method x task, greedy answers scored per sample, methods vs a baseline.

One unit per (model, method, task). For each sample: ``adapter.prepare``, ``adapter.generate`` (greedy) under
the method, ``task.extract``, ``task.score``; one :class:`AccuracyRow` per sample. Units are shardable: a
data-parallel session splits each unit's samples over its ranks.

The report pairs each method with the baseline (``dense``) on the samples both answered: the task's headline
score as upstream reports it (``Task.headline``: ``micro`` over samples, ``macro`` = mean of per-subtask
accuracies), its change vs the baseline with a paired bootstrap CI (stratified by subtask for ``macro``), the
agreement of the extracted answers with the baseline's over the pairs where both parsed (two unparsed answers
are not an agreement), the share of pairs where either side is unparsed, the share of identical generations,
unparsed generations, and a per-subtask breakdown. This job computes no teacher-forced KL (the tau sweep does).

Every table names the task's scoring protocol (``protocol`` task option: prompt, decoding and extraction; see
``plugins/tasks/protocols.py``). A protocol that samples (``Task.decoding().temperature > 0``) is run seeded: each
sample's seed derives from the run seed and the sample id, so every method samples with the same seed and a
resumed or sharded run reproduces it. Each row stores the prompt's text hash (the decoded model input of
:func:`bsight.harness.prompts_cmd.prompt_record`), its length in tokens and the raw generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from bsight.harness import stats
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import Sampling
from bsight.harness.jobs.answering import (
    DEFAULT_MAX_NEW_TOKENS,
    AccuracyRow,
    Headline,
    check_budget,
    greedy_answer,
    run_seed,
    sample_seed,
)
from bsight.harness.jobtypes import (
    ACCURACY_TABLE,
    Artifact,
    ConfigIssue,
    JobSpec,
    JobType,
    Metric,
    SectionData,
    Unit,
    fingerprint,
    inputs_identity,
    job_index,
    methods_consume,
    name_issues,
    selected,
)
from bsight.harness.plots import Plot, interval_plot, make_plot

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet


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
    bootstrap: int = Field(2000, ge=100, le=1_000_000, description="bootstrap resamples for the paired CI")
    confidence: float = Field(0.95, gt=0, lt=1)


class AccuracyJob(JobType):
    type = "accuracy"
    report_order = 10
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
                    f"{spec.baseline!r} is not among this job's methods ({', '.join(methods) or 'none'}); add "
                    "it or set baseline: null",
                )
            )
        return issues

    def consumes(self, spec: AccuracySpec, config: BenchmarkConfig) -> list[tuple[tuple[str | int, ...], Artifact]]:
        return methods_consume(config, selected(spec, config, "methods"))

    def expand(self, spec: AccuracySpec, config: BenchmarkConfig) -> list[Unit]:
        units = []
        index = job_index(spec, config)
        methods = selected(spec, config, "methods")
        if spec.baseline is not None:  # the baseline first, so partial runs have something to compare with
            methods = [spec.baseline] + [m for m in methods if m != spec.baseline]
        for model in selected(spec, config, "models"):
            for task in selected(spec, config, "tasks"):
                for method in methods:
                    # a head map re-characterized (or patterns re-searched) by an earlier job of this run makes the
                    # method's answers stale
                    inputs = inputs_identity(config, method, index)
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
        decoding = task.decoding()
        max_new_tokens = spec.max_new_tokens or decoding.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        check_budget(rows, max_new_tokens, unit)
        ctx.expect(len(samples))
        ctx.note(
            headline=task.headline,
            max_new_tokens=max_new_tokens,
            protocol=task.protocol,
            decoding="greedy" if decoding.greedy else f"sampling, temperature {decoding.temperature:g}, seeded",
        )
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
                        sampling=None
                        if decoding.greedy
                        else Sampling(decoding.temperature, sample_seed(ctx.seed, sample.id), decoding.top_p),
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
                {
                    "job": u.job,
                    "model": u.model,
                    "task": u.task,
                    "spec": spec,
                    "methods": {},
                    "headline": "micro",
                    "protocol": None,
                    "decoding": None,
                },
            )
            g["methods"][u.method] = {"record": rec, "rows": {r.key: r for r in run.rows(u, AccuracyRow)}}
            if "headline" in rec.info:  # what the task declared when it ran (one task per group)
                g["headline"] = rec.info["headline"]
            for key in ("protocol", "decoding"):  # runs before protocols were named record none
                if key in rec.info:
                    g[key] = rec.info[key]
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
                "either_unparsed": None,
                "exact_generation": None,
                "parsed_pairs": 0,
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
                agree = stats.answer_agreement(
                    [rows[k].extracted for k in keys],
                    [base["rows"][k].extracted for k in keys],
                    [rows[k].generation for k in keys],
                    [base["rows"][k].generation for k in keys],
                )
                item.update(
                    delta=d,
                    paired_n=d.n,
                    agreement=agree.rate,  # over pairs where both answers parsed
                    either_unparsed=agree.either_unparsed,
                    exact_generation=agree.exact_generation,
                    parsed_pairs=agree.parsed_pairs,
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
                    f"accuracy change vs {spec.baseline}, percentage points ({spec.confidence:.0%} paired "
                    "bootstrap CI)",
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
                    "protocol": g["protocol"],
                    "decoding": g["decoding"],
                    "random_weights": "random" in weights,
                    "methods": methods,
                    "method_names": list(g["methods"]),
                    "breakdown": breakdown,
                    "plot": plot,
                }
            )
        return SectionData(context={"tables": tables}, plots=plots)

    tables = (ACCURACY_TABLE,)

    def table(self, run: RunFolder, records: list[UnitRecord], name: str) -> list[dict[str, Any]]:
        """``accuracy``: per (model, method, task) the stored answers' accuracy and agreement with the job's
        baseline, as the section computes them (other reports show them, never recomputed)."""
        if name != ACCURACY_TABLE:
            return []
        seed = run_seed(run)
        plugins = {m: ref.get("plugin") for m, ref in run.config_data().get("methods", {}).items()}
        out = []
        for g in self._groups(run, records):
            for m in self._method_stats(g, seed):
                if m["n"]:
                    out.append(
                        {
                            "model": g["model"],
                            "task": g["task"],
                            "method": m["method"],
                            "plugin": plugins.get(m["method"]),
                            "tau": None,
                            "reference": False,
                            "job": g["job"],
                            "accuracy": m["accuracy"],
                            "n": m["n"],
                            "baseline": g["spec"].baseline,
                            "is_baseline": m["is_baseline"],
                            # None when no pair of answers parsed (there is no agreement to show)
                            "agreement": m["agreement"] if m["paired_n"] and m["parsed_pairs"] else None,
                            # for results.json: what the score means, its CI and the change vs the baseline
                            "label": m["method"],
                            "headline": g["headline"],
                            "protocol": g["protocol"],
                            "decoding": g["decoding"],
                            "ci": self._score_ci(g, m["method"], seed),
                            "delta": m["delta"] if m["paired_n"] else None,
                            "expected": m["expected"],
                            "status": m["status"],
                            "unparsed": m["unparsed"],
                            "prefill_ms": m["prefill_ms"],
                            "overhead_ms": m["overhead_ms"],
                        }
                    )
        return out

    @staticmethod
    def _score_ci(group: dict, method: str, seed: int) -> stats.PairedDelta:
        """Bootstrap CI of a method's headline score (macro: resampled within subtasks)."""
        spec: AccuracySpec = group["spec"]
        rows = list(group["methods"][method]["rows"].values())
        return stats.score_interval(
            [r.correct for r in rows],
            [r.subtask for r in rows] if group["headline"] == "macro" else None,
            resamples=spec.bootstrap,
            confidence=spec.confidence,
            seed=seed,
        )

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
                    if m["parsed_pairs"]:
                        out.append(Metric(name=f"{stem}/agreement", value=m["agreement"], higher_is_better=True))
                    out.append(
                        Metric(name=f"{stem}/either_unparsed", value=m["either_unparsed"], higher_is_better=False)
                    )
                    out.append(
                        Metric(name=f"{stem}/exact_generation", value=m["exact_generation"], higher_is_better=True)
                    )
                    out.append(Metric(name=f"{stem}/delta", value=m["delta"].delta, higher_is_better=True))
        return out


@hookimpl
def bsight_job_types():
    return [AccuracyJob]
