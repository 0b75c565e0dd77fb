"""Job ``characterize``: a model's head map from a task's prompts (DESIGN.md section 1), resumable prompt by prompt.

One unit per model (all on the job's one task). The unit's first row (key ``#setup``) fixes what every prompt
is characterized under: the model's :class:`ModelInfo`, the sink policy (the job's ``sinks``, else one found
by ``discover_sinks`` - fixed-offset sinks voted from dense attention, :mod:`bsight.harness.sinks` -
else the adapter's) and the dataset. Then one row per prompt holds its NMSE and kept-pair tables
(:class:`PromptRecord`, from :func:`characterize_model` run through ``adapter.prefill``), so a killed run
resumes at the next prompt and tau, delta and gamma can change without running the model again: they only
re-aggregate the stored tables.

When every prompt is done the unit builds the head map with the job's tau, delta, gamma and writes, into the
run folder, ``headmaps/<job>/<model>.json`` (the :class:`HeadMap`), ``<model>.characterization.json`` (the
per-prompt tables, for re-selection) and, with ``sweep_taus``, ``<model>.sweep.json`` (FLOPs reduction vs
NMSE per grid point); ``publish`` also writes the head map to a path of the user's (``{model}`` = the config
model name). Method ``blindsight`` in a later job reads it from either path through its ``head_map`` option.

The section "characterization": per model the layer x head category heatmap, per-layer shares, category
shares, FLOPs reduction and NMSE of the head map on the characterized prompts, parameters, dataset and sink
policy, and the sweep table with its Pareto plot.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bsight.harness.characterize import characterize_model
from bsight.harness.figures import category_heatmap, layer_shares, pareto_figure
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import ModelInfo
from bsight.harness.jobtypes import (
    CALIBRATION_TABLE,
    HEADMAP_DIR,
    Artifact,
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
from bsight.harness.paper_figures import category_choice, sink_votes
from bsight.harness.plots import make_plot
from bsight.kernels.sparsity.aggregate import DEFAULT_PARAMS, build_head_map
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.characterization import CharacterizationResult, PromptRecord, SkippedPrompt
from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo, HeadMap
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.param_sweep import SweepRow, pareto_front, sweep

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.interfaces import ModelAdapter, Sample, Task
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

SETUP_KEY = "#setup"
HEAD_MAP, CHARACTERIZATION = "head_map", "characterization"  # the artifact kinds this job produces


class DiscoverSinks(BaseModel):
    """Fixed-offset sink discovery (Gemma 3 style) before characterization."""

    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(4, ge=1, description="sink offsets to keep: the most voted ones")
    prompts: int = Field(8, ge=1, description="the task's first N prompts vote (they need at least two images)")
    queries_per_image: int = Field(16, ge=1, description="query rows scored per image")
    top_per_query: int = Field(1, ge=1, description="keys each scored query votes for")


class CharacterizeSpec(JobSpec):
    type: Literal["characterize"]
    models: list[str] | None = Field(None, description="names from `models:`; default all")
    task: str | None = Field(
        None, description="name from `tasks:` whose prompts characterize; default: the only task defined"
    )
    limit: int | None = Field(None, ge=1, description="first N prompts of the task")
    tau: float = Field(
        DEFAULT_PARAMS.tau, gt=0, description="prompt level: the cheapest mask with NMSE <= tau, else dense"
    )
    delta: float = Field(
        DEFAULT_PARAMS.delta, ge=0, le=1, description="dataset level: dense share above delta keeps a head dense"
    )
    gamma: float = Field(
        DEFAULT_PARAMS.gamma,
        ge=0,
        le=1,
        description="dataset level: predominant sparse share below gamma -> intra_image_sink",
    )
    sinks: SinkPolicy | None = Field(None, description="sink policy to characterize with; default: the adapter's")
    discover_sinks: DiscoverSinks | None = Field(None, description="find fixed sink offsets from dense attention first")
    chunk_size: int = Field(256, ge=1, description="image-query rows per chunk of the NMSE probe")
    sweep_taus: list[float] | None = Field(
        None, min_length=1, description="sweep: FLOPs reduction vs NMSE for these tau values"
    )
    sweep_deltas: list[float] | None = Field(None, min_length=1, description="sweep: delta values (default: delta)")
    sweep_gammas: list[float] | None = Field(None, min_length=1, description="sweep: gamma values (default: gamma)")
    publish: str | None = Field(None, description="also write the head map here ('{model}' = config model name)")

    @field_validator("sweep_taus")
    @classmethod
    def _taus(cls, values: list[float] | None) -> list[float] | None:
        if any(t <= 0 for t in values or ()):
            raise ValueError(f"every tau must be > 0, got {values}")
        return values

    @field_validator("sweep_deltas", "sweep_gammas")
    @classmethod
    def _shares(cls, values: list[float] | None) -> list[float] | None:
        if any(not 0 <= x <= 1 for x in values or ()):
            raise ValueError(f"every value must lie in [0, 1], got {values}")
        return values

    @model_validator(mode="after")
    def _check(self) -> CharacterizeSpec:
        if self.sinks is not None and self.discover_sinks is not None:
            raise ValueError("give either 'sinks' (a policy) or 'discover_sinks' (find one), not both")
        return self

    @property
    def params(self) -> CharacterizationParams:
        return CharacterizationParams(tau=self.tau, delta=self.delta, gamma=self.gamma)

    @property
    def sweeps(self) -> bool:
        return any(x is not None for x in (self.sweep_taus, self.sweep_deltas, self.sweep_gammas))


class CharacterizeSetup(BaseModel):
    """What every prompt row of a unit was characterized under."""

    model_config = ConfigDict(extra="forbid")
    model: ModelInfo
    sink_policy: SinkPolicy
    sink_source: Literal["adapter", "job", "discovered"]
    votes: list[int] = []  # sink discovery: votes per in-image offset
    dataset: DatasetInfo


class CharacterizeRow(ResultRow):
    """``#setup`` (once per unit), or one prompt (``key``: its sample id): its tables, or why it was skipped."""

    kind: Literal["setup", "prompt", "skipped"]
    setup: CharacterizeSetup | None = None
    record: PromptRecord | None = None
    reason: str | None = None
    wall_s: float | None = Field(None, description="wall time of this prompt's calibration: prepare and probed prefill")


