"""Job ``baselines``: BlindSight side by side with the other sparse-prefill methods, on the same prompts.

A job expands into three kinds of resumable units:

``<job>/<model>/search`` (with ``search``)
    The offline search of a method that needs one (:attr:`~bsight.harness.interfaces.AttentionMethod.search_artifact`,
    e.g. MMInference's per-head pattern choice) from one sample of a task - use a characterization split, not
    the prompts being compared. One row holds the artifact; the unit writes it to
    ``<run>/searched/<job>/<model>.json`` and to ``publish`` (``{model}`` = config model name), and declares it
    (:meth:`produces`): a method that reads either file runs with it (the config check accepts such a path
    before it exists; the method units' fingerprints follow the search's parameters).
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

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.benchmarks import baselines_sweep
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod
from bsight.harness.jobs.counting import prompt_flops
from bsight.harness.jobs.published import PROVENANCE_KEYS, PublishedSource, append_published, jsonable
from bsight.harness.jobtypes import (
    ACCURACY_TABLE,
    Artifact,
    ConfigIssue,
    JobSpec,
    JobType,
    Metric,
    ResultRow,
    SectionData,
    Unit,
    fingerprint,
    inputs_identity,
    job_index,
    methods_consume,
    name_issues,
    selected,
)
from bsight.harness.plots import line_plot, make_plot, new_figure
from bsight.harness.plugins import default_registry
from bsight.harness.report import shared_table
from bsight.kernels.dispatch import LayerCall, dense_prefill, sync
from bsight.kernels.sparsity.metadata import LayoutMeta

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.interfaces import ModelAdapter, Sample
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

SEARCH_DIR = "searched"
SWEEP_SCHEMA = baselines_sweep.SCHEMA
PUBLISHED_SWEEP = "reports/published/baselines_h100.json"
_TINY = 1e-30
SweepMethod = baselines_sweep.Method  # the script's methods (importing it loads no Triton)


# ------------------------------------------------------------------------------------------------ spec


class SearchStep(BaseModel):
    """The offline search of a method that needs one (e.g. MMInference's per-head pattern choice), run per
    model before the comparison."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="name from `methods:` whose plugin needs an offline search")
    task: str = Field(
        description="name from `tasks:` whose sample is searched (a characterization split, not the compared prompts)"
    )
    sample: int = Field(0, ge=0, description="index of the one sample searched")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the search's options, validated by the method's plugin (`SearchOptions`)"
    )
    publish: str | None = Field(None, description="also write the artifact here ('{model}' = config model name)")


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
    search: SearchStep | None = Field(
        None, description="a method's offline search (e.g. MMInference's), per model, first"
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
    """A prompt (``key``: sample id), the search (``key``: ``#search``) or a GPU sweep length (``key``: its
    token count)."""

    kind: Literal["prompt", "search", "timing"]
    prompt: PromptFidelity | None = None
    artifact: dict[str, Any] | None = None  # the searched artifact as JSON data
    timing: SweepLength | None = None
    source: Literal["measured", "published"] | None = None


SEARCH_KEY = "#search"


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
                f"layer index {call.layer_idx}: the probe takes one unpadded prompt, each layer once, with its "
                "layer_idx"
            )
        dense = dense_prefill(q, k, v, meta, call)
        before = sum(self.overhead.ms.values())
        sync(q.device)
        t0 = time.perf_counter()
        out = self.method.prefill(q, k, v, meta, call)
        sync(q.device)
        self.attention_ms += 1e3 * (time.perf_counter() - t0) - (sum(self.overhead.ms.values()) - before)
        if out.shape != dense.shape:
            raise ValueError(
                f"method {self.method.name!r} returned {tuple(out.shape)} at layer {call.layer_idx}, expected "
                f"{tuple(dense.shape)}"
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
            f"sample {sample.id!r}: prepare() gave a batch of {len(prepared.layouts)}; the comparison takes "
            "one prompt at a time"
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
            f"sample {sample.id!r}: the probe saw layers {sorted(layers)}, expected all {info.num_layers} "
            "(attn_implementation not 'bsight'?)"
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


def search_file(job: str, model: str) -> Path:
    """Where a search unit writes its artifact, relative to the run folder."""
    return Path(SEARCH_DIR) / job / f"{model}.json"


def _search_publish(step: SearchStep, model: str) -> Path | None:
    return None if step.publish is None else Path(step.publish.replace("{model}", model))


def _search_fingerprint(spec: BaselinesSpec, config: BenchmarkConfig, model: str) -> str:
    step = spec.search
    assert step is not None
    return fingerprint(
        BaselinesJob.type,
        "search",
        config.models[model].model_dump(),
        config.methods[step.method].model_dump(),
        config.tasks[step.task].model_dump(),
        step.sample,
        step.options,
    )


# ------------------------------------------------------------------------------------------ GPU sweep


def published_sweep_rows(doc: dict[str, Any], path: str) -> list[SweepLength]:
    """The per-length rows of a baselines sweep document; another schema is a ValueError naming the file."""
    if doc.get("schema") != SWEEP_SCHEMA:
        raise ValueError(
            f"published sweep {path}: schema {doc.get('schema')!r}, expected {SWEEP_SCHEMA!r} (python -m "
            "bsight.harness.benchmarks.baselines_sweep)"
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
    report_order = 80
    Spec = BaselinesSpec
    Row = BaselinesRow
    section = "baselines"
    title = "Baseline comparison"
    shardable = True  # prompts (and GPU lengths) are independent: a data-parallel session splits them

    @staticmethod
    def tasks_of(spec: BaselinesSpec, config: BenchmarkConfig) -> list[str]:
        if spec.tasks is not None:
            return list(spec.tasks)
        search = spec.search.task if spec.search else None
        return [t for t in config.tasks if t != search]

    @staticmethod
    def methods_of(spec: BaselinesSpec, config: BenchmarkConfig) -> list[str]:
        """The job's methods, the reference ones (the model's own attention) first: every row is read against them."""
        chosen = selected(spec, config, "methods")
        dense = [m for m in chosen if m in config.methods and config.method_class(m).is_reference]
        return dense + [m for m in chosen if m not in dense]

    def check(self, spec: BaselinesSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
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
        step = spec.search
        if step is not None:
            issues += self._search_issues(step, config)
            if step.task not in config.tasks:
                issues.append(
                    ConfigIssue(("search", "task"), f"{step.task!r} is not defined under `tasks:`; defined: {defined}")
                )
            if step.publish is not None:
                if len(selected(spec, config, "models")) > 1 and "{model}" not in step.publish:
                    issues.append(
                        ConfigIssue(
                            ("search", "publish"),
                            "this job searches several models: put '{model}' in the path so each gets its own file",
                        )
                    )
                rest = step.publish.replace("{model}", "")
                if "{" in rest or "}" in rest:
                    issues.append(ConfigIssue(("search", "publish"), "the only placeholder allowed is '{model}'"))
        if spec.gpu is not None:
            issues += spec.gpu.file_issues(spec.gpu.mode(), ("gpu",))
        return issues

    @staticmethod
    def _search_issues(step: SearchStep, config: BenchmarkConfig) -> list[ConfigIssue]:
        """The search method exists, its plugin has a search, and the options are that search's."""
        if step.method not in config.methods:
            return [
                ConfigIssue(
                    ("search", "method"),
                    f"{step.method!r} is not defined under `methods:`; defined: {', '.join(config.methods) or 'none'}",
                )
            ]
        cls = config.method_class(step.method)
        if cls.SearchOptions is None or cls.search_artifact is None:
            searching = [m for m in config.methods if config.method_class(m).search_artifact is not None]
            return [
                ConfigIssue(
                    ("search", "method"),
                    f"{step.method!r} (plugin {cls.name!r}) needs no offline search; "
                    f"methods that do: {', '.join(searching) or 'none'}",
                )
            ]
        try:
            cls.SearchOptions.model_validate(step.options)
        except ValueError as e:
            return [ConfigIssue(("search", "options"), f"invalid for {cls.name!r}'s search: {e}")]
        return []

    def produces(self, spec: BaselinesSpec, config: BenchmarkConfig) -> list[Artifact]:
        step = spec.search
        kind = config.method_class(step.method).search_artifact if step and step.method in config.methods else None
        if step is None or kind is None or step.task not in config.tasks:
            return []  # nothing to search (or a config error check() reports)
        root = Path(config.run.output_dir) / config.run.name
        out = []
        for model in [m for m in selected(spec, config, "models") if m in config.models]:
            common = {"identity": _search_fingerprint(spec, config, model), "job": spec.name, "model": model}
            rel = search_file(spec.name, model)
            out.append(Artifact(kind=kind, path=str(root / rel), run_path=str(rel), **common))
            published = _search_publish(step, model)
            if published is not None:
                out.append(Artifact(kind=kind, path=str(published), **common))
        return out

    def consumes(self, spec: BaselinesSpec, config: BenchmarkConfig) -> list[tuple[tuple[str | int, ...], Artifact]]:
        return methods_consume(config, selected(spec, config, "methods"))

    def expand(self, spec: BaselinesSpec, config: BenchmarkConfig) -> list[Unit]:
        index = job_index(spec, config)
        units = []
        for model in selected(spec, config, "models"):
            if spec.search is not None:
                units.append(
                    Unit(
                        job=spec.name,
                        type=self.type,
                        id=f"{spec.name}/{model}/search",
                        model=model,
                        task=spec.search.task,
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
                        *inputs_identity(config, method, index + 1),  # this job's own search comes first
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
        cats = method.static_categories(info)
        if cats is None and not callable(getattr(method, "take_kept", None)):
            raise ValueError(
                f"method {unit.method!r} has neither static head categories nor a take_kept() log of the pairs "
                "it computed"
            )
        samples = ctx.samples(unit.task, spec.limit)
        ctx.expect(len(samples))
        ctx.note(weights=info.weights, model_id=info.model_id, **method.describe())
        mine = ctx.shard(samples, key=lambda s: s.id)
        todo = [s for s in mine if s.id not in rows.done]
        with ctx.progress(unit.id, total=len(mine), completed=len(mine) - len(todo)) as bar:
            for sample in todo:
                rows.append(
                    BaselinesRow(key=sample.id, kind="prompt", prompt=measure_prompt(adapter, method, cats, sample))
                )
                bar.advance()

    def _search(self, spec: BaselinesSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[BaselinesRow]) -> None:
        step = spec.search
        assert step is not None
        cls = ctx.config.method_class(step.method)
        assert cls.SearchOptions is not None  # check() ran
        ctx.expect(1)
        if not ctx.shard([SEARCH_KEY], key=str):
            return  # another rank's share
        stored = rows.rows.get(SEARCH_KEY)
        if stored is None:
            adapter = ctx.model(unit.model)
            samples = ctx.samples(step.task, step.sample + 1)
            if len(samples) <= step.sample:
                raise ValueError(f"search.sample is {step.sample} but task {step.task!r} has {len(samples)} samples")
            with ctx.progress(f"{unit.id} (sample {samples[step.sample].id})", total=1) as bar:
                found = cls.search(adapter, samples[step.sample], cls.SearchOptions.model_validate(step.options))
                bar.advance()
            stored = BaselinesRow(key=SEARCH_KEY, kind="search", artifact=found.model_dump(mode="json"))
            rows.append(stored)
        if ctx.run_dir is None:
            raise RuntimeError(f"unit {unit.id}: no run folder to write the search's artifact into")
        files = {"artifact": str(search_file(unit.job, unit.model))}
        paths = [ctx.run_dir / files["artifact"]]
        published = _search_publish(step, unit.model)
        if published is not None:
            files["published"] = str(published)
            paths.append(published)
        for path in paths:
            cls.save_artifact(stored.artifact, path)
        ctx.note(files=files, search_method=step.method, plugin=cls.name, kind=cls.search_artifact)

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
                f"job {spec.name!r}: gpu.source is 'measure' but this machine has no CUDA device (gpu.small "
                "measures the CPU shape)"
            )
        lengths = list(
            dict.fromkeys(gpu.lengths or (baselines_sweep.SMALL if gpu.small else baselines_sweep.GPU).lengths)
        )
        ctx.expect(len(lengths))
        ctx.note(source="measured")
        mine = ctx.shard([str(n) for n in lengths], key=str)
        todo = [n for n in mine if n not in rows.done]
        with ctx.progress(unit.id, total=len(mine), completed=len(mine) - len(todo)) as bar:
            for n in todo:
                sweep = baselines_sweep.SweepSpec(
                    small=gpu.small,
                    lengths=[int(n)],
                    reps=gpu.reps,
                    **({"methods": gpu.methods} if gpu.methods else {}),
                )
                doc = baselines_sweep.run(sweep, log=lambda line: None)  # its progress lines would break the display
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
        registry = default_registry()

        def reference(method: str) -> bool:
            plugin = plugins.get(method)
            return plugin in registry.entries["method"] and registry.get("method", plugin).is_reference

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
                    "accuracy": accuracy_of(accuracy, u, plugins.get(u.method), reference(u.method), rec.info),
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
        stored = next((r.artifact for r in run.rows(rec.unit, BaselinesRow) if r.kind == "search"), None)
        part = {
            "job": rec.unit.job,
            "model": rec.unit.model,
            "task": rec.unit.task,
            "status": rec.status,
            "error": rec.error,
            "empty": stored is None,
        }
        if stored is None:
            return part
        cls = default_registry().get("method", rec.info.get("plugin", ""))  # the searching method's plugin
        summary = cls.summarize_artifact(rec.info.get("kind", ""), stored)  # type: ignore[attr-defined]
        return {**part, **summary, "files": rec.info.get("files", {})}

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


def method_notes(info: dict[str, Any]) -> list[str]:
    """What a unit recorded about its method, as short phrases for the table."""
    notes = list(info.get("notes") or [])
    hm = info.get("head_map")
    if hm:
        notes.append(
            f"head map of {hm['model_id']} ({hm['weights']} weights, {hm['dataset']}, {hm['size']} prompts, "
            f"tau {hm['tau']:g})"
        )
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


def accuracy_cells(run: RunFolder) -> list[dict[str, Any]]:
    """Accuracy and agreement with the baseline from the run's stored answers, never generated again: the
    ``accuracy`` table the run's job types offer (:attr:`~bsight.harness.jobtypes.JobType.tables`: accuracy
    jobs per method, tau sweeps per tau and for their baseline), in report order."""
    return shared_table(run, ACCURACY_TABLE)


def accuracy_of(
    cells: list[dict[str, Any]], unit: Unit, plugin: str | None, reference: bool, info: dict[str, Any]
) -> dict[str, Any] | None:
    """The accuracy cell of a comparison unit (the first that matches): the same model, method and task; else,
    for a reference method, a tau sweep's baseline answers on the same model and task; else, for a method running
    a characterized head map, the tau sweep's answers at the head map's tau under the same plugin, when the sweep's
    map there has the same category shares."""
    here = [c for c in cells if c["model"] == unit.model and c["task"] == unit.task]
    found = next((c for c in here if c["method"] == unit.method and c["tau"] is None and not c["reference"]), None)
    if found is None and reference:
        found = next((c for c in here if c["reference"]), None)
    head_map = info.get("head_map")
    if found is None and head_map:
        for c in here:
            shares = c.get("shares") or {}
            if (
                c["tau"] == f"{head_map['tau']:g}"
                and c["plugin"] == plugin
                and all(abs(shares.get(k, 0.0) - v) < 1e-9 for k, v in head_map["shares"].items())
            ):  # the same head map, run by the same plugin
                found = c
                break
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


@hookimpl
def bsight_job_types():
    return [BaselinesJob]
