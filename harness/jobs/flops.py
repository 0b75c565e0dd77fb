"""Job ``flops``: exact attention FLOPs per prompt, each method against the model's own dense mask.

One unit per (model, method, task), one row per prompt (a data-parallel session splits the prompts). A method
with static head categories (e.g. dense, or a head map) needs only the prompt's layout: its kept query-key pairs
are counted exactly from the layout (:func:`bsight.kernels.sparsity.flops.model_flops`, each layer with its own
sliding window, sinks under the method's sink policy) and the model never runs. A dynamic method (patterns
estimated per prompt, e.g. MMInference-style) has no static categories; with ``run_model: true`` the
job runs the prefill (``adapter.prefill``) and takes the pairs the method reports it computed
(``take_kept()``), else the unit fails with a message saying so.

A method that reads a file an earlier job of the same config writes (a head map: a ``characterize`` job's
artifact) is planned with that job's declared identity in the fingerprint, so re-characterizing with another
tau recounts; any other file enters the fingerprint by its content. The section: per (model, task) the
per-prompt CDF of the FLOPs reduction (one curve per method) and a summary table (mean, median, min, max
reduction; prompt lengths).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from bsight.harness.figures import flops_cdf
from bsight.harness.hookspecs import hookimpl
from bsight.harness.jobs.counting import prompt_flops
from bsight.harness.jobtypes import (
    FLOPS_TABLE,
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
from bsight.harness.plots import make_plot
from bsight.kernels.sparsity.layerkinds import describe

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.interfaces import AttentionMethod, ModelAdapter, ModelInfo, Sample
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet


class FlopsSpec(JobSpec):
    type: Literal["flops"]
    models: list[str] | None = Field(None, description="names from `models:`; default all")
    methods: list[str] | None = Field(None, description="names from `methods:`; default all")
    tasks: list[str] | None = Field(None, description="names from `tasks:`; default all")
    limit: int | None = Field(None, ge=1, description="first N prompts of each task")
    run_model: bool = Field(
        False,
        description="run the prefill for methods without static head categories and count the pairs they computed",
    )


class FlopsRow(ResultRow):
    """One prompt (``key``: its sample id) under one method: attention FLOPs of the whole model."""

    sample_id: str
    task: str
    subtask: str
    model: str
    method: str
    tokens: int
    images: int
    image_tokens: int
    dense_flops: float  # the model's own mask, every layer and query head
    sparse_flops: float  # under the method
    reduction: float  # 1 - sparse / dense
    source: Literal[
        "layout", "measured"
    ]  # counted from the layout (static categories) or reported by the method in a prefill


class FlopsJob(JobType):
    type = "flops"
    report_order = 20
    Spec = FlopsSpec
    Row = FlopsRow
    section = "flops"
    title = "FLOPs"
    shardable = True  # prompts are independent: a data-parallel session splits them over its ranks

    def check(self, spec: FlopsSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        return name_issues(spec, config, ("models", "methods", "tasks"))

    def consumes(self, spec: FlopsSpec, config: BenchmarkConfig) -> list[tuple[tuple[str | int, ...], Artifact]]:
        return methods_consume(config, selected(spec, config, "methods"))

    def expand(self, spec: FlopsSpec, config: BenchmarkConfig) -> list[Unit]:
        index = job_index(spec, config)
        units = []
        for model in selected(spec, config, "models"):
            for task in selected(spec, config, "tasks"):
                for method in selected(spec, config, "methods"):
                    fp = fingerprint(
                        self.type,
                        config.models[model].model_dump(),
                        config.methods[method].model_dump(),
                        config.tasks[task].model_dump(),
                        spec.run_model,
                        # a head map re-characterized (patterns searched again) by an earlier job recounts
                        *inputs_identity(config, method, index),
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

    # ------------------------------------------------------------------------------------------ running

    def run_unit(self, spec: FlopsSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[FlopsRow]) -> None:
        adapter, method = ctx.model(unit.model), ctx.method(unit.method)
        info = adapter.info
        method.setup(info)
        cats = method.static_categories(info)
        if cats is None and not spec.run_model:
            raise ValueError(
                f"method {unit.method!r} has no static head categories (its patterns depend on the prompt): "
                f"set run_model: true in job {spec.name!r} to run the prefill and count the pairs it computes, "
                "or leave the method out"
            )
        if cats is None and not callable(getattr(method, "take_kept", None)):
            raise ValueError(
                f"method {unit.method!r} has neither static head categories nor a take_kept() log of the pairs "
                "it computed"
            )
        # hybrid models: only softmax-attention layers count; the report says how many layers of which kind
        ctx.note(layer_kinds=describe(info.layer_kinds, info.num_layers))
        head_map = method.head_map
        if head_map is not None:
            ctx.note(
                head_map={
                    "model_id": head_map.model_id,
                    "weights": head_map.weights,
                    "dataset": head_map.dataset.name,
                    "size": head_map.dataset.size,
                    "tau": head_map.params.tau,
                    "shares": head_map.shares(),
                }
            )
        samples = ctx.samples(unit.task, spec.limit)
        ctx.expect(len(samples))
        mine = ctx.shard(samples, key=lambda s: s.id)
        todo = [s for s in mine if s.id not in rows.done]
        with ctx.progress(unit.id, total=len(mine), completed=len(mine) - len(todo)) as bar:
            for sample in todo:
                rows.append(self._count(unit, adapter, method, info, cats, sample))
                bar.advance()

    @staticmethod
    def _count(
        unit: Unit,
        adapter: ModelAdapter,
        method: AttentionMethod,
        info: ModelInfo,
        cats: np.ndarray | None,
        sample: Sample,
    ) -> FlopsRow:
        prepared = adapter.prepare(sample)
        if len(prepared.layouts) != 1:
            raise ValueError(
                f"sample {sample.id!r}: prepare() gave a batch of {len(prepared.layouts)}; FLOPs are counted "
                "one prompt at a time"
            )
        layout = prepared.layouts[0]
        if method.sink_policy is not None:  # the sinks the method attends to, as the attention bridge applies them
            layout = layout.with_sinks(method.sink_policy)
        kept = None
        if cats is None:
            method.take_kept()  # drop anything logged outside this prompt
            adapter.prefill(prepared, method)
            kept = method.take_kept()
        dense, sparse, source = prompt_flops(layout, info, cats, kept, f"sample {sample.id!r}: method {unit.method!r}")
        return FlopsRow(
            key=sample.id,
            sample_id=sample.id,
            task=unit.task,
            subtask=sample.subtask,
            model=unit.model,
            method=unit.method,
            tokens=layout.num_valid,
            images=layout.num_images,
            image_tokens=layout.num_image_tokens,
            dense_flops=dense,
            sparse_flops=sparse,
            reduction=1.0 - sparse / dense if dense else 0.0,
            source=source,
        )

    # ---------------------------------------------------------------------------------------- reporting

    def _groups(self, run: RunFolder, records: list[UnitRecord]) -> list[dict]:
        groups: dict[tuple[str, str, str], dict] = {}
        for rec in records:
            u = rec.unit
            rows = run.rows(u, FlopsRow)
            if not rows:
                continue
            g = groups.setdefault(
                (u.job, u.model, u.task), {"job": u.job, "model": u.model, "task": u.task, "methods": []}
            )
            g.setdefault("layer_kinds", rec.info.get("layer_kinds"))
            r = np.array([x.reduction for x in rows])
            tokens = np.array([x.tokens for x in rows])
            g["methods"].append(
                {
                    "method": u.method,
                    "n": len(rows),
                    "expected": rec.expected,
                    "status": rec.status,
                    "reductions": r.tolist(),
                    "mean": float(r.mean()),
                    "median": float(np.median(r)),
                    "min": float(r.min()),
                    "max": float(r.max()),
                    "tokens_mean": float(tokens.mean()),
                    "tokens_min": int(tokens.min()),
                    "tokens_max": int(tokens.max()),
                    "images_mean": float(np.mean([x.images for x in rows])),
                    "source": sorted({x.source for x in rows}),
                    "head_map": rec.info.get("head_map"),
                }
            )
        return list(groups.values())

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        groups = self._groups(run, records)
        if not groups:
            return None
        plots = []
        for gi, g in enumerate(groups):
            fig = flops_cdf(
                {m["method"]: m["reductions"] for m in g["methods"]},
                title=f"{g['model']} on {g['task']}: attention FLOPs reduction per prompt",
            )
            g["plot"] = make_plot(
                f"flops-{gi}-{g['model']}-{g['task']}",
                f"{g['model']} on {g['task']}: CDF of the per-prompt FLOPs reduction",
                fig,
            )
            plots.append(g["plot"])
        return SectionData(context={"groups": groups}, plots=plots)

    tables = (FLOPS_TABLE,)

    def table(self, run: RunFolder, records: list[UnitRecord], name: str) -> list[dict[str, Any]]:
        """``flops``: per (model, method, task) the attention FLOPs reduction over its prompts, as the section
        shows it (mean, median, min, max; how it was counted)."""
        if name != FLOPS_TABLE:
            return []
        keep = ("method", "n", "expected", "status", "mean", "median", "min", "max", "source")
        return [
            {"job": g["job"], "model": g["model"], "task": g["task"], **{k: m[k] for k in keep}}
            for g in self._groups(run, records)
            for m in g["methods"]
        ]

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        return [
            Metric(
                name=f"{g['job']}/{g['model']}/{g['task']}/{m['method']}/flops_reduction_mean",
                value=m["mean"],
                higher_is_better=True,
            )
            for g in self._groups(run, records)
            for m in g["methods"]
        ]


@hookimpl
def bsight_job_types():
    return [FlopsJob]
