"""The pieces every job type is made of: its config spec, its units, its result rows, its compare metrics.

The contract itself (what a job type must supply and how the runner drives it) is written in the package
docstring, :mod:`bsight.harness.jobs`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.plots import Plot
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

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
    # Data-parallel sessions split a shardable unit's items over the ranks (run_unit takes its share through
    # ``ctx.shard``; rank 0 merges the rows); a unit of any other job type runs on rank 0 alone.
    shardable: ClassVar[bool] = False

    def check(self, spec: JobSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        """Cross-check the spec against the config (named models/methods/tasks exist, ...)."""
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