@dataclass
class Characterization:
    """A unit's stored prompts aggregated with the job's parameters (what files and the report show)."""

    setup: CharacterizeSetup
    result: CharacterizationResult
    head_map: HeadMap
    chosen: SweepRow  # FLOPs reduction and NMSE of the head map itself on the characterized prompts
    sweep: list[SweepRow] = field(default_factory=list)


def summarize(spec: CharacterizeSpec, setup: CharacterizeSetup, prompts: list[CharacterizeRow]) -> Characterization:
    """Aggregate prompt rows (in task order) into the head map, its own fidelity, and the sweep if asked."""
    from bsight.kernels.sparsity.artifacts import tool_version

    m = setup.model
    result = CharacterizationResult(
        model_id=m.model_id,
        model_revision=m.revision,
        weights=m.weights,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        sliding_windows=list(m.sliding_windows),
        layer_kinds=list(m.layer_kinds),  # hybrid models: linear layers are skipped, not characterized
        dataset=setup.dataset,
        sink_policy=setup.sink_policy,
        tool_version=tool_version(),
        prompts=[r.record for r in prompts if r.kind == "prompt" and r.record is not None],
        skipped=[SkippedPrompt(id=r.key, reason=r.reason or "") for r in prompts if r.kind == "skipped"],
    )
    result.dataset = result.dataset.model_copy(update={"size": len(result.prompts)})
    head_map = build_head_map(result, spec.params)
    (chosen,) = sweep(result, [spec.tau], [spec.delta], [spec.gamma])
    grid = sweep(result, spec.sweep_taus or [spec.tau], spec.sweep_deltas, spec.sweep_gammas) if spec.sweeps else []
    return Characterization(setup=setup, result=result, head_map=head_map, chosen=chosen, sweep=grid)


def _kinds_text(hm: HeadMap) -> str:
    """How many layers of which kind, saying that the non-softmax ones were skipped."""
    from bsight.kernels.sparsity.layerkinds import describe

    text = describe(hm.layer_kinds, hm.num_layers)
    return text + (" (linear layers are not softmax attention: not characterized)" if "linear" in hm.kinds() else "")


