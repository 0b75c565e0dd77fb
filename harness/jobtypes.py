"""Floor 3: the interface of the fourth plugin family, job types (the kinds of work ``jobs:`` lists).

Job types: the kinds of work ``benchmarks.yaml`` can list under ``jobs:``.

Built in: ``accuracy`` (model x method x task, greedy answers vs a baseline), ``flops`` (exact attention FLOPs
per prompt and method), ``characterize`` (a model's head map from a task's prompts, resumable per prompt),
``planted`` (characterization recovers planted head categories), ``tau_sweep`` (each tau's head map on
held-out prompts: FLOPs reduction vs answer agreement and KL; the default tau chosen by a stated rule),
``timing`` (the kernel sweep, measured on a GPU or shown from a published JSON) and ``ttft`` (time to first
token, likewise). Jobs that run prompts through a model without generating call
``adapter.prefill(prepared, method)`` (:meth:`~bsight.harness.interfaces.ModelAdapter.prefill`), which skips
the ``S x vocab`` logits.
``baselines`` puts methods side by side (per-layer NMSE against dense, FLOPs, overhead, GPU timing).

Job types are the fourth plugin family: a plugin's ``bsight_job_types`` hook
(:mod:`bsight.harness.hookspecs`) returns :class:`JobType` subclasses, and the built-ins in
:mod:`bsight.harness.jobs` register through the ``bsight`` entry-point group exactly as a third party's do. A
job module names no built-in plugin and none of their options: what it needs from a method it asks through
:class:`~bsight.harness.interfaces.AttentionMethod`, and what it needs from another job is an artifact that job
declares in :meth:`JobType.produces` and it declares in :meth:`JobType.consumes`. A job type defines:

``type``
    The string configs write as ``type:``; the job type's name in the registry (``bsight plugins``).
``Spec``
    A :class:`~bsight.harness.jobtypes.JobSpec` subclass with ``type: Literal["<type>"]`` and the job's
    parameters (``extra="forbid"`` is inherited). ``name`` is inherited and defaults to the type; two jobs
    of one type need distinct names. The config loader validates every entry with it, then calls
    ``check(spec, config)``, which returns :class:`ConfigIssue` s (path relative to the job entry, message
    naming what is allowed) for names that do not exist in ``models:``/``methods:``/``tasks:`` and the like.
``expand(spec, config) -> list[Unit]``
    The resumable units of work, in order. A :class:`Unit` names at most one model, method and task (by
    config name; a kernel timing sweep names none) and carries a ``fingerprint`` of everything that
    determines its rows (use
    :func:`~bsight.harness.jobtypes.fingerprint` over the plugin refs and the parameters that change
    rows; leave out ones that only select how many, like ``limit``, so raising them resumes).
``Row``
    A :class:`~bsight.harness.jobtypes.ResultRow` subclass (pydantic, ``extra="forbid"``): what one line
    of the unit's JSONL file holds. ``key`` identifies it within the unit.
``run_unit(spec, unit, ctx, rows)``
    Does the work. ``ctx`` (:class:`bsight.harness.runner.RunContext`) hands out the run's plugin
    instances: ``ctx.model(name)`` (loaded once per run and shared by every unit and method),
    ``ctx.method(name)``, ``ctx.task(name)``, ``ctx.samples(task_name, limit)``, plus ``ctx.seed`` and
    ``ctx.progress(description, total, completed)`` (a rich progress bar; call ``advance()``). ``rows`` is
    the unit's :class:`~bsight.harness.store.UnitRowSet`: ``rows.done`` covers every stored row of the unit
    (from earlier or parallel processes), skip those keys; ``rows.append(Row(...))`` writes one durable line.
    Call ``ctx.expect(n)`` once the unit knows how many rows complete it; ``ctx.note(key=value)`` stores
    small facts about the unit in ``record.info``.
    Raising marks the unit failed (traceback in ``errors.log``); the run goes on with the other units.
``shardable``
    True when a data-parallel session may split a unit's items over its ranks; ``run_unit`` then takes its
    items through ``ctx.shard(items, key)`` (item i to rank i mod world size; merged rows follow the items'
    order). Default False: rank 0 alone.
``section``, ``title``, ``report(run, records) -> SectionData | None``
    The report section this job fills (several job types may share one: each renders its own part, in
    ``report_order``; ``planted`` joins ``characterize`` in "characterization", ``ttft`` joins
    ``timing``). ``records`` are the run's
    :class:`~bsight.harness.store.UnitRecord` s of this type (unit, status, row counts, and the stored spec:
    ``self.spec_of(record)``); ``run.rows(record.unit, Row)`` reads a unit's rows. It returns a
    :class:`~bsight.harness.jobtypes.SectionData`: a template context plus :class:`~bsight.harness.plots.Plot`
    figures (``make_plot(name, title, fig)`` turns any matplotlib Figure into one; ``line_plot``,
    ``cdf_plot`` and ``interval_plot`` in :mod:`bsight.harness.plots` build the generic ones). Templates
    are ``reports/templates/sections/<type>.html.j2`` and ``<type>.md.j2`` when they exist, else
    ``<section>.html.j2`` and ``<section>.md.j2``; they receive ``section`` (the context), ``plots``
    (name -> Plot; HTML writes ``{{ plot.svg|safe }}``, Markdown links ``plot.file``) and ``title`` (the job
    type's), with filters ``num``, ``pct`` and ``mdcell``. The frame's sections
    (:data:`bsight.harness.report.SECTIONS`: ``accuracy``, ``flops``, ``characterization``, ``timing``) say
    "no data in this run" until a job fills them; a new section key is appended after them.
``metrics(run, records) -> list[Metric]``
    Named numbers for ``bsight compare`` with their direction (``higher_is_better``) and whether a change is
    judged absolute (rates) or relative (timings).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.plots import Plot
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

ACCURACY_TABLE = "accuracy"  # table of stored answers' accuracy that job types offer others (``JobType.tables``)
FLOPS_TABLE = "flops"  # table of attention FLOPs reductions per model x method x task (``JobType.tables``)
CALIBRATION_TABLE = "calibration"  # table of each characterization's wall time (``JobType.tables``)
HEADMAP_DIR = "headmaps"  # run-folder folder of the head maps jobs write (``headmaps/<job>/<model>.json``)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # names end up in file names and unit ids


class JobSpec(BaseModel):
    """Base of every job type's entry in the ``jobs:`` list. Subclasses narrow ``type`` to a Literal."""

    model_config = ConfigDict(extra="forbid")

    type: str
    name: str = Field("", pattern=rf"{NAME_PATTERN}|^$", description="unique job name; defaults to the type")


