"""Runs a validated config: plans units from the jobs, runs them with resumable storage, renders the report.

Plugins are instantiated once per run: each model is loaded once and released after the last unit that
needs it (units are planned model by model, so every method runs on a loaded model without a reload).
A unit that raises is marked failed, its traceback goes to ``errors.log`` and the run goes on; the exit
status then says so.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import provenance as prov
from .config import BenchmarkConfig
from .interfaces import AttentionMethod, ModelAdapter, ModelInfo, Sample, Task
from .jobs import JOB_TYPES
from .jobs.base import JobSpec, Unit
from .plugins import Registry
from .report import render_report
from .store import Manifest, RunStore, StoreError, UnitRecord


class PlanError(ValueError):
    """The jobs expand into an inconsistent plan (two units with one id)."""


class _Bar:
    def __init__(self, progress: Progress, task_id: int) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._id, n)


@dataclass
class RunContext:
    """What a job's ``run_unit`` gets: the run's plugin instances, created on first use and shared."""

    config: BenchmarkConfig
    registry: Registry
    progress_display: Progress
    seed: int = 0
    models_loaded: dict[str, ModelAdapter] = field(default_factory=dict)
    model_infos: dict[str, ModelInfo] = field(default_factory=dict)
    _model_errors: dict[str, str] = field(default_factory=dict)
    _methods: dict[str, AttentionMethod] = field(default_factory=dict)
    _tasks: dict[str, Task] = field(default_factory=dict)
    _samples: dict[tuple[str, int | None], list[Sample]] = field(default_factory=dict)
    _record: UnitRecord | None = None

    def model(self, name: str) -> ModelAdapter:
        """The loaded adapter for a config model name (loaded on first use; a failed load is not retried)."""
        if name in self._model_errors:
            raise RuntimeError(f"model {name!r} failed to load earlier in this run: {self._model_errors[name]}")
        if name not in self.models_loaded:
            ref = self.config.models[name]
            adapter = self.registry.get("model", ref.plugin)(ref.options)
            try:
                adapter.load()
            except Exception as e:
                self._model_errors[name] = f"{type(e).__name__}: {e}"
                raise
            self.models_loaded[name] = adapter
            self.model_infos[name] = adapter.info
        return self.models_loaded[name]

    def release(self, name: str) -> None:
        """Drop a model no later unit needs, so the next one fits in memory."""
        if self.models_loaded.pop(name, None) is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def method(self, name: str) -> AttentionMethod:
        if name not in self._methods:
            ref = self.config.methods[name]
            self._methods[name] = self.registry.get("method", ref.plugin)(ref.options)
        return self._methods[name]

    def task(self, name: str) -> Task:
        if name not in self._tasks:
            ref = self.config.tasks[name]
            self._tasks[name] = self.registry.get("task", ref.plugin)(ref.options)
        return self._tasks[name]

    def samples(self, task_name: str, limit: int | None = None) -> list[Sample]:
        """The task's first ``limit`` samples (all when None), read once per run; sample ids must be unique
        because they key the stored rows."""
        key = (task_name, limit)
        if key not in self._samples:
            items = list(islice(self.task(task_name).samples(), limit))
            seen: set[str] = set()
            for s in items:
                if s.id in seen:
                    raise ValueError(f"task {task_name!r} yields sample id {s.id!r} twice; sample ids must be unique")
                seen.add(s.id)
            self._samples[key] = items
        return self._samples[key]

    def expect(self, n: int) -> None:
        """Tell the run how many rows complete the current unit (shown in the report as n of N)."""
        if self._record is not None:
            self._record.expected = n

    @contextmanager
    def progress(self, description: str, total: int, completed: int = 0) -> Iterator[_Bar]:
        task_id = self.progress_display.add_task(escape(description), total=total, completed=completed)
        try:
            yield _Bar(self.progress_display, task_id)
        finally:
            self.progress_display.remove_task(task_id)

    def dataset_revisions(self) -> dict[str, str]:
        out = {}
        for name, task in self._tasks.items():
            try:
                out[name] = task.revision()
            except Exception as e:  # a revision lookup must not sink a finished run
                out[name] = f"unknown ({type(e).__name__}: {e})"
        return out


@dataclass
class RunOutcome:
    run_dir: Path
    report: Path | None
    units: int
    failed: list[str]
    rows_written: int


def plan(config: BenchmarkConfig) -> list[tuple[JobSpec, Unit]]:
    """Every unit of every job, in run order, with the spec it came from."""
    out = [(spec, unit) for spec in config.jobs for unit in JOB_TYPES[spec.type].expand(spec, config)]
    ids = [u.id for _, u in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise PlanError(f"jobs expand into duplicate unit ids: {', '.join(sorted(dup))}")
    return out


def default_run_dir(config: BenchmarkConfig) -> Path:
    return config.run.output_dir / config.run.name


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def _manifest(config: BenchmarkConfig, planned: list[tuple[JobSpec, Unit]], store: RunStore) -> Manifest:
    """The plan as a manifest; units unchanged since an earlier session keep their status and counts."""
    previous: dict[str, UnitRecord] = {}
    try:
        previous = {r.unit.id: r for r in store.manifest().units}
    except StoreError:
        pass
    records = []
    for spec, unit in planned:
        spec_data = spec.model_dump(mode="json")
        old = previous.get(unit.id)
        if old is not None and old.unit == unit and old.spec == spec_data and old.status != "running":
            records.append(old.model_copy())
        else:
            records.append(UnitRecord(unit=unit, spec=spec_data))
    return Manifest(run_name=config.run.name, config_hash=config.config_hash(), units=records)


def execute(
    config: BenchmarkConfig,
    registry: Registry,
    run_dir: Path,
    *,
    fresh: bool = False,
    config_file: Path | None = None,
    console: Console | None = None,
) -> RunOutcome:
    """Run (or resume) the config in ``run_dir`` and render its report."""
    console = console or Console(stderr=True)
    planned = plan(config)
    store = RunStore(run_dir, fresh=fresh)
    try:
        return _execute(config, registry, store, planned, config_file, console)
    finally:
        store.close()


def _execute(config: BenchmarkConfig, registry: Registry, store: RunStore, planned: list[tuple[JobSpec, Unit]], config_file: Path | None, console: Console) -> RunOutcome:
    plugin_packages = {info.package: info.version for info in registry.all() if info.version}
    current = prov.collect(config.run.name, config.config_hash(), str(config_file or "<in-process>"), plugin_packages)
    try:
        provenance = prov.resume(store.provenance(), current)
    except StoreError:
        provenance = current
    session = provenance.sessions[-1]
    store.write_model(store.PROVENANCE, provenance)
    (store.root / store.CONFIG).write_text(config.model_dump_json(indent=2), encoding="utf-8")
    if config_file is not None:
        (store.root / store.CONFIG_SOURCE).write_text(config_file.read_text(encoding="utf-8"), encoding="utf-8")
    else:  # configured in-process: an earlier session's file would not describe this one
        (store.root / store.CONFIG_SOURCE).unlink(missing_ok=True)
    manifest = _manifest(config, planned, store)
    store.write_manifest(manifest)

    random.seed(config.run.seed)
    np.random.seed(config.run.seed)
    last_use = {u.model: i for i, (_, u) in enumerate(planned) if u.model is not None}
    failed: list[str] = []
    written = 0
    with _progress(console) as display:
        ctx = RunContext(config, registry, display, seed=config.run.seed)
        overall = display.add_task("units", total=len(planned))
        try:
            for i, ((spec, unit), rec) in enumerate(zip(planned, manifest.units)):
                complete = rec.status == "done" and rec.expected is not None and rec.rows >= rec.expected
                if not complete:
                    written += _run_unit(spec, unit, rec, ctx, store, manifest, console)
                    if rec.status == "failed":
                        failed.append(unit.id)
                display.advance(overall)
                if unit.model is not None and last_use[unit.model] == i:
                    ctx.release(unit.model)
            session.status = "failed" if failed else "completed"
        except KeyboardInterrupt:
            session.status = "interrupted"
            raise
        finally:
            provenance.ended = session.ended = prov.now()
            session.rows_written = written
            provenance.datasets = {**provenance.datasets, **ctx.dataset_revisions()}
            provenance.models = {**provenance.models, **ctx.model_infos}
            store.write_model(store.PROVENANCE, provenance)
            store.write_manifest(manifest)
            html = _render(store, console)  # an interrupted run still gets a report of what it has
    return RunOutcome(run_dir=store.root, report=html, units=len(planned), failed=failed, rows_written=written)


def _render(store: RunStore, console: Console) -> Path | None:
    try:
        return render_report(store)[0]
    except Exception as e:
        store.log_error("report", traceback.format_exc())
        console.print(f"[red]the report could not be rendered:[/] {escape(f'{type(e).__name__}: {e}')} (traceback in {store.root / 'errors.log'})")
        return None


def _run_unit(spec: JobSpec, unit: Unit, rec: UnitRecord, ctx: RunContext, store: RunStore, manifest: Manifest, console: Console) -> int:
    """Run one unit, keeping its manifest record current; returns how many rows it added."""
    job = JOB_TYPES[unit.type]
    rows = store.open_rows(unit, job.Row)
    before = len(rows)
    rec.status, rec.error, rec.rows, rec.updated = "running", None, before, prov.now()
    store.write_manifest(manifest)
    ctx._record = rec
    torch.manual_seed(ctx.seed)
    try:
        job.run_unit(spec, unit, ctx, rows)
        rec.status = "done"
        console.print(f"[green]done[/] {escape(unit.id)}: {len(rows)} rows ({before} from an earlier session)")
    except KeyboardInterrupt:
        rec.status = "pending"
        raise
    except Exception as e:
        rec.status, rec.error = "failed", f"{type(e).__name__}: {e}"
        store.log_error(unit.id, traceback.format_exc())
        console.print(f"[red]failed[/] {escape(unit.id)}: {escape(rec.error)} (traceback in {store.root / 'errors.log'})")
    finally:
        ctx._record = None
        rec.rows, rec.updated = len(rows), prov.now()
        rows.close()
        store.write_manifest(manifest)
    return len(rows) - before