def head_map_file(job: str, model: str) -> Path:
    """Where a characterize unit writes its head map, relative to the run folder."""
    return Path(HEADMAP_DIR) / job / f"{model}.json"


def tables_file(job: str, model: str) -> Path:
    """Where a characterize unit writes its per-prompt NMSE tables (the ``characterization`` artifact)."""
    return head_map_file(job, model).with_name(f"{model}.characterization.json")


def publish_path(spec: CharacterizeSpec, model: str) -> Path | None:
    return None if spec.publish is None else Path(spec.publish.replace("{model}", model))


def head_map_identity(spec: CharacterizeSpec, config: BenchmarkConfig, model: str) -> str:
    """Everything that decides the head map a characterize job writes for a model, hashed: other jobs that
    read it put this in their fingerprint, so a re-characterization with other parameters redoes them."""
    unit = CharacterizeJob._unit(spec, config, model)
    return fingerprint(unit.fingerprint, spec.limit, spec.tau, spec.delta, spec.gamma)


def _integer_ticks(fig: Figure, axes: str) -> Figure:
    """Layer and head axes count whole layers and heads (small models would get ticks at 0.5)."""
    ax = fig.axes[0]
    for name in axes:
        getattr(ax, f"{name}axis").set_major_locator(MaxNLocator(integer=True))
    return fig


def _sink_text(policy: SinkPolicy) -> str:
    if policy.kind == "fraction":
        return f"first {policy.fraction:.2%} of each image's tokens (at least its start token)"
    return "offsets " + ", ".join(map(str, policy.offsets)) + " inside each image"


def _calibration_cost(run: RunFolder, rec: UnitRecord) -> dict[str, Any] | None:
    """The wall time of a unit's timed prompts (prompt preparation and the probed prefill): ``n``, ``total_s``,
    ``mean_s``, ``median_s``; None when no row was timed (rows written before bsight timed calibration)."""
    walls = [r.wall_s for r in run.rows(rec.unit, CharacterizeRow) if r.wall_s is not None]
    if not walls:
        return None
    total = sum(walls)
    return {"n": len(walls), "total_s": total, "mean_s": total / len(walls), "median_s": statistics.median(walls)}


