"""Job ``baselines``: BlindSight side by side with the other sparse-prefill methods, on the same prompts.

A job expands into three kinds of resumable units:

``<job>/<model>/patterns`` (with ``search_patterns``)
    MMInference's offline per-head pattern choice
    (:func:`~bsight.plugins.methods.mminference.search_pattern_config`) from one sample of a task - use a
    characterization split, not the prompts being compared. One row holds the :class:`PatternConfig`; the unit
    writes it to ``<run>/patterns/<job>/<model>.json`` and to ``publish`` (``{model}`` = config model name).
    An ``mminference`` method whose ``pattern_config`` names either file runs with it (the config check accepts
    such a path before it exists; the method units' fingerprints follow the search's parameters).
``<job>/<model>/<method>/<task>``
    One row per prompt. :class:`FidelityProbe` wraps the method: at every layer it computes the dense output
    (the model's own mask) and the method's output on the same q, k, v, records per query head the NMSE of the
    method against dense over all query rows and over image (passage) query rows, and hands the *dense*
    output on, so every layer sees the inputs a dense model gives it. The row also holds the method's FLOPs
    (static head categories: counted exactly from the prompt's layout by :mod:`bsight.kernels.sparsity.flops`;
    dynamic methods: the pairs they computed, ``take_kept()``), its run-time overhead by kind
    (``method.overhead``: layout metadata, pattern estimation, mask building) and its attention wall time on
    this machine with that overhead taken out.
``<job>/gpu/<mode>`` (unless ``gpu: null``)
    Attention time and overhead per method at 36K-300K tokens on the GPU: on CUDA measured by
    :mod:`bsight.harness.benchmarks.baselines_sweep` one length at a time; elsewhere the rows of the published sweep
    (default ``reports/published/baselines_h100.json``) with its provenance, or "not measured" without it.

The section "baselines": per model and task a table of methods - mean FLOPs reduction, mean and worst-layer
NMSE (all queries; image/passage queries), overhead per prompt - with accuracy and agreement with the
accuracy job's baseline taken from the rows of accuracy jobs of the same run over the same model, method and
task (never recomputed), a per-layer NMSE plot, and the GPU timing table and plot.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.interfaces import AttentionMethod
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
from bsight.harness.jobs.flops import method_head_map_identity, option_file_identity, prompt_flops, static_categories
from bsight.harness.jobs.timing import PROVENANCE_KEYS, PublishedSource, append_published, jsonable, published_file
from bsight.harness.plots import line_plot, make_plot, new_figure
from bsight.kernels.dispatch import LayerCall, dense_prefill
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.plugins.methods.mminference import HeadPattern

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.interfaces import ModelAdapter, Sample
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

PATTERNS_DIR = "patterns"
MMINFERENCE = "mminference"
SWEEP_SCHEMA = "bsight.baselines_sweep/1"
PUBLISHED_SWEEP = "reports/published/baselines_h100.json"
_TINY = 1e-30
# = bsight.harness.benchmarks.baselines_sweep.METHODS (not imported here: it loads Triton)
SweepMethod = Literal["dense", "blindsight", "flex", "mminference", "streaming"]


# ------------------------------------------------------------------------------------------------ spec


class PatternSearchStep(BaseModel):
    """MMInference's offline pattern choice, run per model before the comparison."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(
        description="name from `tasks:` whose sample is searched (a characterization split, not the compared prompts)"
    )
    sample: int = Field(0, ge=0, description="index of the one sample searched")
    max_density: float = Field(
        0.25, gt=0, le=1, description="per head: kept pairs / the model's own mask pairs allowed"
    )
    candidates: list[HeadPattern] | None = Field(
        None,
        min_length=1,
        description="patterns tried per head; default MInference's, sized for 100K-token prompts (on short prompts they keep everything)",
    )
    publish: str | None = Field(None, description="also write the pattern config here ('{model}' = config model name)")


class GpuTiming(PublishedSource):
    """The GPU part: :mod:`bsight.harness.benchmarks.baselines_sweep` measured here, or its published JSON."""

    model_config = ConfigDict(extra="forbid")
    published: str | None = Field(
        PUBLISHED_SWEEP, description="published sweep shown where none is measured; null: none"
    )
    small: bool = Field(False, description="measure the sweep's reduced CPU shape (checks the path; not a GPU timing)")
    lengths: list[int] | None = Field(
        None, min_length=1, description="prompt lengths to measure; default the sweep's (36K-300K; small: 1K, 2K)"
    )
    reps: int = Field(5, ge=1, description="timed runs per point (median)")
    methods: list[SweepMethod] | None = Field(None, min_length=1, description="methods to measure; default all")

    def mode(self) -> Literal["measure", "published"]:
        return self.resolve(self.small or torch.cuda.is_available())


class BaselinesSpec(JobSpec):
    type: Literal["baselines"]
    models: list[str] | None = Field(None, description="names from `models:`; default all")
    methods: list[str] | None = Field(None, description="names from `methods:`; default all (dense first when listed)")
    tasks: list[str] | None = Field(
        None, description="names from `tasks:` whose prompts are compared; default all but the search task"
    )
    limit: int | None = Field(None, ge=1, description="first N prompts of each task")
    search_patterns: PatternSearchStep | None = Field(
        None, description="MMInference's offline pattern search, per model, first"
    )
    gpu: GpuTiming | None = Field(
        default_factory=GpuTiming, description="GPU attention time and overhead at 36K-300K; null: leave out"
    )


