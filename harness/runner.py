"""Runs a validated config: plans units from the jobs, runs them with resumable storage, renders the report.

Plugins are instantiated once per run: each model is loaded once and released after the last unit that
needs it (units are planned model by model, so every method runs on a loaded model without a reload).
A unit that raises is marked failed, its traceback goes to ``errors.log`` and the run goes on; the exit
status then says so.

Under a data-parallel launcher (:mod:`bsight.harness.distributed`) every rank runs this same loop over the
same plan: rank 0 holds the run folder, decides which units are left and tells the others; each unit of a
shardable job type is split over the ranks (sample i to rank i mod world size), each rank appending to its
own shard file; after a unit every rank reports to rank 0, which merges the shards in canonical order,
records the unit's status and, at the end, renders the report. Other units run on rank 0 alone. Only rank 0
shows progress bars (of its own share) and prints.
"""

from __future__ import annotations

import errno
import random
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bsight.harness import provenance as prov
from bsight.harness.config import BenchmarkConfig
from bsight.harness.distributed import Dist, describe_device, shard_indices
from bsight.harness.inputs import changed_keys, sample_digest, selected_keys
from bsight.harness.interfaces import AttentionMethod, ModelAdapter, ModelInfo, Sample, Task
from bsight.harness.jobtypes import JobSpec, JobType, Unit
from bsight.harness.plugins import Registry
from bsight.harness.report import render_report
from bsight.harness.store import (
    Manifest,
    RunFolder,
    RunStore,
    Shard,
    ShardWriter,
    StoreError,
    UnitRecord,
    UnitRowSet,
)