class CharacterizeJob(JobType):
    type = "characterize"
    report_order = 30
    Spec = CharacterizeSpec
    Row = CharacterizeRow
    section = "characterization"
    title = "Characterization"
    tables = (CALIBRATION_TABLE,)

    @staticmethod
    def task_of(spec: CharacterizeSpec, config: BenchmarkConfig) -> str | None:
        if spec.task is not None:
            return spec.task
        return next(iter(config.tasks)) if len(config.tasks) == 1 else None

    def check(self, spec: CharacterizeSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        issues = name_issues(spec, config, ("models",))
        task = self.task_of(spec, config)
        defined = ", ".join(config.tasks) or "none"
        if task is None:
            issues.append(
                ConfigIssue(("task",), f"name the task to characterize on; defined under `tasks:`: {defined}")
            )
        elif task not in config.tasks:
            issues.append(ConfigIssue(("task",), f"{task!r} is not defined under `tasks:`; defined: {defined}"))
        if spec.publish is not None:
            models = selected(spec, config, "models")
            if len(models) > 1 and "{model}" not in spec.publish:
                issues.append(
                    ConfigIssue(
                        ("publish",),
                        f"this job characterizes {len(models)} models: put '{{model}}' in the path so each "
                        "gets its own file",
                    )
                )
            rest = spec.publish.replace("{model}", "")
            if "{" in rest or "}" in rest:
                issues.append(ConfigIssue(("publish",), "the only placeholder allowed is '{model}'"))
        return issues

    def produces(self, spec: CharacterizeSpec, config: BenchmarkConfig) -> list[Artifact]:
        """Per model: the head map (in the run folder and at ``publish``) and the NMSE tables, with the task and
        parameters readers check (a tau sweep needs another task; it re-aggregates with delta and gamma)."""
        root = Path(config.run.output_dir) / config.run.name
        task = self.task_of(spec, config)
        out = []
        for model in selected(spec, config, "models"):
            common = {
                "job": spec.name,
                "model": model,
                "info": {"task": task, "tau": spec.tau, "delta": spec.delta, "gamma": spec.gamma},
            }
            maps = {"identity": head_map_identity(spec, config, model), **common}
            tables = tables_file(spec.name, model)  # the tables do not depend on tau, delta, gamma
            out.append(
                Artifact(
                    kind=CHARACTERIZATION,
                    path=str(root / tables),
                    run_path=str(tables),
                    identity=fingerprint(self._unit(spec, config, model).fingerprint, spec.limit),
                    **common,
                )
            )
            rel = head_map_file(spec.name, model)
            out.append(Artifact(kind=HEAD_MAP, path=str(root / rel), run_path=str(rel), **maps))
            published = publish_path(spec, model)
            if published is not None:
                out.append(Artifact(kind=HEAD_MAP, path=str(published), **maps))
        return out

    @classmethod
    def _unit(cls, spec: CharacterizeSpec, config: BenchmarkConfig, model: str) -> Unit:
        return next(u for u in cls().expand(spec, config) if u.model == model)

    def expand(self, spec: CharacterizeSpec, config: BenchmarkConfig) -> list[Unit]:
        task = self.task_of(spec, config)
        units = []
        for model in selected(spec, config, "models"):
            fp = fingerprint(
                self.type,
                config.models[model].model_dump(),
                config.tasks[task].model_dump(),
                spec.sinks.model_dump() if spec.sinks else None,
                spec.discover_sinks.model_dump() if spec.discover_sinks else None,
                spec.chunk_size,
            )
            units.append(
                Unit(job=spec.name, type=self.type, id=f"{spec.name}/{model}", model=model, task=task, fingerprint=fp)
            )
        return units

    # ------------------------------------------------------------------------------------------ running

    def run_unit(self, spec: CharacterizeSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[CharacterizeRow]) -> None:
        adapter, task = ctx.model(unit.model), ctx.task(unit.task)
        samples = ctx.samples(unit.task, spec.limit)
        if any(s.id == SETUP_KEY for s in samples):
            raise ValueError(f"task {unit.task!r} has a sample with id {SETUP_KEY!r}, which this job reserves")
        ctx.expect(1 + len(samples))
        if ctx.run_dir is not None:  # readers must never find files of an earlier, different characterization
            for rel in (head_map_file(unit.job, unit.model), tables_file(unit.job, unit.model)):
                (ctx.run_dir / rel).unlink(missing_ok=True)
        stored = rows.rows.get(SETUP_KEY)
        if stored is None:
            setup = self._setup(spec, unit, adapter, task, samples)
            rows.append(CharacterizeRow(key=SETUP_KEY, kind="setup", setup=setup))
        else:
            setup = stored.setup
            if setup.model != adapter.info:
                raise ValueError(
                    f"unit {unit.id}: stored prompts were characterized on {setup.model.model_id} "
                    f"({setup.model.weights} weights, "
                    f"revision {setup.model.revision or '-'}), the loaded model is {adapter.info.model_id} "
                    f"(revision {adapter.info.revision or '-'}); "
                    "rerun with --fresh"
                )
        todo = [s for s in samples if s.id not in rows.done]
        with ctx.progress(unit.id, total=len(samples), completed=len(samples) - len(todo)) as bar:
            for sample in todo:
                rows.append(self._characterize(spec, adapter, setup, sample))
                bar.advance()
        done = summarize(spec, setup, [rows.rows[s.id] for s in samples])
        if ctx.run_dir is None:
            raise RuntimeError(f"unit {unit.id}: no run folder to write the head map into")
        files = self._write(spec, unit, done, ctx.run_dir)
        ctx.note(files=files, dataset=done.head_map.dataset.model_dump(), layer_kinds=_kinds_text(done.head_map))

    def _setup(
        self, spec: CharacterizeSpec, unit: Unit, adapter: ModelAdapter, task: Task, samples: list[Sample]
    ) -> CharacterizeSetup:
        from bsight.harness.sinks import discover_sink_offsets

        votes: list[int] = []
        if spec.sinks is not None:
            policy, source = spec.sinks, "job"
        elif spec.discover_sinks is not None:
            d = spec.discover_sinks
            prompts = (adapter.prepare(s) for s in samples[: d.prompts])
            policy, counts = discover_sink_offsets(
                adapter,
                prompts,
                top_k=d.top_k,
                run=adapter.prefill,
                queries_per_image=d.queries_per_image,
                top_per_query=d.top_per_query,
            )
            votes, source = [int(v) for v in counts], "discovered"
        else:
            policy, source = adapter.layout_spec().sinks, "adapter"
        dataset = DatasetInfo(name=unit.task, size=len(samples), revision=task.revision())
        return CharacterizeSetup(
            model=adapter.info, sink_policy=policy, sink_source=source, votes=votes, dataset=dataset
        )

    @staticmethod
    def _characterize(
        spec: CharacterizeSpec, adapter: ModelAdapter, setup: CharacterizeSetup, sample: Sample
    ) -> CharacterizeRow:
        t0 = time.perf_counter()
        prepared = adapter.prepare(sample)
        if len(prepared.layouts) != 1:
            raise ValueError(
                f"sample {sample.id!r}: prepare() gave a batch of {len(prepared.layouts)}; characterization "
                "takes one prompt at a time"
            )
        res = characterize_model(
            adapter,
            [(sample.id, prepared)],
            dataset=setup.dataset,
            sinks=setup.sink_policy,
            chunk_size=spec.chunk_size,
            run=adapter.prefill,
        )
        wall = time.perf_counter() - t0
        if res.prompts:
            return CharacterizeRow(key=sample.id, kind="prompt", record=res.prompts[0], wall_s=wall)
        return CharacterizeRow(key=sample.id, kind="skipped", reason=res.skipped[0].reason, wall_s=wall)

    @staticmethod
    def _write(spec: CharacterizeSpec, unit: Unit, done: Characterization, root: Path) -> dict[str, str]:
        """The unit's files (paths relative to the run folder, the published one as given)."""
        path = head_map_file(unit.job, unit.model)
        done.head_map.save(root / path)
        files = {"head_map": str(path)}
        tables = tables_file(unit.job, unit.model)
        done.result.save(root / tables)
        files["characterization"] = str(tables)
        if done.sweep:
            grid = path.with_name(f"{unit.model}.sweep.json")
            (root / grid).write_text("[\n" + ",\n".join(r.model_dump_json() for r in done.sweep) + "\n]\n")
            files["sweep"] = str(grid)
        published = publish_path(spec, unit.model)
        if published is not None:
            done.head_map.save(published)
            files["published"] = str(published)
        return files

    # ---------------------------------------------------------------------------------------- reporting

    def _stored(self, run: RunFolder, rec: UnitRecord) -> Characterization | None:
        """The unit's stored prompts, aggregated with its spec; None before any prompt was characterized."""
        spec: CharacterizeSpec = self.spec_of(rec)
        rows = run.rows(rec.unit, CharacterizeRow)
        setup = next((r.setup for r in rows if r.kind == "setup"), None)
        prompts = [r for r in rows if r.kind != "setup"][: spec.limit]  # rows follow the task's order
        if setup is None or not any(r.kind == "prompt" for r in prompts):
            return None
        return summarize(spec, setup, prompts)

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        units, plots = [], []
        for rec in records:
            done = self._stored(run, rec)
            if done is None:
                continue
            spec: CharacterizeSpec = self.spec_of(rec)
            hm, setup = done.head_map, done.setup
            stem = f"characterization-{rec.unit.job}-{rec.unit.model}"
            label = f"{rec.unit.model} ({hm.weights} weights)"
            heat = make_plot(
                f"{stem}-heatmap",
                f"{rec.unit.model}: category of each layer and query head",
                _integer_ticks(category_heatmap(hm, title=f"{label}: head categories"), "xy"),
            )
            shares_fig = _integer_ticks(layer_shares(hm, title=f"{label}: categories per layer"), "x")
            shares_fig.set_size_inches(
                max(6.5, shares_fig.get_figwidth()), shares_fig.get_figheight()
            )  # room for the legend row
            shares = make_plot(
                f"{stem}-shares", f"{rec.unit.model}: share of each layer's heads per category", shares_fig
            )
            unit_plots = [heat, shares]
            choice = votes = None
            if hm.histograms:  # paper Fig. 3: per layer, the per-prompt choices behind the categories
                choice = make_plot(
                    f"{stem}-choice",
                    f"{rec.unit.model}: per layer, the category each prompt chose (all heads, "
                    f"{len(done.result.prompts)} prompts, tau = {hm.params.tau:g})",
                    _integer_ticks(category_choice(hm, title=f"{label}: per-prompt category choice"), "x"),
                )
                unit_plots.append(choice)
            if any(setup.votes):  # discovered fixed-offset sinks: where the votes fell
                chosen = setup.sink_policy.offsets if setup.sink_policy.kind == "offsets" else ()
                votes = make_plot(
                    f"{stem}-sink-votes",
                    f"{rec.unit.model}: votes per in-image offset, chosen sinks marked",
                    sink_votes(setup.votes, chosen, title=f"{label}: sink-offset votes"),
                )
                unit_plots.append(votes)
            pareto = None
            if done.sweep:
                pareto = make_plot(
                    f"{stem}-pareto",
                    f"{rec.unit.model}: FLOPs reduction vs NMSE over the sweep",
                    pareto_figure(done.sweep),
                )
                unit_plots.append(pareto)
            plots += unit_plots
            front = pareto_front(done.sweep) if done.sweep else []
            top_votes = sorted(range(len(setup.votes)), key=lambda o: -setup.votes[o])[:8]
            units.append(
                {
                    "job": rec.unit.job,
                    "model": rec.unit.model,
                    "task": rec.unit.task,
                    "model_id": hm.model_id,
                    "weights": hm.weights,
                    "status": rec.status,
                    "expected": None if rec.expected is None else rec.expected - 1,
                    "prompts": len(done.result.prompts),
                    "skipped": len(done.result.skipped),
                    "params": hm.params,
                    "dataset": hm.dataset,
                    "sinks": _sink_text(setup.sink_policy),
                    "sink_source": setup.sink_source,
                    "votes": [(o, setup.votes[o]) for o in top_votes if setup.votes[o] > 0],
                    "shares": hm.shares(),
                    "chosen": done.chosen,
                    "files": rec.info.get("files", {}),
                    "layers": hm.num_layers,
                    "layer_kinds": _kinds_text(hm),  # e.g. "8 layers: 2 attention, 6 linear (not characterized)"
                    "heads": hm.num_heads,
                    "sweep": [
                        {
                            "row": r,
                            "front": r in front,
                            "chosen": (r.tau, r.delta, r.gamma) == (spec.tau, spec.delta, spec.gamma),
                        }
                        for r in done.sweep
                    ],
                    "heatmap": heat,
                    "layer_shares": shares,
                    "choice": choice,
                    "sink_votes": votes,
                    "pareto": pareto,
                    "cost": _calibration_cost(run, rec),
                }
            )
        if not units:
            return None
        return SectionData(context={"units": units, "categories": [c.label for c in Category]}, plots=plots)

    def table(self, run: RunFolder, records: list[UnitRecord], name: str) -> list[dict[str, Any]]:
        """``calibration``: per characterize unit (``unit``, ``job``, ``model``, ``task``) the wall time of the
        prompts it timed: ``n``, ``total_s``, ``mean_s``, ``median_s`` (units without timed rows are left out)."""
        if name != CALIBRATION_TABLE:
            return []
        out = []
        for rec in records:
            cost = _calibration_cost(run, rec)
            if cost is not None:
                out.append(
                    {"unit": rec.unit.id, "job": rec.unit.job, "model": rec.unit.model, "task": rec.unit.task, **cost}
                )
        return out

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        out = []
        for rec in records:
            done = self._stored(run, rec)
            if done is None:
                continue
            stem = f"{rec.unit.job}/{rec.unit.model}"
            out.append(
                Metric(
                    name=f"{stem}/flops_reduction_mean", value=done.chosen.flops_reduction_mean, higher_is_better=True
                )
            )
            out.append(
                Metric(name=f"{stem}/nmse_mean", value=done.chosen.nmse_mean, higher_is_better=False, relative=True)
            )
        return out


@hookimpl
def bsight_job_types():
    return [CharacterizeJob]
