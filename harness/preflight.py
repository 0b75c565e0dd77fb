"""Checks of the files a config points at, run by ``bsight run`` at ``--dry-run`` and before the first unit.

Config validation checks values; these check what the values name: every head map a method reads (unless an
earlier job of the config writes it) must load, and every task the plan uses must yield its first sample
(a missing ``source`` file, a malformed dataset). Each problem is one line naming the field and file, raised
together as :class:`PreflightError` before any model loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from bsight.harness.config import BenchmarkConfig
from bsight.harness.plugins import Registry


class PreflightError(ValueError):
    """Files the config names are missing or unreadable; one line each (exit status 2)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _produced_paths(config: BenchmarkConfig) -> set[str]:
    """Files some job of the config writes (normalized), which need not exist before the run."""
    produced = getattr(config, "produced", None)
    if produced is None:
        return set()
    return {path for (_, path) in produced(len(config.jobs))}


def head_map_problems(config: BenchmarkConfig, used: set[str] | None = None) -> list[str]:
    """Methods (those in ``used``, default all) whose ``head_map`` option names a file that is missing or does
    not load as a head map."""
    from bsight.kernels.sparsity.headmap import HeadMap

    written = _produced_paths(config)
    out = []
    for name, ref in config.methods.items():
        path = ref.options.get("head_map")
        if (used is not None and name not in used) or not isinstance(path, str):
            continue
        if os.path.normpath(path) in written:
            continue
        field = f"methods.{name}.options.head_map"
        if not Path(path).is_file():
            out.append(f"{field}: {path}: no such file (and no job of this config writes it)")
            continue
        try:
            HeadMap.load(path)
        except Exception as e:  # a wrong shape, an unknown category: one line, not a validation dump
            out.append(f"{field}: {path}: {_first_line(e)}")
    return out


def task_problems(config: BenchmarkConfig, registry: Registry, used: set[str] | None = None) -> list[str]:
    """Tasks (those in ``used``, default all) that cannot yield a first sample."""
    out = []
    for name, ref in config.tasks.items():
        if used is not None and name not in used:
            continue
        try:
            task = registry.get("task", ref.plugin)(ref.options)
            next(iter(task.samples()), None)
        except Exception as e:
            source = ref.options.get("source")
            where = f" (source {source!r})" if isinstance(source, str) else ""
            out.append(f"tasks.{name}{where}: {_first_line(e)}")
    return out


def gpu_problems(config: BenchmarkConfig) -> list[str]:
    """Jobs that must measure (``source: measure``) but that this machine cannot run (no CUDA device): one line
    naming them all. Jobs with ``source: published`` (or ``auto``, which then loads published results) pass."""
    need = []
    for spec in config.jobs:
        job = config.job_type(spec.type)
        if getattr(spec, "source", None) == "measure" and hasattr(job, "can_measure") and not job.can_measure(spec):
            need.append(f"{spec.name!r} ({spec.type})")
    if not need:
        return []
    return [
        f"jobs that need a CUDA GPU, and this machine has none: {', '.join(need)}; run them on a GPU machine, or set "
        "`source: published` to show published results"
    ]


def preflight(config: BenchmarkConfig, registry: Registry, units: list | None = None) -> None:
    """Raise :class:`PreflightError` naming every head map and task source the plan cannot read. ``units``:
    the planned units (only the methods and tasks they use are checked; default every one defined)."""
    methods = None if units is None else {u.method for u in units if u.method is not None}
    tasks = None if units is None else {u.task for u in units if u.task is not None}
    problems = gpu_problems(config) + head_map_problems(config, methods) + task_problems(config, registry, tasks)
    if problems:
        raise PreflightError("\n".join(problems))
