"""Job ``flops``: exact attention FLOPs per prompt, each method against the model's own dense mask.

One unit per (model, method, task), one row per prompt (a data-parallel session splits the prompts). A method with static head categories (``dense``,
``blindsight`` with a head map or a uniform category) needs only the prompt's layout: its kept query-key pairs
are counted exactly from the layout (:func:`bsight.kernels.sparsity.flops.model_flops`, each layer with its own
sliding window, sinks under the method's sink policy) and the model never runs. A dynamic method (patterns
estimated per prompt: ``mminference``, ``streaming``) has no static categories; with ``run_model: true`` the
job runs the prefill (``adapter.prefill``) and takes the pairs the method reports it computed
(``take_kept()``), else the unit fails with a message saying so.

A method whose ``head_map`` option names a file written by an earlier ``characterize`` job of the same config
(its ``publish`` path, or its file in the default run folder) is planned with that job's parameters in the
fingerprint, so re-characterizing with another tau recounts; any other head map file enters the fingerprint by
its content. The section: per (model, task) the per-prompt CDF of the FLOPs reduction (one curve per method)
and a summary table (mean, median, min, max reduction; prompt lengths).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from bsight.harness.figures import flops_cdf
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
from bsight.harness.jobs.characterize import head_map_identity, head_map_writers
from bsight.harness.jobs.timing import published_file
from bsight.harness.plots import make_plot
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.flops import attention_flops, layer_pair_table, model_flops
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.metadata import LayoutMeta

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


def _head_map_option(config: BenchmarkConfig, method: str) -> str | None:
    value = config.methods[method].options.get("head_map")
    return value if isinstance(value, str) else None


def static_categories(method: AttentionMethod, info: ModelInfo) -> np.ndarray | None:
    """``int64 [layers, heads]`` categories of a method that has them for every layer, else None (dynamic)."""
    layers = [method.head_categories(layer) for layer in range(info.num_layers)]
    if all(c is None for c in layers):
        return None
    if any(c is None for c in layers):
        raise ValueError(f"method {method.name!r} gives static head categories for some layers only")
    cats = np.stack([np.asarray(c.cpu() if hasattr(c, "cpu") else c, dtype=np.int64) for c in layers])
    if cats.shape != (info.num_layers, info.num_heads):
        raise ValueError(
            f"method {method.name!r} gives head categories of shape {cats.shape}, the model has {info.num_layers} x {info.num_heads}"
        )
    return cats


def prompt_flops(
    meta: LayoutMeta, info: ModelInfo, cats: np.ndarray | None, kept: list | None, who: str
) -> tuple[float, float, str]:
    """(dense FLOPs, method FLOPs, source) of one prompt: static head categories are counted from the layout
    (``layout``); a dynamic method's are the pairs it logged during the prefill (``kept``, one entry per layer:
    ``measured``). ``who`` names the sample and method in errors."""
    if cats is not None:
        counted = model_flops(meta, cats, info.sliding_windows, info.head_dim)
        return counted["dense_flops"], counted["sparse_flops"], "layout"
    kept = kept or []
    seen = sorted({lp.layer for lp in kept})
    if seen != list(range(info.num_layers)) or len(kept) != info.num_layers:
        raise RuntimeError(
            f"{who} logged pairs for layers {seen} in {len(kept)} calls, expected each of {info.num_layers} layers once"
        )
    dense_pairs = int(layer_pair_table(meta, info.sliding_windows)[:, Category.DENSE].sum()) * info.num_heads
    return (
        float(attention_flops(dense_pairs, info.head_dim)),
        float(attention_flops(sum(int(lp.pairs.sum()) for lp in kept), info.head_dim)),
        "measured",
    )


def option_file_identity(
    path: str | None, writers: dict[str, tuple[Any, str]], identity: Callable[[Any, str], Any]
) -> Any:
    """What decides the content of a file a method option names, for the fingerprint of units that use it:
    ``identity(job spec, model)`` of the earlier job that writes it (``writers``, by normalized path), else the
    file's content hash (``absent`` when missing); None for a method without such a file."""
    if path is None:
        return None
    writer = writers.get(os.path.normpath(path))
    if writer is not None:
        return identity(*writer)
    file = published_file(path)
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16] if file is not None else "absent"


def method_head_map_identity(config: BenchmarkConfig, method: str, before: int) -> Any:
    """:func:`option_file_identity` of a method's ``head_map`` file: written by one of the config's first
    ``before`` jobs (a characterize job: its parameters), else its content."""
    return option_file_identity(
        _head_map_option(config, method),
        head_map_writers(config, before=before),
        lambda spec, model: head_map_identity(spec, config, model),
    )


class FlopsJob(JobType):
    type = "flops"
    Spec = FlopsSpec
    Row = FlopsRow
    section = "flops"
    title = "FLOPs"
    shardable = True  # prompts are independent: a data-parallel session splits them over its ranks

    def check(self, spec: FlopsSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        issues = name_issues(spec, config, ("models", "methods", "tasks"))
        if issues:
            return issues
        index = next((i for i, s in enumerate(config.jobs) if s is spec), len(config.jobs))
        writers = head_map_writers(config, before=index)
        for i, method in enumerate(selected(spec, config, "methods")):
            path = _head_map_option(config, method)
            if path is not None and not Path(path).is_file() and os.path.normpath(path) not in writers:
                issues.append(
                    ConfigIssue(
                        ("methods", i),
                        f"method {method!r} reads head_map {path!r}, which does not exist and which no earlier characterize job writes "
                        f"(a characterize job writes <run folder>/headmaps/<job>/<model>.json and its `publish` path)",
                    )
                )
        return issues

    def expand(self, spec: FlopsSpec, config: BenchmarkConfig) -> list[Unit]:
        from bsight.harness.jobs.baselines import method_pattern_identity

        index = next((i for i, s in enumerate(config.jobs) if s is spec), len(config.jobs))
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
                        method_head_map_identity(config, method, index),
                        # patterns searched again by an earlier job change what a dynamic method computes
                        *([p] if (p := method_pattern_identity(config, method, index)) is not None else []),
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
        cats = static_categories(method, info)
        if cats is None and not spec.run_model:
            raise ValueError(
                f"method {unit.method!r} has no static head categories (its patterns depend on the prompt): "
                f"set run_model: true in job {spec.name!r} to run the prefill and count the pairs it computes, or leave the method out"
            )
        if cats is None and not callable(getattr(method, "take_kept", None)):
            raise ValueError(
                f"method {unit.method!r} has neither static head categories nor a take_kept() log of the pairs it computed"
            )
        head_map = getattr(method, "head_map", None)
        if isinstance(head_map, HeadMap):
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
                f"sample {sample.id!r}: prepare() gave a batch of {len(prepared.layouts)}; FLOPs are counted one prompt at a time"
            )
        layout = prepared.layouts[0]
        if method.sink_policy is not None:  # the sinks the method attends to, as the attention bridge applies them
            layout = layout.with_sinks(method.sink_policy)
        meta = LayoutMeta.build(layout.unpadded())
        kept = None
        if cats is None:
            method.take_kept()  # drop anything logged outside this prompt
            adapter.prefill(prepared, method)
            kept = method.take_kept()
        dense, sparse, source = prompt_flops(meta, info, cats, kept, f"sample {sample.id!r}: method {unit.method!r}")
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