# ------------------------------------------------------------------------------------------------ rows


class PromptFidelity(BaseModel):
    """One prompt under one method, against dense on the same q, k, v at every layer."""

    model_config = ConfigDict(extra="forbid")
    sample_id: str
    subtask: str
    tokens: int
    segments: int  # images (passages)
    segment_queries: int  # query rows inside them
    nmse_all: list[list[float]]  # [layer][query head] over every query row
    nmse_segment: list[list[float]] | None  # [layer][query head] over image/passage query rows; None without any
    dense_flops: float  # the model's own mask, every layer and query head
    sparse_flops: float  # what the method keeps
    reduction: float
    flops_source: Literal["layout", "measured"]
    overhead_ms: dict[str, float]  # by kind, this prompt
    attention_ms: float  # the method's attention calls on this machine, overhead measured inside them taken out
    device: str


class SweepLength(BaseModel):
    """One prompt length of the baselines sweep, as the sweep wrote it."""

    model_config = ConfigDict(extra="allow")
    tokens: int
    methods: dict[str, dict[str, Any]]


class BaselinesRow(ResultRow):
    """A prompt (``key``: sample id), the pattern search (``key``: ``#patterns``) or a GPU sweep length
    (``key``: its token count)."""

    kind: Literal["prompt", "patterns", "timing"]
    prompt: PromptFidelity | None = None
    patterns: dict[str, Any] | None = None  # the PatternConfig as JSON data
    timing: SweepLength | None = None
    source: Literal["measured", "published"] | None = None


PATTERNS_KEY = "#patterns"


# ----------------------------------------------------------------------------------------------- probe


class FidelityProbe(AttentionMethod):
    """Runs a method and dense attention on the same q, k, v at every layer; returns the dense output.

    Not a registered plugin. Shares the wrapped method's overhead meter and sink policy, so the attention
    bridge builds the layout the method expects and counts its layout metadata as the method's overhead.
    After a prefill, :meth:`take` gives per layer ``(err_all, ref_all, err_seg, ref_seg)`` (float64 ``[Hq]``
    squared-error and squared-norm sums), the prompt's metadata and the method's attention milliseconds.
    """

    name = "baselines_probe"
    description = "Fidelity probe: a method's output against dense on the same q, k, v, per layer and head"

    def __init__(self, method: AttentionMethod) -> None:
        super().__init__()
        self.method = method
        self.overhead = method.overhead
        self._reset()

    @property
    def sink_policy(self):  # read by the attention bridge: the wrapped method's (set in its setup)
        return self.method.sink_policy

    def _reset(self) -> None:
        self.layers: dict[int, tuple[torch.Tensor, ...]] = {}
        self.meta: LayoutMeta | None = None
        self.attention_ms = 0.0

    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall
    ) -> torch.Tensor:
        if call.layer_idx < 0 or call.layer_idx in self.layers:
            raise ValueError(
                f"layer index {call.layer_idx}: the probe takes one unpadded prompt, each layer once, with its layer_idx"
            )
        dense = dense_prefill(q, k, v, meta, call)
        before = sum(self.overhead.ms.values())
        _sync(q.device)
        t0 = time.perf_counter()
        out = self.method.prefill(q, k, v, meta, call)
        _sync(q.device)
        self.attention_ms += 1e3 * (time.perf_counter() - t0) - (sum(self.overhead.ms.values()) - before)
        if out.shape != dense.shape:
            raise ValueError(
                f"method {self.method.name!r} returned {tuple(out.shape)} at layer {call.layer_idx}, expected {tuple(dense.shape)}"
            )
        err = (out - dense).double().pow_(2).sum(-1)  # [Hq, S]
        norm = dense.double().pow_(2).sum(-1)
        seg = meta.seg_id >= 0
        self.layers[call.layer_idx] = tuple(
            t.cpu() for t in (err.sum(1), norm.sum(1), err[:, seg].sum(1), norm[:, seg].sum(1))
        )
        self.meta = meta
        return dense

    def take(self) -> tuple[dict[int, tuple[torch.Tensor, ...]], LayoutMeta | None, float]:
        out = (self.layers, self.meta, self.attention_ms)
        self._reset()
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nmse(err: torch.Tensor, ref: torch.Tensor) -> list[float]:
    return (err / ref.clamp_min(_TINY)).tolist()


