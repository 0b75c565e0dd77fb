"""Job types: the kinds of work ``benchmarks.yaml`` can list under ``jobs:``.

Built in: ``accuracy`` (model x method x task, greedy answers vs a baseline), ``flops`` (exact attention FLOPs
per prompt and method), ``characterize`` (a model's head map from a task's prompts, resumable per prompt),
``planted`` (characterization recovers planted head categories), ``tau_sweep`` (each tau's head map on
held-out prompts: FLOPs reduction vs answer agreement and KL; the default tau chosen by a stated rule),
``timing`` (the kernel sweep, measured on a GPU or shown from a published JSON) and ``ttft`` (time to first
token, likewise). Jobs that run prompts through a model without generating call
``adapter.prefill(prepared, method)`` (:meth:`~bsight.harness.interfaces.ModelAdapter.prefill`), which skips
the ``S x vocab`` logits.
``baselines`` puts methods side by side (per-layer NMSE against dense, FLOPs, overhead, GPU timing).

Adding a job type is one module here and one line in :data:`JOB_TYPES`. The module defines a subclass of
:class:`~bsight.harness.jobs.base.JobType` with:

``type``
    The string configs write as ``type:``; also the key in :data:`JOB_TYPES`.
``Spec``
    A :class:`~bsight.harness.jobs.base.JobSpec` subclass with ``type: Literal["<type>"]`` and the job's
    parameters (``extra="forbid"`` is inherited). ``name`` is inherited and defaults to the type; two jobs
    of one type need distinct names. The config loader validates every entry with it, then calls
    ``check(spec, config)``, which returns :class:`ConfigIssue` s (path relative to the job entry, message
    naming what is allowed) for names that do not exist in ``models:``/``methods:``/``tasks:`` and the like.
``expand(spec, config) -> list[Unit]``
    The resumable units of work, in order. A :class:`Unit` names at most one model, method and task (by
    config name; a kernel timing sweep names none) and carries a ``fingerprint`` of everything that
    determines its rows (use
    :func:`~bsight.harness.jobs.base.fingerprint` over the plugin refs and the parameters that change
    rows; leave out ones that only select how many, like ``limit``, so raising them resumes).
``Row``
    A :class:`~bsight.harness.jobs.base.ResultRow` subclass (pydantic, ``extra="forbid"``): what one line
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
    :data:`JOB_TYPES` order; ``planted`` joins ``characterize`` in "characterization", ``ttft`` joins
    ``timing``). ``records`` are the run's
    :class:`~bsight.harness.store.UnitRecord` s of this type (unit, status, row counts, and the stored spec:
    ``self.spec_of(record)``); ``run.rows(record.unit, Row)`` reads a unit's rows. It returns a
    :class:`~bsight.harness.jobs.base.SectionData`: a template context plus :class:`~bsight.harness.plots.Plot`
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

from bsight.harness.jobs.accuracy import AccuracyJob
from bsight.harness.jobs.base import JobSpec, JobType, Metric, ResultRow, SectionData, Unit
from bsight.harness.jobs.baselines import BaselinesJob
from bsight.harness.jobs.characterize import CharacterizeJob
from bsight.harness.jobs.flops import FlopsJob
from bsight.harness.jobs.planted import PlantedJob
from bsight.harness.jobs.tau_sweep import TauSweepJob
from bsight.harness.jobs.timing import TimingJob
from bsight.harness.jobs.ttft import TTFTJob

JOB_TYPES: dict[str, JobType] = {
    AccuracyJob.type: AccuracyJob(),
    FlopsJob.type: FlopsJob(),
    CharacterizeJob.type: CharacterizeJob(),
    PlantedJob.type: PlantedJob(),
    TauSweepJob.type: TauSweepJob(),
    TimingJob.type: TimingJob(),
    TTFTJob.type: TTFTJob(),
    BaselinesJob.type: BaselinesJob(),
}

__all__ = ["JOB_TYPES", "JobSpec", "JobType", "Metric", "ResultRow", "SectionData", "Unit"]