T = TypeVar("T")


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
    dist: Dist = field(default_factory=Dist)
    run_dir: Path | None = None  # the run folder: jobs write artifacts (head maps) under it
    models_loaded: dict[str, ModelAdapter] = field(default_factory=dict)
    model_infos: dict[str, ModelInfo] = field(default_factory=dict)
    _model_errors: dict[str, str] = field(default_factory=dict)
    _methods: dict[str, AttentionMethod] = field(default_factory=dict)
    _tasks: dict[str, Task] = field(default_factory=dict)
    _samples: dict[tuple[str, int | None], list[Sample]] = field(default_factory=dict)
    _record: UnitRecord | None = None
    _split: bool = False  # the current unit is split over the ranks of a data-parallel session
    _order: list[str] | None = None  # canonical order of the current unit's row keys, from shard()
    _unit: Unit | None = None  # the unit running now, its rows, and the content hash of each sample it read
    _rows: UnitRowSet | None = None
    _used: dict[str, str] = field(default_factory=dict)
    _digests: dict[str, str] = field(default_factory=dict)  # (task, sample id) hashes, computed once a run
    _partial: int = 0  # rows the unit cut short by an exception had written
    notices: list[str] = field(default_factory=list)  # what the run changed on its own (printed by rank 0)

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
        items = self._samples[key]
        if self._unit is not None:
            self._note_inputs(task_name, items)
        return items

    def _note_inputs(self, task_name: str, items: list[Sample]) -> None:
        """Hash the samples the current unit reads; drop its stored rows computed from samples that changed."""
        fresh = {}
        for s in items:
            digest = self._digests.get(f"{task_name}\0{s.id}")
            if digest is None:
                digest = self._digests[f"{task_name}\0{s.id}"] = sample_digest(s)
            fresh[s.id] = digest
        self._used.update(fresh)
        if self._rows is None or self.run_dir is None or self._unit is None:
            return
        stored = RunFolder(self.run_dir).read_inputs(self._unit)
        changed = changed_keys(stored, fresh, self._rows.done)
        if not changed:
            return
        shown = ", ".join(sorted(changed)[:5]) + (" ..." if len(changed) > 5 else "")
        if self._split:
            raise RuntimeError(
                f"task {task_name!r}: the data of {len(changed)} stored sample(s) changed since their rows were "
                f"written ({shown}); run once without the launcher to redo them, or use --fresh"
            )
        self._rows.discard(changed)
        self.notices.append(
            f"{self._unit.id}: task {task_name!r} data changed for {len(changed)} sample(s) ({shown}); redone"
        )

    def expect(self, n: int) -> None:
        """Tell the run how many rows complete the current unit (shown in the report as n of N)."""
        if self._record is not None:
            self._record.expected = n

    def note(self, **info: Any) -> None:
        """Record facts about the current unit that its report needs (JSON values), e.g. a task's headline."""
        if self._record is not None:
            self._record.info = {**self._record.info, **info}

    def shard(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """This process's share of the current unit's items, in order: item i when i mod world size is this
        rank if the unit is split over a data-parallel session, else every item. ``key`` gives each item's
        row key; the unit's merged rows follow the items' order."""
        self._order = [key(item) for item in items]
        if self._record is not None:  # the unit's selection: only these rows count from now on
            self._record.keys = list(self._order)
        if not self._split:
            return list(items)
        return [items[i] for i in shard_indices(len(items), self.dist.rank, self.dist.world_size)]

    @contextmanager
    def progress(self, description: str, total: int, completed: int = 0) -> Iterator[_Bar]:
        if self._split:
            description += f" [rank {self.dist.rank} of {self.dist.world_size}]"
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
    incomplete: list[str] = field(default_factory=list)  # units not failed that the report shows incomplete


def plan(config: BenchmarkConfig) -> list[tuple[JobSpec, Unit]]:
    """Every unit of every job, in run order, with the spec it came from."""
    out = [(spec, unit) for spec in config.jobs for unit in config.job_type(spec.type).expand(spec, config)]
    ids = [u.id for _, u in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise PlanError(f"jobs expand into duplicate unit ids: {', '.join(sorted(dup))}")
    return out


SPREADING_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's maps over every visible GPU


def check_launch(config: BenchmarkConfig, dist: Dist) -> None:
    """Refuse a data-parallel launch of a model that an adapter spreads over all GPUs (``device_map: auto``):
    every rank would place its own copy on every GPU. Such a model runs in one process."""
    if dist.world_size == 1:
        return
    for name, ref in config.models.items():
        if ref.options.get("device_map") in SPREADING_DEVICE_MAPS:
            raise PlanError(
                f"models.{name}.options.device_map is {ref.options['device_map']!r}: a model spread over "
                "several GPUs runs in one "
                f"process; start `bsight run` without torchrun (this launch has {dist.world_size} processes)"
            )


def default_run_dir(config: BenchmarkConfig) -> Path:
    return config.run.output_dir / config.run.name


def _progress(console: Console, shown: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not shown,
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
    dist: Dist | None = None,
) -> RunOutcome:
    """Run (or resume) the config in ``run_dir`` and render its report. ``dist``: this process's place in a
    data-parallel session (every rank calls this; rank 0's outcome is returned on every rank)."""
    console = console or Console(stderr=True)
    dist = dist or Dist()
    planned = plan(config)
    check_launch(config, dist)
    store = _on_main(dist, lambda: RunStore(run_dir, fresh=fresh))
    try:
        return _execute(config, registry, store, Path(run_dir), planned, config_file, console, dist)
    finally:
        if store is not None:
            store.close()


def _on_main(dist: Dist, fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 (None elsewhere); when it raises, every rank raises, so none waits for rank 0."""
    result, failure = None, None
    if dist.is_main:
        try:
            result = fn()
        except Exception as e:
            failure = e
    problem = dist.broadcast(None if failure is None else (type(failure).__name__, str(failure)))
    if failure is not None:
        raise failure
    if problem is not None:
        kind, message = problem
        raise StoreError(message) if kind == StoreError.__name__ else RuntimeError(f"rank 0 failed: {kind}: {message}")
    return result


def _start(
    config: BenchmarkConfig,
    registry: Registry,
    store: RunStore,
    planned: list[tuple[JobSpec, Unit]],
    config_file: Path | None,
    devices: list[str],
    console: Console | None = None,
) -> tuple[prov.Provenance, Manifest]:
    """Rank 0's session start: provenance (resumed or new), the config files, the manifest (each unit's record
    checked against its files)."""
    _refuse_other_config(store, planned)
    plugin_packages = {info.package: info.version for info in registry.all() if info.version}
    current = prov.collect(
        config.run.name, config.config_hash(), str(config_file or "<in-process>"), plugin_packages, devices=devices
    )
    try:
        provenance = prov.resume(store.provenance(), current)
    except StoreError:
        provenance = current
    store.write_model(store.PROVENANCE, provenance)
    try:
        (store.root / store.CONFIG).write_text(config.model_dump_json(indent=2), encoding="utf-8")
        if config_file is not None:
            (store.root / store.CONFIG_SOURCE).write_text(config_file.read_text(encoding="utf-8"), encoding="utf-8")
        else:  # configured in-process: an earlier session's file would not describe this one
            (store.root / store.CONFIG_SOURCE).unlink(missing_ok=True)
        manifest = _manifest(config, planned, store)
        for line in verify_units(store, manifest, config) + check_inputs(config, registry, store, manifest):
            if console is not None:
                console.print(f"[yellow]resume:[/] {escape(line)}")
        store.write_manifest(manifest)
    except BaseException as e:  # the session started (it is on record): it must not stay "running"
        session = provenance.sessions[-1]
        session.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        provenance.ended = session.ended = prov.now()
        try:
            store.write_model(store.PROVENANCE, provenance)
        except OSError:
            pass  # a full or read-only disk: nothing more can be recorded
        raise
    return provenance, manifest


class _TaskDigests:
    """Content hashes of a task's samples by id, read lazily (only as far as the ids asked for)."""

    def __init__(self, config: BenchmarkConfig, registry: Registry, name: str) -> None:
        ref = config.tasks[name]
        self._samples = iter(registry.get("task", ref.plugin)(ref.options).samples())
        self.digests: dict[str, str] = {}

    def of(self, ids: set[str]) -> dict[str, str]:
        while not ids <= self.digests.keys():
            sample = next(self._samples, None)
            if sample is None:
                break
            self.digests[sample.id] = sample_digest(sample)
        return {k: self.digests[k] for k in ids if k in self.digests}


def check_inputs(config: BenchmarkConfig, registry: Registry, store: RunStore, manifest: Manifest) -> list[str]:
    """Rows computed from task samples whose content changed since (``<unit file>.inputs.json``) are dropped,
    and their units run again to redo them. Returns one line per unit affected."""
    tasks: dict[str, _TaskDigests] = {}
    out = []
    for rec in manifest.units:
        stored = store.read_inputs(rec.unit)
        name = rec.unit.task
        if not stored or name is None or name not in config.tasks:
            continue
        try:
            if name not in tasks:
                tasks[name] = _TaskDigests(config, registry, name)
            changed = changed_keys(stored, tasks[name].of(set(stored)), set(stored))
        except Exception as e:  # the unit itself will meet (and report) the same problem when it runs
            out.append(f"{rec.unit.id}: could not read task {name!r} to check its data: {type(e).__name__}: {e}")
            continue
        if not changed:
            continue
        store.clean_unit(rec.unit, config.job_type(rec.unit.type).Row, sorted(changed))
        store.write_inputs(rec.unit, {k: v for k, v in stored.items() if k not in changed})
        rec.status, rec.rows = "pending", max(0, rec.rows - len(changed))
        shown = ", ".join(sorted(changed)[:5]) + (" ..." if len(changed) > 5 else "")
        out.append(f"{rec.unit.id}: task {name!r} data changed for {len(changed)} sample(s) ({shown}); redone")
    return out


def _refuse_other_config(store: RunStore, planned: list[tuple[JobSpec, Unit]]) -> None:
    """A folder holding rows of units this plan does not have belongs to another config: refuse it (its units
    would silently drop out of the report) unless the run starts over (``--fresh``)."""
    try:
        old = store.manifest().units
    except StoreError:
        return
    ids = {u.id for _, u in planned}
    gone = [r.unit.id for r in old if r.unit.id not in ids and (r.rows or r.status == "done")]
    if gone:
        shown = ", ".join(gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
        raise StoreError(
            f"{store.root}: holds results of units this config does not plan ({shown}): it is another config's run "
            "folder; pass --fresh to start it over, or another folder with --out"
        )


def verify_units(store: RunStore, manifest: Manifest, config: BenchmarkConfig) -> list[str]:
    """Check every unit's record against its result files (never trust the manifest alone): the row count is
    what the files hold; a unit whose files lack rows it recorded is no longer done (its missing samples are
    redone); torn, unparseable and repeated lines are set aside; rows the unit does not list are excluded
    and reported. Returns one line per unit that needed attention."""
    out = []
    for rec in manifest.units:
        row_type = config.job_type(rec.unit.type).Row
        check = store.check_unit(rec.unit, row_type, rec.keys)
        if check.problems or check.mismatched:
            store.clean_unit(rec.unit, row_type, check.mismatched)
        rows = len(check.present)
        incomplete = bool(check.missing) or (rec.expected is not None and rows < rec.expected)
        path = store.unit_path(rec.unit).relative_to(store.root)
        if rec.status == "done" and incomplete:
            rec.status = "pending"
            lacking = f"{len(check.missing)} recorded row(s)" if check.missing else f"{rec.expected - rows} row(s)"
            out.append(f"{rec.unit.id}: {path} lacks {lacking}; the unit runs again")
        if check.problems:
            out.append(f"{rec.unit.id}: set aside from {path} (to .rejected): {'; '.join(check.problems)}")
        if check.foreign:
            shown = ", ".join(map(repr, check.foreign[:5])) + (" ..." if len(check.foreign) > 5 else "")
            out.append(
                f"{rec.unit.id}: {len(check.foreign)} row(s) in {path} not among the unit's samples are excluded "
                f"from its counts ({shown})"
            )
        rec.rows = rows
    return out


def _complete(rec: UnitRecord) -> bool:
    return rec.status == "done" and rec.expected is not None and rec.rows >= rec.expected


def _execute(
    config: BenchmarkConfig,
    registry: Registry,
    store: RunStore | None,
    run_dir: Path,
    planned: list[tuple[JobSpec, Unit]],
    config_file: Path | None,
    console: Console,
    dist: Dist,
) -> RunOutcome:
    devices = dist.gather(describe_device(dist.device))
    started = _on_main(dist, lambda: _start(config, registry, store, planned, config_file, devices, console))
    provenance, manifest = started if started is not None else (None, None)
    manifest = Manifest.model_validate_json(
        dist.broadcast(manifest.model_dump_json() if manifest is not None else None)
    )
    session = provenance.sessions[-1] if provenance is not None else None

    random.seed(config.run.seed)
    np.random.seed(config.run.seed)
    last_use = {u.model: i for i, (_, u) in enumerate(planned) if u.model is not None}
    todo = [not _complete(rec) for rec in manifest.units]  # decided once, from the manifest every rank got
    failed: list[str] = []
    written = 0
    html: Path | None = None
    with _progress(console, shown=dist.is_main) as display:
        ctx = RunContext(config, registry, display, seed=config.run.seed, dist=dist, run_dir=run_dir)
        overall = display.add_task("units", total=len(planned))
        try:
            for i, ((spec, unit), rec) in enumerate(zip(planned, manifest.units)):
                if todo[i]:
                    written += _run_unit(spec, unit, rec, ctx, store, run_dir, manifest, console)
                    if rec.status == "failed":
                        failed.append(unit.id)
                display.advance(overall)
                if unit.model is not None and last_use[unit.model] == i:
                    ctx.release(unit.model)
            if session is not None:
                session.status = "failed" if failed else "completed"
        except KeyboardInterrupt:
            written += ctx._partial
            if session is not None:
                session.status = "interrupted"
            raise
        except BaseException:  # an OS error (disk full, read-only) or a crash: the session failed
            written += ctx._partial
            if session is not None:
                session.status = "failed"
            raise
        finally:
            if store is not None and provenance is not None and session is not None:  # rank 0 keeps the records
                provenance.ended = session.ended = prov.now()
                session.rows_written = written
                provenance.datasets = {**provenance.datasets, **ctx.dataset_revisions()}
                provenance.models = {**provenance.models, **ctx.model_infos}
                store.write_model(store.PROVENANCE, provenance)
                store.write_manifest(manifest)
                html = _render(store, console, registry.job_types())  # an interrupted run still gets a report
    incomplete = [r.unit.id for r in manifest.units if r.unit.id not in failed and not _whole(r)]
    html, failed, incomplete = dist.broadcast((html, failed, incomplete))
    return RunOutcome(
        run_dir=run_dir,
        report=html,
        units=len(planned),
        failed=failed,
        rows_written=written,
        incomplete=incomplete,
    )


def _whole(rec: UnitRecord) -> bool:
    """The report shows the unit complete: done, with every row it expects."""
    return rec.status == "done" and (rec.expected is None or rec.rows >= rec.expected)


def _render(store: RunStore, console: Console, job_types: list[JobType]) -> Path | None:
    try:
        return render_report(store, job_types)[0]
    except Exception as e:
        store.log_error("report", traceback.format_exc())
        console.print(
            f"[red]the report could not be rendered:[/] {escape(f'{type(e).__name__}: {e}')} (traceback in "
            f"{store.root / 'errors.log'})"
        )
        return None


@dataclass
class _RankResult:
    """What one rank reports to rank 0 when a unit ends."""

    status: str  # "done", "failed" or "idle" (the unit ran on rank 0 alone)
    error: str | None = None
    traceback: str | None = None
    written: int = 0
    order: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _open_rows(ctx: RunContext, store: RunStore | None, run_dir: Path, unit: Unit, row_type: type) -> UnitRowSet:
    """The unit's rows for this rank: the unit's file for a lone process, else the rank's shard file."""
    if not ctx._split:
        assert store is not None
        return store.open_rows(unit, row_type)
    shard = Shard(ctx.dist.rank, ctx.dist.world_size)
    return (
        store.open_rows(unit, row_type, shard)
        if store is not None
        else ShardWriter(run_dir, shard).open_rows(unit, row_type)
    )


def _run_unit(
    spec: JobSpec,
    unit: Unit,
    rec: UnitRecord,
    ctx: RunContext,
    store: RunStore | None,
    run_dir: Path,
    manifest: Manifest,
    console: Console,
) -> int:
    """Run one unit on the ranks that take part, keeping rank 0's manifest record current; returns how many
    rows all ranks added."""
    job = ctx.config.job_type(unit.type)
    dist = ctx.dist
    ctx._split = dist.world_size > 1 and job.shardable
    result = _RankResult("idle")
    if ctx._split or dist.is_main:
        result = _work(spec, unit, rec, ctx, store, run_dir, manifest)
    results = dist.gather(result)
    if store is None:
        return sum(r.written for r in results)
    broken = [(rank, r) for rank, r in enumerate(results) if r.status == "failed"]
    for rank, r in broken:
        store.log_error(unit.id if dist.world_size == 1 else f"{unit.id} [rank {rank}]", r.traceback or "")
    try:
        order = next((r.order for r in results if r.order is not None), None)
        store.merge_shards(unit, job.Row, order)
        stored_inputs = store.read_inputs(unit)
        every = [r.key for r in store._row_set(unit, job.Row, None)]
        rec.keys = list(order) if order is not None else selected_keys(every, stored_inputs, ctx._used)
        present = store.check_unit(unit, job.Row, rec.keys).present
        rec.rows = len(present)
        inputs = {**stored_inputs, **{k: v for k, v in ctx._used.items() if k in present}}
        if inputs != stored_inputs:
            store.write_inputs(unit, inputs)
    except Exception as e:
        store.log_error(f"{unit.id} [merge]", traceback.format_exc())
        broken.append((0, _RankResult("failed", error=f"merging its shards: {type(e).__name__}: {e}")))
    for r in results:
        rec.info = {**rec.info, **r.info}
    if broken:
        rank, r = broken[0]
        where = "" if dist.world_size == 1 else f"rank {rank}: "
        rec.status, rec.error = "failed", f"{where}{r.error}"
        console.print(
            f"[red]failed[/] {escape(unit.id)}: {escape(rec.error)} (traceback in {store.root / 'errors.log'})"
        )
    else:
        rec.status = "done"
        before = max(0, rec.rows - sum(r.written for r in results))
        console.print(f"[green]done[/] {escape(unit.id)}: {rec.rows} rows ({before} from an earlier session)")
    for line in ctx.notices:
        console.print(f"[yellow]resume:[/] {escape(line)}")
    ctx.notices.clear()
    rec.updated = prov.now()
    store.write_manifest(manifest)
    return sum(r.written for r in results)


STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}  # the run folder cannot take more rows


def _leave_to_resume(
    ctx: RunContext, rec: UnitRecord, rows: UnitRowSet, store: RunStore | None, manifest: Manifest
) -> None:
    """A unit cut short: count the rows it wrote and record it as pending (best effort on a failing disk)."""
    ctx._partial = rows.appended
    if store is not None:
        rec.status, rec.rows, rec.updated = "pending", len(rows), prov.now()
        try:
            store.write_manifest(manifest)
        except OSError:
            pass  # the next session verifies the files anyway


def _work(
    spec: JobSpec,
    unit: Unit,
    rec: UnitRecord,
    ctx: RunContext,
    store: RunStore | None,
    run_dir: Path,
    manifest: Manifest,
) -> _RankResult:
    """This rank's part of a unit."""
    job = ctx.config.job_type(unit.type)
    rows = _open_rows(ctx, store, run_dir, unit, job.Row)
    start = len(rows)
    ctx._unit, ctx._rows, ctx._used, ctx._partial = unit, rows, {}, 0
    if store is not None:
        rec.status, rec.error, rec.rows, rec.updated = "running", None, start, prov.now()
        store.write_manifest(manifest)
    ctx._record, ctx._order = rec, None
    torch.manual_seed(ctx.seed)
    result = _RankResult("done")
    try:
        job.run_unit(spec, unit, ctx, rows)
    except Exception as e:
        if not (isinstance(e, OSError) and e.errno in STORAGE_ERRNOS):
            result = _RankResult("failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        else:  # the disk is full or read-only: every later unit would fail the same way; the session fails
            _leave_to_resume(ctx, rec, rows, store, manifest)
            raise
    except BaseException:  # interrupted (or the process is going down): the unit is left to resume
        _leave_to_resume(ctx, rec, rows, store, manifest)
        raise
    finally:
        ctx._record, ctx._unit, ctx._rows = None, None, None
        rows.close()
    result.written, result.order, result.info = rows.appended, ctx._order, dict(rec.info)
    return result
