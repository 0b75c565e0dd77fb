"""Published GPU results and the job base that measures or loads them (``timing``, ``ttft``, ``baselines``' gpu
part): a library of the job types, not a job type.

A GPU benchmark's numbers come from this machine when it can run the benchmark, else from a published result
JSON shipped with bsight (package data of ``bsight.reports``), labelled as such in the report.
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from bsight.harness.jobtypes import ConfigIssue, JobSpec, JobType, ResultRow, Unit, fingerprint
from bsight.kernels.sparsity.artifacts import PUBLISHED_PACKAGE, find_published

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.runner import RunContext
    from bsight.harness.store import UnitRecord, UnitRowSet

Source = Literal["auto", "measure", "published"]
# provenance fields of published documents (kernel sweep: date, torch, triton; TTFT: created, packages, device)
PROVENANCE_KEYS = (
    "gpu",
    "git_commit",
    "git_dirty",
    "date",
    "created",
    "torch",
    "triton",
    "cuda",
    "cudnn",
    "command",
    "device",
    "packages",
)
Mode = Literal["measure", "published"]


# ------------------------------------------------------------------------------------ published results


def load_published(path: str) -> tuple[dict[str, Any], str] | None:
    """The parsed JSON document of a published result and its SHA-256 (first 16 hex digits), or None when the
    file does not exist; a file that is not a JSON object is a ValueError naming it."""
    found = find_published(path)
    if found is None:
        return None
    data = found.read_bytes()
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as e:
        raise ValueError(f"published result {path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"published result {path}: expected a JSON object, got {type(doc).__name__}")
    return doc, hashlib.sha256(data).hexdigest()[:16]


def append_published(
    ctx: RunContext,
    rows: UnitRowSet,
    path: str | None,
    why_missing: str,
    parse: Callable[[dict[str, Any]], tuple[list[ResultRow], dict[str, Any]]],
) -> None:
    """A unit's rows from a published JSON (``parse``: its rows and the measurement's metadata): the rows not
    stored yet are appended and the file, its hash and the metadata noted; an absent file is noted as
    missing (``why_missing``), with no rows expected, so the section says "not measured"."""
    found = load_published(path) if path else None
    if found is None:
        ctx.expect(0)
        ctx.note(source="none", missing=path, why=why_missing)
        return
    doc, digest = found
    published, meta = parse(doc)
    ctx.expect(len(published))
    ctx.note(source="published", file=path, sha256=digest, meta=jsonable(meta))
    for row in published:
        if row.key not in rows.done:
            rows.append(row)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (numpy or torch scalars become numbers, anything else its string)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


class PublishedSource(BaseModel):
    """Where a GPU benchmark's numbers come from: measured on this machine, or a published result JSON. The
    ``timing`` and ``ttft`` jobs have these fields at the top level, the ``baselines`` job under ``gpu:``."""

    source: Source = Field(
        "auto",
        description="auto: measure where the benchmark can run (CUDA), else load `published`; measure: measure "
        "or fail; "
        "published: always load `published`",
    )
    published: str | None = Field(None, description="published result JSON (default per job type); null: none")

    @model_validator(mode="after")
    def _need_file(self) -> PublishedSource:
        if self.source == "published" and self.published is None:
            raise ValueError("source 'published' needs a `published` file")
        return self

    def resolve(self, can_measure: bool) -> Mode:
        """``measure`` or ``published``: ``auto`` measures where the benchmark can run."""
        if self.source != "auto":
            return self.source
        return "measure" if can_measure else "published"

    def file_issues(self, mode: Mode, at: tuple[str, ...] = ()) -> list[ConfigIssue]:
        """A published file the user named must exist when it is the one loaded (a default may not exist yet)."""
        if self.published is None or "published" not in self.model_fields_set or mode != "published":
            return []
        if find_published(self.published) is None:
            return [
                ConfigIssue(
                    (*at, "published"),
                    f"{self.published!r} not found (looked in the working directory and in the installed "
                    f"{PUBLISHED_PACKAGE} package)",
                )
            ]
        return []

    def identity(self, mode: Mode, measure_params: dict[str, Any]) -> dict[str, Any]:
        """What a unit's numbers depend on (for its fingerprint): the measuring parameters, or the published
        file and its hash, so that an updated file is loaded again."""
        if mode == "measure":
            return measure_params
        found = load_published(self.published) if self.published else None
        return {"published": self.published, "sha256": found[1] if found else None}


class MeasuredSpec(PublishedSource, JobSpec):
    """Common fields of a GPU benchmark job that can also show published results."""


class MeasuredOrPublished(JobType):
    """One unit per job: measured rows (resumable, one per prompt length) or the rows of a published JSON.

    Subclasses supply ``can_measure``, ``measure`` and ``published_rows``; the resolved mode and the
    published file's hash are part of the unit's fingerprint, so a run folder never mixes the two and an
    updated published file is loaded again.
    """

    shardable: ClassVar[bool] = False

    @abstractmethod
    def can_measure(self, spec: MeasuredSpec) -> bool:
        """Whether this machine can run the benchmark (e.g. a CUDA device is present)."""

    @abstractmethod
    def measure_params(self, spec: MeasuredSpec) -> dict[str, Any]:
        """The spec's parameters that change measured rows (part of the fingerprint)."""

    @abstractmethod
    def measure(self, spec: MeasuredSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet) -> None:
        """Measure on this machine, appending rows and skipping ``rows.done``."""

    @abstractmethod
    def published_rows(self, doc: dict[str, Any]) -> tuple[list[ResultRow], dict[str, Any]]:
        """The rows of a published document and its metadata (provenance, setup) for the section."""

    def mode(self, spec: MeasuredSpec) -> Mode:
        return spec.resolve(self.can_measure(spec))

    def check(self, spec: MeasuredSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        return spec.file_issues(self.mode(spec))

    def expand(self, spec: MeasuredSpec, config: BenchmarkConfig) -> list[Unit]:
        mode = self.mode(spec)
        fp = fingerprint(self.type, mode, spec.identity(mode, self.measure_params(spec)))
        return [Unit(job=spec.name, type=self.type, id=f"{spec.name}/{mode}", fingerprint=fp)]

    def run_unit(self, spec: MeasuredSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet) -> None:
        mode = self.mode(spec)
        if mode == "measure":
            if not self.can_measure(spec):
                raise RuntimeError(
                    f"job {spec.name!r} has source 'measure' but this machine cannot run it (no CUDA device)"
                )
            ctx.note(source="measured")
            self.measure(spec, unit, ctx, rows)
            return
        why = "source: published" if spec.source == "published" else "this machine cannot run it"
        append_published(ctx, rows, spec.published, why, self.published_rows)

    @staticmethod
    def origin(record: UnitRecord) -> dict[str, Any]:
        """Where a unit's numbers come from, from its recorded info: ``source`` (measured, published or
        none), the published ``file`` and its hash, and ``prov``, the measurement's provenance with every key
        the templates read present (None when the document lacks it)."""
        info = record.info
        meta = info.get("meta") or {}
        prov = meta.get("provenance") or {}
        return {
            "source": info.get("source", "none"),
            "file": info.get("file") or info.get("missing"),
            "sha256": info.get("sha256"),
            "meta": meta,
            "why": info.get("why", "not run yet"),
            "prov": {k: prov.get(k) for k in PROVENANCE_KEYS},
            "gpu": meta.get("gpu") or prov.get("gpu"),
        }