def measure_prompt(
    adapter: ModelAdapter, method: AttentionMethod, cats: np.ndarray | None, sample: Sample
) -> PromptFidelity:
    """One prompt through :class:`FidelityProbe`: per-layer NMSE, FLOPs, overhead and attention time."""
    info = adapter.info
    prepared = adapter.prepare(sample)
    if len(prepared.layouts) != 1:
        raise ValueError(
            f"sample {sample.id!r}: prepare() gave a batch of {len(prepared.layouts)}; the comparison takes one prompt at a time"
        )
    probe = FidelityProbe(method)
    method.overhead.take()  # this prompt's overhead only
    if cats is None:
        method.take_kept()
    with torch.no_grad():
        adapter.prefill(prepared, probe)
    layers, meta, attention_ms = probe.take()
    overhead = method.overhead.take()
    if sorted(layers) != list(range(info.num_layers)) or meta is None:
        raise RuntimeError(
            f"sample {sample.id!r}: the probe saw layers {sorted(layers)}, expected all {info.num_layers} (attn_implementation not 'bsight'?)"
        )
    dense, sparse, source = prompt_flops(
        meta,
        info,
        cats,
        None if cats is not None else method.take_kept(),
        f"sample {sample.id!r}: method {method.name!r}",
    )
    seg_rows = int((meta.seg_id >= 0).sum())
    order = [layers[i] for i in range(info.num_layers)]
    return PromptFidelity(
        sample_id=sample.id,
        subtask=sample.subtask,
        tokens=meta.length,
        segments=meta.num_images,
        segment_queries=seg_rows,
        nmse_all=[_nmse(e, r) for e, r, _, _ in order],
        nmse_segment=[_nmse(e, r) for _, _, e, r in order] if seg_rows else None,
        dense_flops=dense,
        sparse_flops=sparse,
        reduction=1.0 - sparse / dense if dense else 0.0,
        flops_source=source,
        overhead_ms=overhead,
        attention_ms=attention_ms,
        device=meta.device.type,
    )


# ------------------------------------------------------------------------------------ pattern files


def pattern_file(job: str, model: str) -> Path:
    """Where a search unit writes its pattern config, relative to the run folder."""
    return Path(PATTERNS_DIR) / job / f"{model}.json"


def _search_publish(step: PatternSearchStep, model: str) -> Path | None:
    return None if step.publish is None else Path(step.publish.replace("{model}", model))


def pattern_writers(config: BenchmarkConfig, before: int) -> dict[str, tuple[BaselinesSpec, str]]:
    """Pattern config files the search steps of the config's first ``before`` jobs write, by normalized path
    (run-folder files under the config's default run folder, and ``publish`` paths)."""
    out = {}
    root = Path(config.run.output_dir) / config.run.name
    for spec in config.jobs[:before]:
        if spec.type != BaselinesJob.type or spec.search_patterns is None:
            continue
        for model in selected(spec, config, "models"):
            paths = [root / pattern_file(spec.name, model), _search_publish(spec.search_patterns, model)]
            for p in paths:
                if p is not None:
                    out[os.path.normpath(p)] = (spec, model)
    return out


def _pattern_option(config: BenchmarkConfig, method: str) -> str | None:
    ref = config.methods[method]
    value = ref.options.get("pattern_config") if ref.plugin == MMINFERENCE else None
    return value if isinstance(value, str) else None


def _search_fingerprint(spec: BaselinesSpec, config: BenchmarkConfig, model: str) -> str:
    step = spec.search_patterns
    assert step is not None
    return fingerprint(
        BaselinesJob.type,
        "patterns",
        config.models[model].model_dump(),
        config.tasks[step.task].model_dump(),
        step.sample,
        step.max_density,
        [c.model_dump() for c in step.candidates or []],
    )


def method_pattern_identity(config: BenchmarkConfig, method: str, before: int) -> Any:
    """:func:`~.flops.option_file_identity` of an ``mminference`` method's ``pattern_config`` file: written by
    the search step of one of the config's first ``before`` jobs (its parameters), else its content."""
    return option_file_identity(
        _pattern_option(config, method),
        pattern_writers(config, before),
        lambda spec, model: _search_fingerprint(spec, config, model),
    )


# ------------------------------------------------------------------------------------------ GPU sweep


def published_sweep_rows(doc: dict[str, Any], path: str) -> list[SweepLength]:
    """The per-length rows of a baselines sweep document; another schema is a ValueError naming the file."""
    if doc.get("schema") != SWEEP_SCHEMA:
        raise ValueError(
            f"published sweep {path}: schema {doc.get('schema')!r}, expected {SWEEP_SCHEMA!r} (python -m bsight.harness.benchmarks.baselines_sweep)"
        )
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise ValueError(f"published sweep {path}: 'rows' must be a list of per-length entries")
    try:
        return [SweepLength.model_validate(r) for r in rows]
    except ValueError as e:
        raise ValueError(f"published sweep {path}: a row is malformed: {e}") from None


def _sweep_meta(doc: dict[str, Any]) -> dict[str, Any]:
    prov = {k: v for k, v in (doc.get("provenance") or {}).items() if k not in ("sessions", "datasets", "models")}
    return {"schema": doc.get("schema"), "provenance": prov, "setup": doc.get("setup") or {}}


def _origin(record: UnitRecord) -> dict[str, Any]:
    """Where a GPU unit's numbers come from (source measured, published or none) and their provenance."""
    info = record.info
    meta = info.get("meta") or {}
    prov = meta.get("provenance") or {}
    command = prov.get("command")
    return {
        "source": info.get("source", "none"),
        "file": info.get("file") or info.get("missing"),
        "sha256": info.get("sha256"),
        "why": info.get("why", "not run yet"),
        "setup": meta.get("setup") or {},
        "prov": {
            **{k: prov.get(k) for k in PROVENANCE_KEYS},
            "date": prov.get("ended") or prov.get("started"),
            "triton": (prov.get("packages") or {}).get("triton"),
            "command": " ".join(command) if isinstance(command, list) else command,
        },
    }


# -------------------------------------------------------------------------------------------- the job


