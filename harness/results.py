"""``results.json``: a run's headline numbers in one validated file a researcher (or a script) can reuse.

Every run writes it into the run folder when its report is rendered (``bsight run``; ``bsight report RUN``
writes it again), and the report's combined table (methods x benchmarks, the paper's Table 1 layout) is built
from the same object. :class:`Results` is the schema (pydantic; ``schema_version`` 1):

``scores``
    One :class:`Score` per model x method x task that stored answers: the task's headline score (``micro``
    over samples or ``macro`` over subtasks, as upstream reports it) with its percentile bootstrap CI and
    ``n``, the scoring ``protocol`` and decoding, the change vs the job's baseline with its paired bootstrap CI
    (:class:`Delta`), the answer agreement with the baseline, the attention FLOPs reduction where a job counted
    it, and the median prefill time where the job measured it. A tau sweep contributes its baseline's answers
    (``reference``) and each tau's (``tau``; method ``"<method> (tau t)"``).
``protocols``
    Task config name -> the scoring protocol its scores used (``null`` when the run predates named protocols).
``flops``
    Per model x method x task the attention FLOPs reduction over the prompts (mean, median, min, max).
``timing``
    Wall-clock time of the run's sessions and the measured timings of the kernel-timing section's job types.
``provenance``
    Code (git commit), packages, devices, dataset revisions and model ids the numbers came from.

The numbers are never recomputed here: they are the rows of the ``accuracy`` and ``flops`` tables the run's job
types offer (:attr:`bsight.harness.jobtypes.JobType.tables`), which their report sections show, so the file,
the report and ``bsight compare`` agree. A job type whose table fails is named in ``errors``; the others still
count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from bsight.harness.jobtypes import ACCURACY_TABLE, FLOPS_TABLE, JobType, Metric
from bsight.harness.plugins import default_registry
from bsight.harness.store import RunFolder, StoreError, UnitRecord, write_json_atomic

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1


class ResultsError(StoreError):
    """A ``results.json`` that cannot be read or does not match the schema (bad input: ``bsight`` exits 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interval(_Strict):
    """A confidence interval: percentile bootstrap over samples (stratified by subtask for macro scores)."""

    lo: float | None
    hi: float | None
    confidence: float


class Delta(_Strict):
    """Score change method - baseline over the ``n`` samples both answered, with its paired bootstrap CI."""

    baseline: str
    value: float | None
    ci: Interval
    n: int


class Score(_Strict):
    """The headline score of one model x method x task."""

    model: str
    task: str
    method: str  # the config name; a tau sweep's tau: "<method> (tau t)"
    job: str
    plugin: str | None = None
    tau: str | None = None  # a tau sweep's tau, else null
    reference: bool = False  # a tau sweep's baseline answers
    metric: Literal["accuracy"] = "accuracy"
    headline: Literal["micro", "macro"] = "micro"
    score: float | None  # null: no sample scored
    ci: Interval | None
    n: int
    expected: int | None = None  # samples the unit holds when complete, when known
    status: str | None = None  # the unit's status (done, failed, pending, running)
    protocol: str | None = None  # the task's scoring protocol; null for runs before protocols were named
    decoding: str | None = None
    baseline: str | None = None
    is_baseline: bool = False
    delta: Delta | None = None
    agreement: float | None = None  # answers equal to the baseline's, over the pairs where both parsed
    unparsed: int | None = None
    flops_reduction: float | None = None  # mean attention FLOPs reduction vs dense over the prompts
    prefill_ms: float | None = None  # median prefill time per sample
    overhead_ms: float | None = None  # mean method overhead per sample


class Flops(_Strict):
    job: str
    model: str
    method: str
    task: str
    n: int
    mean: float | None
    median: float | None
    min: float | None
    max: float | None
    source: list[str]  # "layout" (counted from the prompt layout) and/or "measured" (pairs a prefill computed)


class Timing(_Strict):
    wall_s: float | None  # summed wall-clock time of the run's sessions that ended
    sessions: int
    measured: dict[str, float]  # timing metric name -> value (ms), from the kernel-timing section's job types


class LoadedModel(_Strict):
    model_id: str
    revision: str
    weights: Literal["trained", "random"]  # random: the numbers exercise the pipeline, they measure nothing


class Provenance(_Strict):
    run_name: str
    config_hash: str
    config_file: str
    git_commit: str | None
    git_dirty: bool | None
    bsight: str | None
    packages: dict[str, str]
    torch: str
    cuda: str | None
    gpus: list[str]
    devices: list[str]
    started: datetime
    ended: datetime | None
    datasets: dict[str, str]  # task config name -> dataset revision
    models: dict[str, LoadedModel]  # model config name -> what was loaded


class Results(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    run_name: str
    config_hash: str
    generated: datetime
    protocols: dict[str, str | None]
    units: dict[str, int]  # unit status -> count
    scores: list[Score]
    flops: list[Flops]
    timing: Timing
    provenance: Provenance | None
    errors: list[str] = []


def _num(value: Any) -> float | None:
    """A float for the file: NaN and missing become null."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _interval(d: Any) -> Interval | None:
    """An :class:`Interval` from a ``stats.PairedDelta`` (or None)."""
    if d is None:
        return None
    return Interval(lo=_num(d.lo), hi=_num(d.hi), confidence=d.confidence)


def _portable(path: str) -> str:
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return f"…/{p.name}"


def _tables(
    run: RunFolder, name: str, job_types: Sequence[JobType], by_type: dict[str, list[UnitRecord]], errors: list[str]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for job in sorted(job_types, key=lambda j: j.report_order):
        if name in job.tables and by_type.get(job.type):
            try:
                out += job.table(run, by_type[job.type], name)
            except Exception as e:
                errors.append(f"{job.type}: {name} table: {type(e).__name__}: {e}")
    return out


def _score(row: dict[str, Any], flops: dict[tuple[str, str, str], float | None]) -> Score:
    method = row.get("label") or row.get("method") or row["job"]
    d = row.get("delta")
    delta = None
    if d is not None and row.get("baseline") and not row.get("is_baseline"):
        delta = Delta(baseline=row["baseline"], value=_num(d.delta), ci=_interval(d), n=d.n)
    reduction = row.get("flops_reduction")
    if reduction is None and row.get("method"):
        reduction = flops.get((row["model"], row["method"], row["task"]))
    unparsed = row.get("unparsed")
    return Score(
        model=row["model"],
        task=row["task"],
        method=method,
        job=row["job"],
        plugin=row.get("plugin"),
        tau=row.get("tau"),
        reference=bool(row.get("reference")),
        headline=row.get("headline") or "micro",
        score=_num(row.get("accuracy")),
        ci=_interval(row.get("ci")),
        n=int(row.get("n") or 0),
        expected=row.get("expected"),
        status=row.get("status"),
        protocol=row.get("protocol"),
        decoding=row.get("decoding"),
        baseline=row.get("baseline"),
        is_baseline=bool(row.get("is_baseline")),
        delta=delta,
        agreement=_num(row.get("agreement")),
        unparsed=None if unparsed is None else int(unparsed),
        flops_reduction=_num(reduction),
        prefill_ms=_num(row.get("prefill_ms")),
        overhead_ms=_num(row.get("overhead_ms")),
    )


def _provenance(run: RunFolder, errors: list[str]) -> tuple[Provenance | None, float | None, int]:
    try:
        p = run.provenance()
    except Exception as e:
        errors.append(f"provenance: {type(e).__name__}: {e}")
        return None, None, 0
    ended = [s for s in p.sessions if s.ended is not None]
    wall = sum((s.ended - s.started).total_seconds() for s in ended) if ended else None
    models = {
        name: LoadedModel(model_id=m.model_id, revision=m.revision, weights=m.weights) for name, m in p.models.items()
    }
    devices = list(dict.fromkeys(d for s in p.sessions for d in s.devices))
    out = Provenance(
        run_name=p.run_name,
        config_hash=p.config_hash,
        config_file=_portable(p.config_file),
        git_commit=p.git_commit,
        git_dirty=p.git_dirty,
        bsight=p.packages.get("bsight"),
        packages=p.packages,
        torch=p.torch,
        cuda=p.cuda,
        gpus=p.gpus,
        devices=devices,
        started=p.started,
        ended=p.ended,
        datasets=p.datasets,
        models=models,
    )
    return out, wall, len(p.sessions)


def build_results(run: RunFolder | Path | str, job_types: Sequence[JobType] | None = None) -> Results:
    """The run's :class:`Results`, from the tables its job types offer. ``job_types``: those of the run's
    registry (default: the installed plugins')."""
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    types = list(default_registry().job_types() if job_types is None else job_types)
    manifest = run.manifest()
    by_type: dict[str, list[UnitRecord]] = {}
    counts: dict[str, int] = {}
    for rec in manifest.units:
        by_type.setdefault(rec.unit.type, []).append(rec)
        counts[rec.status] = counts.get(rec.status, 0) + 1
    errors: list[str] = []
    flops = [
        Flops(
            job=r["job"],
            model=r["model"],
            method=r["method"],
            task=r["task"],
            n=int(r["n"]),
            mean=_num(r["mean"]),
            median=_num(r["median"]),
            min=_num(r["min"]),
            max=_num(r["max"]),
            source=list(r.get("source") or []),
        )
        for r in _tables(run, FLOPS_TABLE, types, by_type, errors)
    ]
    reduction: dict[tuple[str, str, str], float | None] = {}
    for f in flops:  # the first job that counted a model x method x task
        reduction.setdefault((f.model, f.method, f.task), f.mean)
    scores = [_score(r, reduction) for r in _tables(run, ACCURACY_TABLE, types, by_type, errors)]
    protocols: dict[str, str | None] = {}
    for s in scores:
        if protocols.get(s.task) is None:
            protocols[s.task] = s.protocol
    measured: dict[str, float] = {}
    for job in types:
        if job.section == "timing" and by_type.get(job.type):
            try:
                measured.update({m.name: m.value for m in job.metrics(run, by_type[job.type])})
            except Exception as e:
                errors.append(f"{job.type}: timing metrics: {type(e).__name__}: {e}")
    provenance, wall, sessions = _provenance(run, errors)
    return Results(
        run_name=manifest.run_name,
        config_hash=manifest.config_hash,
        generated=datetime.now(timezone.utc),
        protocols=protocols,
        units=dict(sorted(counts.items())),
        scores=scores,
        flops=flops,
        timing=Timing(wall_s=wall, sessions=sessions, measured=measured),
        provenance=provenance,
        errors=errors,
    )


def write_results(run: RunFolder, results: Results) -> Path:
    """Write ``results.json`` into the run folder (atomically); returns its path."""
    path = run.root / RESULTS_FILE
    write_json_atomic(path, results)
    return path


def read_results(run: RunFolder | Path | str) -> Results | None:
    """The run folder's ``results.json``; None when the run has none (made before it existed, or never
    reported). Raises :class:`ResultsError` naming the file when it does not match the schema."""
    root = run.root if isinstance(run, RunFolder) else Path(run)
    path = root / RESULTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ResultsError(f"{path}: cannot be read: {e}") from None
    try:
        return Results.model_validate_json(text)
    except ValidationError as e:
        raise ResultsError(f"{path}: not a valid results file (schema {SCHEMA_VERSION}): {e}") from None


def _key(s: Score) -> tuple[str, str, str]:
    return s.model, s.method, s.task


def combined_tables(results: Results) -> list[dict[str, Any]]:
    """The report's combined table, one per model: methods x benchmarks (tasks), each cell a :class:`Score`
    (its headline score, ``n`` and change vs the baseline with CI). A model x method x task that several jobs
    scored shows the first (report order); a tau sweep's baseline joins as its method unless an accuracy job
    already scored it."""
    out: list[dict[str, Any]] = []
    models = list(dict.fromkeys(s.model for s in results.scores))
    for model in models:
        mine = [s for s in results.scores if s.model == model]
        loaded = results.provenance.models.get(model) if results.provenance is not None else None
        cells: dict[tuple[str, str, str], Score] = {}
        for s in mine:
            cells.setdefault(_key(s), s)
        tasks = list(dict.fromkeys(s.task for s in mine))
        methods = list(dict.fromkeys(s.method for s in sorted(mine, key=lambda s: not s.is_baseline)))
        out.append(
            {
                "model": model,
                "tasks": [{"name": t, "protocol": results.protocols.get(t)} for t in tasks],
                "rows": [{"method": m, "cells": [cells.get((model, m, t)) for t in tasks]} for m in methods],
                "confidence": next((s.ci.confidence for s in mine if s.ci is not None), None),
                "random_weights": loaded is not None and loaded.weights == "random",
            }
        )
    return out


def headline_metrics(results: Results) -> list[Metric]:
    """Numbers ``bsight compare`` tracks from ``results.json``: each headline score and its change vs the
    baseline, named ``results/<job>/<model>/<task>/<method>/{score,delta}``."""
    out = []
    for s in results.scores:
        stem = f"results/{s.job}/{s.model}/{s.task}/{s.method}"
        if s.score is not None:
            out.append(Metric(name=f"{stem}/score", value=s.score, higher_is_better=True))
        if s.delta is not None and s.delta.value is not None:
            out.append(Metric(name=f"{stem}/delta", value=s.delta.value, higher_is_better=True))
    return out