class ResultRow(BaseModel):
    """Base of every row a job writes. ``key`` identifies the row inside its unit: a resumed unit skips the
    keys it already holds, so a row is never written twice."""

    model_config = ConfigDict(extra="forbid")

    key: str


class Unit(BaseModel):
    """One resumable piece of a job (accuracy: one model x method x task). Its rows live in one file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: str  # job name
    type: str  # job type
    id: str  # unique in the run, e.g. "accuracy/tiny/dense/arith"
    model: str | None = None  # config name of the model it needs loaded, if any
    method: str | None = None
    task: str | None = None
    fingerprint: str  # hash of everything that determines its rows; a changed config starts a fresh file


class Metric(BaseModel):
    """One number ``bsight compare`` tracks between runs."""

    name: str
    value: float
    higher_is_better: bool
    relative: bool = False  # judge changes relative to the old value (timings) instead of absolute (rates)


@dataclass
class ConfigIssue:
    """A problem a job type finds in its spec against the rest of the config (e.g. an undefined name)."""

    path: tuple[str | int, ...]
    message: str


def selected(spec: JobSpec, config: BenchmarkConfig, section: str) -> list[str]:
    """The config names a job lists under ``section`` (``models``, ``methods``, ``tasks``); None = all defined."""
    chosen = getattr(spec, section)
    return list(getattr(config, section)) if chosen is None else list(chosen)


def name_issues(spec: JobSpec, config: BenchmarkConfig, sections: tuple[str, ...]) -> list[ConfigIssue]:
    """Names a job lists that the config does not define, and sections left empty."""
    issues = []
    for section in sections:
        defined = list(getattr(config, section))
        chosen = selected(spec, config, section)
        if not chosen:
            issues.append(
                ConfigIssue(
                    (section,),
                    f"no {section} to run; define some under `{section}:` (defined: {', '.join(defined) or 'none'})",
                )
            )
        for i, name in enumerate(chosen):
            if name not in defined:
                issues.append(
                    ConfigIssue(
                        (section, i),
                        f"{name!r} is not defined under `{section}:`; defined: {', '.join(defined) or 'none'}",
                    )
                )
    return issues


class Artifact(BaseModel):
    """A file one job writes and others read: the produces/consumes contract between job types.

    ``kind`` names what the file holds (``head_map``, ``characterization``, ``pattern_config``: the vocabulary
    methods use in :meth:`~bsight.harness.interfaces.AttentionMethod.artifacts`). ``path`` is where a config
    refers to it (run-folder files under the config's default run folder); ``run_path`` is the same file
    relative to the run folder, for readers at run time (``--out`` may move the folder). A producer sets
    ``identity`` (hash of everything that decides the content: readers put it in their fingerprints so a
    re-characterization redoes them), ``job``, ``model`` and ``info`` (facts readers may check, e.g. the task
    a characterization used)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    path: str
    run_path: str | None = None
    identity: str = ""
    job: str = ""
    model: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        """What matches a reader's artifact with a producer's: the kind and the normalized path."""
        return self.kind, os.path.normpath(self.path)


def job_index(spec: JobSpec, config: BenchmarkConfig) -> int:
    """Position of ``spec`` in the config's job list (a job reads artifacts of the jobs before it)."""
    return next((i for i, s in enumerate(config.jobs) if s is spec), len(config.jobs))


def method_inputs(config: BenchmarkConfig, method: str) -> list[Artifact]:
    """The files a configured method reads, as its plugin class says (:meth:`AttentionMethod.artifacts`)."""
    options = config.methods[method].options
    return [Artifact(kind=kind, path=path) for kind, path in config.method_class(method).artifacts(options)]


def methods_consume(
    config: BenchmarkConfig, methods: list[str], field: str = "methods"
) -> list[tuple[tuple[str | int, ...], Artifact]]:
    """``consumes`` of a job that runs ``methods`` (listed under its spec field ``field``): their files."""
    return [
        ((field, i), artifact.model_copy(update={"info": {"reader": f"method {method!r}"}}))
        for i, method in enumerate(methods)
        if method in config.methods
        for artifact in method_inputs(config, method)
    ]


def inputs_identity(config: BenchmarkConfig, method: str, before: int) -> list[str | None]:
    """For a unit's fingerprint: what decides each file the method reads (the producing job's parameters, else
    the file's content), so a unit is redone when its method's head map or pattern config changes."""
    return [config.artifact_identity(a.kind, a.path, before) for a in method_inputs(config, method)]


@dataclass
class SectionData:
    """What a job type hands the report for its section: a template context plus figures to embed."""

    context: dict[str, Any]
    plots: list[Plot] = field(default_factory=list)


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (plugin names and options, job parameters that change rows)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class JobType(ABC):
    """A kind of work ``benchmarks.yaml`` can ask for. See the package docstring for the contract."""

    type: ClassVar[str]
    Spec: ClassVar[type[JobSpec]]
    Row: ClassVar[type[ResultRow]]
    section: ClassVar[str]  # key of the report section it fills (sections/<key>.html.j2 and .md.j2)
    title: ClassVar[str]  # the section's heading
    description: ClassVar[str] = ""  # one line for `bsight plugins`
    # Order of parts and new sections in the report (built-ins 10-80; a third party's default comes after).
    report_order: ClassVar[int] = 100
    # Named tables this job type's report data offers other job types (see ``table``), e.g. "accuracy".
    tables: ClassVar[tuple[str, ...]] = ()
    # Data-parallel sessions split a shardable unit's items over the ranks (run_unit takes its share through
    # ``ctx.shard``; rank 0 merges the rows); a unit of any other job type runs on rank 0 alone.
    shardable: ClassVar[bool] = False

    def check(self, spec: JobSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        """Cross-check the spec against the config (named models/methods/tasks exist, ...)."""
        return []

    def produces(self, spec: JobSpec, config: BenchmarkConfig) -> list[Artifact]:
        """The files this job writes for other jobs to read. Called after the spec passed ``check``."""
        return []

    def consumes(self, spec: JobSpec, config: BenchmarkConfig) -> list[tuple[tuple[str | int, ...], Artifact]]:
        """The files this job reads, each with the spec field that names it (for error messages). The config
        check requires each to exist or to be produced by an earlier job or by this one (its units run in order)."""
        return []

    def table(self, run: RunFolder, records: list[UnitRecord], name: str) -> list[dict[str, Any]]:
        """Rows of the named table (one of ``tables``) from this job type's units, for other job types' reports."""
        return []

    @abstractmethod
    def expand(self, spec: JobSpec, config: BenchmarkConfig) -> list[Unit]:
        """The units this job runs, in order. Called after the whole config validated."""

    @abstractmethod
    def run_unit(self, spec: JobSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet) -> None:
        """Do the unit's work, appending one ``Row`` per item to ``rows`` and skipping ``rows.done``; a
        ``shardable`` job takes its items through ``ctx.shard(items, key)`` (this rank's share)."""

    def spec_of(self, record: UnitRecord) -> JobSpec:
        """The validated spec a unit of this type was planned from (as stored in the run's manifest)."""
        return self.Spec.model_validate(record.spec)

    @abstractmethod
    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        """The section's template context built from the run folder; None when there is nothing to show."""

    @abstractmethod
    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        """Numbers to compare across runs."""