class BaselinesJob(JobType):
    type = "baselines"
    Spec = BaselinesSpec
    Row = BaselinesRow
    section = "baselines"
    title = "Baseline comparison"
    shardable = True  # prompts (and GPU lengths) are independent: a data-parallel session splits them

    @staticmethod
    def tasks_of(spec: BaselinesSpec, config: BenchmarkConfig) -> list[str]:
        if spec.tasks is not None:
            return list(spec.tasks)
        search = spec.search_patterns.task if spec.search_patterns else None
        return [t for t in config.tasks if t != search]

    @staticmethod
    def methods_of(spec: BaselinesSpec, config: BenchmarkConfig) -> list[str]:
        """The job's methods, those of plugin ``dense`` first (the reference every row is read against)."""
        chosen = selected(spec, config, "methods")
        dense = [m for m in chosen if m in config.methods and config.methods[m].plugin == "dense"]
        return dense + [m for m in chosen if m not in dense]

    def check(self, spec: BaselinesSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        from bsight.harness.jobs.characterize import head_map_writers

        issues = name_issues(spec, config, ("models", "methods"))
        tasks = self.tasks_of(spec, config)
        defined = ", ".join(config.tasks) or "none"
        if not tasks:
            hint = " (the search task is not one by default)" if spec.tasks is None else ""
            issues.append(ConfigIssue(("tasks",), f"no task to compare on{hint}; defined under `tasks:`: {defined}"))
        issues += [
            ConfigIssue(("tasks", i), f"{t!r} is not defined under `tasks:`; defined: {defined}")
            for i, t in enumerate(tasks)
            if t not in config.tasks
        ]
        index = next((i for i, s in enumerate(config.jobs) if s is spec), len(config.jobs))
        maps, patterns = head_map_writers(config, before=index), pattern_writers(config, before=index + 1)
        for i, method in enumerate(selected(spec, config, "methods")):
            if method not in config.methods:
                continue
            head_map = config.methods[method].options.get("head_map")
            if isinstance(head_map, str) and not Path(head_map).is_file() and os.path.normpath(head_map) not in maps:
                issues.append(
                    ConfigIssue(
                        ("methods", i),
                        f"method {method!r} reads head_map {head_map!r}, which does not exist and which no earlier characterize job writes",
                    )
                )
            pattern = _pattern_option(config, method)
            if pattern is not None and published_file(pattern) is None and os.path.normpath(pattern) not in patterns:
                issues.append(
                    ConfigIssue(
                        ("methods", i),
                        f"method {method!r} reads pattern_config {pattern!r}, which does not exist and which no search_patterns step of this or an "
                        f"earlier baselines job writes (a search writes <run folder>/{PATTERNS_DIR}/<job>/<model>.json and its `publish` path)",
                    )
                )
        step = spec.search_patterns
        if step is not None:
            if step.task not in config.tasks:
                issues.append(
                    ConfigIssue(
                        ("search_patterns", "task"), f"{step.task!r} is not defined under `tasks:`; defined: {defined}"
                    )
                )
            if step.publish is not None:
                if len(selected(spec, config, "models")) > 1 and "{model}" not in step.publish:
                    issues.append(
                        ConfigIssue(
                            ("search_patterns", "publish"),
                            "this job searches several models: put '{model}' in the path so each gets its own file",
                        )
                    )
                rest = step.publish.replace("{model}", "")
                if "{" in rest or "}" in rest:
                    issues.append(
                        ConfigIssue(("search_patterns", "publish"), "the only placeholder allowed is '{model}'")
                    )
        if spec.gpu is not None:
            issues += spec.gpu.file_issues(spec.gpu.mode(), ("gpu",))
        return issues

    def expand(self, spec: BaselinesSpec, config: BenchmarkConfig) -> list[Unit]:
        index = next((i for i, s in enumerate(config.jobs) if s is spec), len(config.jobs))
        units = []
        for model in selected(spec, config, "models"):
            if spec.search_patterns is not None:
                units.append(
                    Unit(
                        job=spec.name,
                        type=self.type,
                        id=f"{spec.name}/{model}/patterns",
                        model=model,
                        task=spec.search_patterns.task,
                        fingerprint=_search_fingerprint(spec, config, model),
                    )
                )
            for task in self.tasks_of(spec, config):
                for method in self.methods_of(spec, config):
                    fp = fingerprint(
                        self.type,
                        config.models[model].model_dump(),
                        config.methods[method].model_dump(),
                        config.tasks[task].model_dump(),
                        method_head_map_identity(config, method, index),
                        method_pattern_identity(config, method, index + 1),
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
        if spec.gpu is not None:
            mode = spec.gpu.mode()
            what = spec.gpu.identity(mode, spec.gpu.model_dump(include={"small", "lengths", "reps", "methods"}))
            units.append(
                Unit(
                    job=spec.name,
                    type=self.type,
                    id=f"{spec.name}/gpu/{mode}",
                    fingerprint=fingerprint(self.type, "gpu", mode, what),
                )
            )
        return units

    # ------------------------------------------------------------------------------------------ running

    def run_unit(self, spec: BaselinesSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[BaselinesRow]) -> None:
        if unit.model is None:
            self._gpu(spec, unit, ctx, rows)
        elif unit.method is None:
            self._search(spec, unit, ctx, rows)
        else:
            self._compare(spec, unit, ctx, rows)

    def _compare(self, spec: BaselinesSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[BaselinesRow]) -> None:
        adapter, method = ctx.model(unit.model), ctx.method(unit.method)
        info = adapter.info
        method.setup(info)
        cats = static_categories(method, info)
        if cats is None and not callable(getattr(method, "take_kept", None)):
            raise ValueError(
                f"method {unit.method!r} has neither static head categories nor a take_kept() log of the pairs it computed"
            )
        samples = ctx.samples(unit.task, spec.limit)
        ctx.expect(len(samples))
        ctx.note(weights=info.weights, model_id=info.model_id, **describe_method(method))
        mine = ctx.shard(samples, key=lambda s: s.id)
        todo = [s for s in mine if s.id not in rows.done]
        with ctx.progress(unit.id, total=len(mine), completed=len(mine) - len(todo)) as bar:
            for sample in todo:
                rows.append(
                    BaselinesRow(key=sample.id, kind="prompt", prompt=measure_prompt(adapter, method, cats, sample))
                )
                bar.advance()

    def _search(self, spec: BaselinesSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[BaselinesRow]) -> None:
        from bsight.plugins.methods.mminference import PatternConfig, SearchOptions, search_pattern_config

        step = spec.search_patterns
        assert step is not None
        ctx.expect(1)
        if not ctx.shard([PATTERNS_KEY], key=str):
            return  # another rank's share
        stored = rows.rows.get(PATTERNS_KEY)
        if stored is None:
            adapter = ctx.model(unit.model)
            samples = ctx.samples(step.task, step.sample + 1)
            if len(samples) <= step.sample:
                raise ValueError(
                    f"search_patterns.sample is {step.sample} but task {step.task!r} has {len(samples)} samples"
                )
            with ctx.progress(f"{unit.id} (sample {samples[step.sample].id})", total=1) as bar:
                found = search_pattern_config(
                    adapter,
                    samples[step.sample],
                    SearchOptions(
                        max_density=step.max_density, **({"candidates": step.candidates} if step.candidates else {})
                    ),
                )
                bar.advance()
            stored = BaselinesRow(key=PATTERNS_KEY, kind="patterns", patterns=found.model_dump(mode="json"))
            rows.append(stored)
        if ctx.run_dir is None:
            raise RuntimeError(f"unit {unit.id}: no run folder to write the pattern config into")
        cfg = PatternConfig.model_validate(stored.patterns)
        files = {"patterns": str(pattern_file(unit.job, unit.model))}
        cfg.save(ctx.run_dir / files["patterns"])
        published = _search_publish(step, unit.model)
        if published is not None:
            cfg.save(published)
            files["published"] = str(published)
        ctx.note(files=files)

    def _gpu(self, spec: BaselinesSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[BaselinesRow]) -> None:
        gpu = spec.gpu
        assert gpu is not None
        if gpu.mode() == "published":

            def parse(doc: dict[str, Any]) -> tuple[list[BaselinesRow], dict[str, Any]]:
                sweep = published_sweep_rows(doc, gpu.published)
                return [
                    BaselinesRow(key=str(r.tokens), kind="timing", timing=r, source="published") for r in sweep
                ], _sweep_meta(doc)

            why = "source: published" if gpu.source == "published" else "this machine has no CUDA device"
            append_published(ctx, rows, gpu.published, why, parse)
            return
        if not (gpu.small or torch.cuda.is_available()):
            raise RuntimeError(
                f"job {spec.name!r}: gpu.source is 'measure' but this machine has no CUDA device (gpu.small measures the CPU shape)"
            )
        from bsight.harness.benchmarks import baselines_sweep

        lengths = list(
            dict.fromkeys(gpu.lengths or (baselines_sweep.SMALL if gpu.small else baselines_sweep.GPU).lengths)
        )
        ctx.expect(len(lengths))
        ctx.note(source="measured")
        mine = ctx.shard([str(n) for n in lengths], key=str)
        todo = [n for n in mine if n not in rows.done]
        with ctx.progress(unit.id, total=len(mine), completed=len(mine) - len(todo)) as bar:
            for n in todo:
                with tempfile.TemporaryDirectory() as tmp:
                    argv = [
                        "--out",
                        str(Path(tmp) / "baselines_sweep.json"),
                        "--lengths",
                        n,
                        "--reps",
                        str(gpu.reps),
                    ] + (["--small"] if gpu.small else [])
                    argv += ["--methods", ",".join(gpu.methods)] if gpu.methods else []
                    with contextlib.redirect_stderr(io.StringIO()):  # its progress lines would break the run's display
                        doc = baselines_sweep.main(argv)
                ctx.note(meta=jsonable(_sweep_meta(doc)))
                (row,) = doc["rows"]
                rows.append(
                    BaselinesRow(key=n, kind="timing", timing=SweepLength.model_validate(row), source="measured")
                )
                bar.advance()

    # ---------------------------------------------------------------------------------------- reporting

    def _groups(self, run: RunFolder, records: list[UnitRecord]) -> list[dict[str, Any]]:
        """Per (job, model, task): each method's summary over its stored prompts, dense first."""
        accuracy = accuracy_cells(run)
        plugins = {name: ref.get("plugin") for name, ref in run.config_data().get("methods", {}).items()}
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for rec in records:
            u = rec.unit
            if u.method is None:
                continue
            prompts = [r.prompt for r in run.rows(u, BaselinesRow) if r.kind == "prompt" and r.prompt is not None]
            g = groups.setdefault(
                (u.job, u.model, u.task),
                {"job": u.job, "model": u.model, "task": u.task, "methods": [], "weights": set(), "model_id": None},
            )
            if rec.info.get("weights"):
                g["weights"].add(rec.info["weights"])
                g["model_id"] = rec.info.get("model_id")
            g["methods"].append(
                {
                    "method": u.method,
                    "status": rec.status,
                    "error": rec.error,
                    "expected": rec.expected,
                    "n": len(prompts),
                    "notes": method_notes(rec.info),
                    "accuracy": accuracy_of(accuracy, u, plugins.get(u.method), rec.info),
                    **summarize_prompts(prompts),
                }
            )
        out = []
        for g in groups.values():
            g["weights"] = sorted(g["weights"])
            g["random_weights"] = "random" in g["weights"]
            g["has_accuracy"] = any(m["accuracy"] for m in g["methods"])
            out.append(g)
        return out

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        if not records:
            return None
        groups = self._groups(run, records)
        plots = []
        for gi, g in enumerate(groups):
            g["plot"] = None
            drawn = [m for m in g["methods"] if m["n"]]
            if drawn:
                g["plot"] = make_plot(
                    f"baselines-{gi}-{g['model']}-{g['task']}",
                    f"{g['model']} on {g['task']}: NMSE against dense per layer",
                    layer_nmse_figure(drawn, g["model"]),
                )
                plots.append(g["plot"])
        searches = [
            self._search_part(run, rec) for rec in records if rec.unit.model is not None and rec.unit.method is None
        ]
        gpu, seen = [], set()
        for rec in records:
            if rec.unit.model is None:
                part = self._gpu_part(run, rec)
                o = part["origin"]
                ident = rec.unit.id if o["source"] == "measured" else (o["source"], o["file"], o["sha256"])
                if ident not in seen:  # jobs showing one published file (or missing the same one) show it once
                    seen.add(ident)
                    gpu.append(part)
                    plots += part["plots"]
        return SectionData(context={"groups": groups, "searches": [s for s in searches if s], "gpu": gpu}, plots=plots)

    @staticmethod
    def _search_part(run: RunFolder, rec: UnitRecord) -> dict[str, Any] | None:
        stored = next((r.patterns for r in run.rows(rec.unit, BaselinesRow) if r.kind == "patterns"), None)
        if stored is None:
            return {
                "job": rec.unit.job,
                "model": rec.unit.model,
                "task": rec.unit.task,
                "status": rec.status,
                "error": rec.error,
                "empty": True,
            }
        heads = [h for layer in stored["patterns"] for h in layer]
        counts: dict[str, int] = {}
        for h in heads:
            label = f"{h['pattern']} / {h['boundary']}" if h["pattern"] != "dense" else "dense"
            counts[label] = counts.get(label, 0) + 1
        search = stored.get("search") or {}
        return {
            "job": rec.unit.job,
            "model": rec.unit.model,
            "task": rec.unit.task,
            "status": rec.status,
            "error": rec.error,
            "empty": False,
            "sample": search.get("sample"),
            "tokens": search.get("num_tokens"),
            "max_density": search.get("max_density"),
            "heads": len(heads),
            "shares": sorted(((k, v / len(heads)) for k, v in counts.items()), key=lambda kv: -kv[1]),
            "density": float(np.mean([h["density"] for h in heads if h.get("density") is not None] or [np.nan])),
            "nmse": float(np.mean([h["nmse"] for h in heads if h.get("nmse") is not None] or [np.nan])),
            "files": rec.info.get("files", {}),
        }

    @staticmethod
    def _gpu_part(run: RunFolder, rec: UnitRecord) -> dict[str, Any]:
        origin = _origin(rec)
        sweep = sorted(
            (r.timing for r in run.rows(rec.unit, BaselinesRow) if r.kind == "timing" and r.timing is not None),
            key=lambda t: t.tokens,
        )
        part: dict[str, Any] = {
            "job": rec.unit.job,
            "origin": origin,
            "empty": not sweep,
            "plots": [],
            "table": [],
            "errors": [],
        }
        if not sweep:
            return part
        names = list(dict.fromkeys(m for t in sweep for m in t.methods))
        series_ms: dict[str, tuple[list[int], list[float]]] = {}
        series_over: dict[str, tuple[list[int], list[float]]] = {}
        for t in sweep:
            dense = (t.methods.get("dense") or {}).get("attention_ms")
            for name in names:
                m = t.methods.get(name)
                if m is None:
                    continue
                if m.get("error") or m.get("attention_ms") is None:
                    part["errors"].append(
                        {"tokens": t.tokens, "method": name, "error": m.get("error") or "no time recorded"}
                    )
                    continue
                over = m.get("overhead_ms") or {}
                ms = m["attention_ms"]
                part["table"].append(
                    {
                        "tokens": t.tokens,
                        "images": getattr(t, "images", None),
                        "method": name,
                        "attention_ms": ms,
                        "overhead_ms": sum(over.values()),
                        "overhead": sorted(over.items()),
                        "speedup": dense / ms if dense and name != "dense" else None,
                        "reduction": m.get("flops_reduction"),
                        "first_call_s": m.get("first_call_s"),
                        "implementation": m.get("implementation"),
                    }
                )
                series_ms.setdefault(name, ([], []))
                series_ms[name][0].append(t.tokens)
                series_ms[name][1].append(ms)
                if over:
                    series_over.setdefault(name, ([], []))
                    series_over[name][0].append(t.tokens)
                    series_over[name][1].append(sum(over.values()))
        stem = f"baselines-gpu-{rec.unit.job}"
        # one colour per method in both plots (the overhead plot has no dense line)
        styles = {name: {"color": f"C{i % 10}"} for i, name in enumerate(dict.fromkeys([*series_ms, *series_over]))}
        if series_ms:
            part["plots"].append(
                make_plot(
                    f"{stem}-ms",
                    "Attention time per method vs prompt tokens (one layer, batch 1)",
                    line_plot(series_ms, "prompt tokens", "attention forward, ms", logx=True, logy=True, styles=styles),
                )
            )
        if series_over:
            part["plots"].append(
                make_plot(
                    f"{stem}-overhead",
                    "Run-time overhead per method vs prompt tokens (outside attention)",
                    line_plot(series_over, "prompt tokens", "overhead, ms", logx=True, logy=True, styles=styles),
                )
            )
        return part

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        out = []
        for g in self._groups(run, records):
            for m in g["methods"]:
                if not m["n"]:
                    continue
                stem = f"{g['job']}/{g['model']}/{g['task']}/{m['method']}"
                out.append(Metric(name=f"{stem}/flops_reduction_mean", value=m["reduction"], higher_is_better=True))
                out.append(
                    Metric(
                        name=f"{stem}/nmse_all_mean", value=m["nmse_all"]["mean"], higher_is_better=False, relative=True
                    )
                )
                if m["nmse_segment"] is not None:
                    out.append(
                        Metric(
                            name=f"{stem}/nmse_segment_mean",
                            value=m["nmse_segment"]["mean"],
                            higher_is_better=False,
                            relative=True,
                        )
                    )
                out.append(
                    Metric(name=f"{stem}/overhead_ms", value=m["overhead_ms"], higher_is_better=False, relative=True)
                )
        for rec in records:
            if rec.unit.model is None and rec.info.get("source") == "measured":
                for r in run.rows(rec.unit, BaselinesRow):
                    for name, m in (r.timing.methods if r.timing else {}).items():
                        if m.get("attention_ms") is not None:
                            out.append(
                                Metric(
                                    name=f"{rec.unit.job}/gpu/{r.key}/{name}/attention_ms",
                                    value=m["attention_ms"],
                                    higher_is_better=False,
                                    relative=True,
                                )
                            )
        return out


# ------------------------------------------------------------------------------------ section numbers


def describe_method(method: AttentionMethod) -> dict[str, Any]:
    """What a unit records about its method's static inputs: its head map or its MMInference pattern config."""
    out: dict[str, Any] = {}
    head_map = getattr(method, "head_map", None)
    uniform = getattr(method.options, "uniform", None)
    if uniform is not None:
        out["uniform"] = str(uniform)
    elif isinstance(head_map, HeadMap):
        out["head_map"] = {
            "model_id": head_map.model_id,
            "weights": head_map.weights,
            "dataset": head_map.dataset.name,
            "size": head_map.dataset.size,
            "tau": head_map.params.tau,
            "shares": head_map.shares(),
        }
    if method.name == MMINFERENCE:
        cfg = getattr(method, "config", None)
        search = getattr(cfg, "search", None)
        out["patterns"] = (
            {"source": "default pattern for every head"}
            if cfg is None
            else {
                "source": "searched",
                "sample": search.sample if search else None,
                "max_density": search.max_density if search else None,
            }
        )
    return out


def method_notes(info: dict[str, Any]) -> list[str]:
    """What a unit recorded about its method, as short phrases for the table."""
    notes = []
    if info.get("uniform"):
        notes.append(f"every head {info['uniform']}")
    hm = info.get("head_map")
    if hm:
        notes.append(
            f"head map of {hm['model_id']} ({hm['weights']} weights, {hm['dataset']}, {hm['size']} prompts, tau {hm['tau']:g})"
        )
    pat = info.get("patterns")
    if pat:
        where = f" (sample {pat['sample']}, max density {pat['max_density']:g})" if pat.get("sample") else ""
        notes.append(f"patterns: {pat['source']}{where}")
    return notes


def _nmse_summary(tables: list[list[list[float]]]) -> dict[str, Any] | None:
    """Mean over (prompt, layer, head), per-layer means over (prompt, head), and the worst layer."""
    if not tables:
        return None
    a = np.asarray(tables, dtype=np.float64)  # [prompts, layers, heads]
    per_layer = a.mean(axis=(0, 2))
    worst = int(per_layer.argmax())
    return {
        "mean": float(a.mean()),
        "per_layer": per_layer.tolist(),
        "worst": float(per_layer[worst]),
        "worst_layer": worst,
    }


def summarize_prompts(prompts: list[PromptFidelity]) -> dict[str, Any]:
    """A method's numbers over its prompts: FLOPs reduction, NMSE (all queries; image/passage queries), overhead."""
    if not prompts:
        return {
            "reduction": None,
            "flops_source": [],
            "nmse_all": None,
            "nmse_segment": None,
            "overhead_ms": None,
            "overhead": [],
            "attention_ms": None,
            "device": None,
        }
    kinds = sorted({k for p in prompts for k in p.overhead_ms})
    return {
        "reduction": float(np.mean([p.reduction for p in prompts])),
        "flops_source": sorted({p.flops_source for p in prompts}),
        "nmse_all": _nmse_summary([p.nmse_all for p in prompts]),
        "nmse_segment": _nmse_summary([p.nmse_segment for p in prompts if p.nmse_segment is not None]),
        "overhead_ms": float(np.mean([sum(p.overhead_ms.values()) for p in prompts])),
        "overhead": [(k, float(np.mean([p.overhead_ms.get(k, 0.0) for p in prompts]))) for k in kinds],
        "attention_ms": float(np.mean([p.attention_ms for p in prompts])),
        "device": ", ".join(sorted({p.device for p in prompts})),
    }


def accuracy_cells(run: RunFolder) -> dict[tuple, dict[str, Any]]:
    """Accuracy and agreement with the baseline from the run's stored answers, never generated again.

    Keys: ``("method", model, method, task)`` from accuracy jobs (any job type built on
    :class:`~bsight.harness.jobs.accuracy.AccuracyJob`; numbers as the accuracy section computes them);
    ``("tau", model, task, tau)`` and ``("dense", model, task)`` from ``tau_sweep`` jobs (blindsight with each
    tau's head map, and their dense baseline). The first job that covers a key wins."""
    from bsight.harness.jobs import JOB_TYPES
    from bsight.harness.jobs.accuracy import AccuracyJob, run_seed

    seed = run_seed(run)
    by_type: dict[str, list[UnitRecord]] = {}
    for rec in run.manifest().units:
        by_type.setdefault(rec.unit.type, []).append(rec)
    out: dict[tuple, dict[str, Any]] = {}
    for kind, recs in by_type.items():
        job = JOB_TYPES.get(kind)
        if isinstance(job, AccuracyJob):
            for g in job._groups(run, recs):
                for m in job._method_stats(g, seed):
                    if m["n"]:
                        out.setdefault(
                            ("method", g["model"], m["method"], g["task"]),
                            {
                                "job": g["job"],
                                "accuracy": m["accuracy"],
                                "n": m["n"],
                                "baseline": g["spec"].baseline,
                                "is_baseline": m["is_baseline"],
                                "agreement": m["agreement"] if m["paired_n"] else None,
                            },
                        )
        elif kind == "tau_sweep" and job is not None:
            for rec in recs:
                rows = run.rows(rec.unit, job.Row)
                dense = [
                    r.answer.correct for r in rows if r.kind == "sample" and r.tau is None and r.answer is not None
                ]
                if dense:
                    out.setdefault(
                        ("dense", rec.unit.model, rec.unit.task),
                        {
                            "job": rec.unit.job,
                            "accuracy": float(np.mean(dense)),
                            "n": len(dense),
                            "baseline": "dense",
                            "is_baseline": True,
                            "agreement": None,
                        },
                    )
                for p in job._points(rows, job.spec_of(rec), seed):
                    if p["n"]:
                        out.setdefault(
                            ("tau", rec.unit.model, rec.unit.task, f"{p['tau']:g}"),
                            {
                                "job": f"{rec.unit.job} (tau {p['tau']:g})",
                                "accuracy": p["accuracy"],
                                "n": p["n"],
                                "baseline": "dense",
                                "is_baseline": False,
                                "agreement": p["agreement"],
                                "shares": p["shares"],
                            },
                        )
    return out


def accuracy_of(
    cells: dict[tuple, dict[str, Any]], unit: Unit, plugin: str | None, info: dict[str, Any]
) -> dict[str, Any] | None:
    """The accuracy cell of a comparison unit: an accuracy job over the same model, method and task; else, for
    ``dense`` and for ``blindsight`` with a characterized head map, the tau sweep over the same model and task
    (at the head map's tau, when the sweep's map there has the same category shares)."""
    found = cells.get(("method", unit.model, unit.method, unit.task))
    if found is None and plugin == "dense":
        found = cells.get(("dense", unit.model, unit.task))
    head_map = info.get("head_map")
    if found is None and plugin == "blindsight" and head_map:
        swept = cells.get(("tau", unit.model, unit.task, f"{head_map['tau']:g}"))
        shares = swept["shares"] if swept else {}
        if swept and all(
            abs(shares.get(k, 0.0) - v) < 1e-9 for k, v in head_map["shares"].items()
        ):  # the same head map
            found = swept
    return found


FLOOR = 1e-12  # NMSE below this (exact agreement, float rounding) is drawn at it on the log axis


def layer_nmse_figure(methods: list[dict[str, Any]], model: str):
    """Per-layer NMSE against dense, one line per method: all query rows, and image/passage query rows."""
    fig = new_figure(width=9.0, height=3.4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, label in zip(axes, ("nmse_all", "nmse_segment"), ("all query rows", "image/passage query rows")):
        for i, m in enumerate(methods):
            s = m[key]
            if s is None:
                continue
            y = np.maximum(np.asarray(s["per_layer"]), FLOOR)
            # methods with the same mask (blindsight and flex from one head map) coincide: dashes and hollow
            # markers of different shapes keep every line visible
            ax.plot(
                np.arange(len(y)),
                y,
                label=m["method"],
                linestyle=("-", "--", ":", "-.")[i % 4],
                marker="osD^v"[i % 5],
                markersize=6 - i % 3,
                markerfacecolor="none",
                linewidth=1.2,
            )
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(f"{model}: {label}", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"NMSE vs dense (floor {FLOOR:g})")
    axes[1].legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig
