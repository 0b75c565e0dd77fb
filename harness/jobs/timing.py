"""Job ``timing``: the kernel timing sweep (:func:`bsight.harness.benchmarks.kernel_sweep.run_sweep`), measured here or published.

On a CUDA machine the job runs the sweep one prompt length at a time (one durable row per length, so a killed
run resumes at the next length). Anywhere else it fakes nothing: it loads the rows of a published sweep
(default ``reports/published/kernel_sweep_h100.json``, read from the working directory or, outside the
repository, from the installed ``bsight.reports`` package) and the section says on which GPU, at which commit
and on which date they were measured - not in this run.

:class:`MeasuredOrPublished` is that pattern for any GPU benchmark with a published JSON (``ttft`` uses it too).
The section: attention time and speedup over cuDNN dense vs prompt tokens per method and head map, the ms
table, the kernel issue's targets (:func:`bsight.harness.benchmarks.kernel_sweep.targets`) and the provenance line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import abstractmethod
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from bsight.harness.figures import COLORS as COLORS_BY_CATEGORY
from bsight.harness.jobs.base import ConfigIssue, JobSpec, JobType, Metric, ResultRow, SectionData, Unit, fingerprint
from bsight.harness.plots import line_plot, make_plot
from bsight.kernels.sparsity.categories import Category

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

log = logging.getLogger(__name__)

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
PUBLISHED_PACKAGE = "bsight.reports"


# ------------------------------------------------------------------------------------ published results


def published_file(path: str) -> Traversable | None:
    """A published result file: ``path`` as given (absolute or relative to the working directory), else, for
    ``reports/...``, the same file inside the installed ``bsight.reports`` package (package data), so the
    default run renders published results outside a source checkout too. None when neither exists."""
    given = Path(path)
    if given.is_file():
        return given
    parts = given.parts
    if not given.is_absolute() and len(parts) > 1 and parts[0] == "reports":
        packaged = resources.files(PUBLISHED_PACKAGE).joinpath(*parts[1:])
        if packaged.is_file():
            return packaged
    return None


def load_published(path: str) -> tuple[dict[str, Any], str] | None:
    """The parsed JSON document of a published result and its SHA-256 (first 16 hex digits), or None when the
    file does not exist; a file that is not a JSON object is a ValueError naming it."""
    found = published_file(path)
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
        description="auto: measure where the benchmark can run (CUDA), else load `published`; measure: measure or fail; "
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
        if published_file(self.published) is None:
            return [
                ConfigIssue(
                    (*at, "published"),
                    f"{self.published!r} not found (looked in the working directory and in the installed {PUBLISHED_PACKAGE} package)",
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


# ---------------------------------------------------------------------------------------------- timing


LENGTHS = (
    36_864,
    73_728,
    147_456,
    301_056,
)  # = bsight.harness.benchmarks.kernel_sweep.LENGTHS (not imported: it loads Triton)
LAYOUTS = ("peers", "mixed")
METHODS = ("ours", "cudnn", "fa2", "flex")
# columns of the time table, in this order when present (others follow)
PREFERRED = (
    [("cudnn", "dense"), ("fa2", "dense"), ("ours", "dense"), ("ours", "dense_in_kernel")]
    + [(m, c) for c in ("sink", "intra_image", "intra_image_sink", "mixed30") for m in ("ours", "flex")]
    + [("amdahl_bound", "mixed30")]
)
TIMED = {"cudnn", "fa2", "ours", "flex", "amdahl_bound"}
# plot styles: colour = what is computed (head category, or the dense baseline), dash and marker = who computes it
COLORS = {**{c.label: COLORS_BY_CATEGORY[c] for c in Category}, "mixed30": "#cc79a7", "dense_in_kernel": "#9e9e9e"}
BASELINE_COLORS = {"cudnn": "#000000", "fa2": "#8c564b"}
DASHES = {
    "ours": ("-", "o"),
    "flex": ("--", "s"),
    "cudnn": (":", "^"),
    "fa2": ("-.", "v"),
    "amdahl_bound": ((0, (1, 2)), ""),
}


def series_style(method: str, category: str) -> dict[str, Any]:
    """Line keywords of one (method, head category) series of the timing plots."""
    base = method.split("[", 1)[0]
    dash, marker = DASHES.get(base, ("-", "o"))
    return {"color": BASELINE_COLORS.get(base, COLORS.get(category, "#333333")), "linestyle": dash, "marker": marker}


NOT_TIMES = {"-", "check_mixed30_max_rel_err", "compiled_variants", "compiled_variants_growth"}
# the two halves of a mixed30 call, timed apart: shown in ms, never as a speedup (neither is a whole attention)
PARTS = {"mixed30_dense_part", "mixed30_kernel_part"}


class TimingSpec(MeasuredSpec):
    type: Literal["timing"]
    published: str | None = Field(
        "reports/published/kernel_sweep_h100.json", description="published sweep shown where none is measured"
    )
    lengths: list[int] = Field(list(LENGTHS), min_length=1, description="prompt lengths (tokens) to measure")
    layouts: list[Literal["peers", "mixed"]] = Field(list(LAYOUTS), min_length=1)
    methods: list[Literal["ours", "cudnn", "fa2", "flex"]] = Field(list(METHODS), min_length=1)
    check: bool = Field(True, description="check the kernel against an explicit-mask reference on sampled rows first")
    kernel_dense_upto: int = Field(0, ge=0, description="up to this length also time dense heads inside the kernel")
    flex_until_s: float | None = Field(None, gt=0, description="per length: skip FlexAttention after this many seconds")
    stop_after_s: float | None = Field(
        None, gt=0, description="per length: skip further points after this many seconds"
    )

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, lengths: list[int]) -> list[int]:
        if any(n < 256 for n in lengths):
            raise ValueError("every length must be >= 256 tokens (a text prefix, one image, a question)")
        return lengths


class TimingRow(ResultRow):
    """One prompt length of the sweep (``key``: the length, or ``other`` for rows of no length): every row
    :func:`~bsight.harness.benchmarks.kernel_sweep.run_sweep` wrote for it, as it wrote them."""

    tokens: int | None
    source: Literal["measured", "published"]
    points: list[dict[str, Any]]


def _label(point: dict[str, Any]) -> str:
    """Series name of a sweep row: its method, with the kernel config when not the default one."""
    config = point.get("config")
    return point["method"] if config in (None, "default") else f"{point['method']}[{config}]"


def timing_points(rows: list[TimingRow]) -> list[dict[str, Any]]:
    return [p for r in rows for p in r.points]


def timing_context(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Tables of the section: ms per (tokens, layout) and series, speedups over cuDNN, notes on skips/errors."""
    times = [
        p
        for p in points
        if p.get("tokens")
        and p.get("layout", "-") != "-"
        and p["method"] in TIMED
        and p.get("category") not in NOT_TIMES
        and p.get("ms") is not None
    ]
    present = list(dict.fromkeys((_label(p), p["category"]) for p in times))
    columns = [c for c in PREFERRED if c in present] + [c for c in present if c not in PREFERRED]
    cell = {(p["tokens"], p["layout"], _label(p), p["category"]): p["ms"] for p in times}
    images = {
        (p["tokens"], p["layout"]): p.get("images") for p in points if p.get("tokens") and p.get("layout", "-") != "-"
    }
    keys = sorted({(p["tokens"], p["layout"]) for p in times})
    table = [
        {
            "tokens": s,
            "layout": lay,
            "images": images.get((s, lay)),
            "ms": [cell.get((s, lay, m, c)) for m, c in columns],
        }
        for s, lay in keys
    ]
    speed_cols = [c for c in columns if c != ("cudnn", "dense") and c[1] not in PARTS]
    speedups = []
    for s, lay in keys:
        base = cell.get((s, lay, "cudnn", "dense"))
        if base:
            speedups.append(
                {
                    "tokens": s,
                    "layout": lay,
                    "x": [base / cell[(s, lay, m, c)] if cell.get((s, lay, m, c)) else None for m, c in speed_cols],
                }
            )
    notes = [p for p in points if p.get("error") or p.get("reason")]
    checks = [p for p in points if p.get("category") == "check_mixed30_max_rel_err"]
    return {
        "columns": [f"{m} {c}" for m, c in columns],
        "table": table,
        "speed_columns": [f"{m} {c}" for m, c in speed_cols],
        "speedups": speedups,
        "notes": notes,
        "checks": checks,
        "series": columns,
        "speed_series": speed_cols,
        "cells": cell,
        "keys": keys,
    }


class TimingJob(MeasuredOrPublished):
    type = "timing"
    Spec = TimingSpec
    Row = TimingRow
    section = "timing"
    title = "Kernel timing"

    def can_measure(self, spec: TimingSpec) -> bool:
        import torch

        return torch.cuda.is_available()

    def measure_params(self, spec: TimingSpec) -> dict[str, Any]:
        return spec.model_dump(
            include={"lengths", "layouts", "methods", "check", "kernel_dense_upto", "flex_until_s", "stop_after_s"}
        )

    def measure(self, spec: TimingSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[TimingRow]) -> None:
        import torch

        from bsight.harness.benchmarks.kernel_sweep import run_sweep  # loads Triton: only where the sweep runs

        lengths = list(dict.fromkeys(spec.lengths))
        ctx.expect(len(lengths))
        ctx.note(
            meta={
                "gpu": torch.cuda.get_device_name(0),
                "setup": {"heads": [28, 4], "head_dim": 128, "dtype": "bfloat16"},
            }
        )
        todo = [n for n in lengths if str(n) not in rows.done]
        with ctx.progress(unit.id, total=len(lengths), completed=len(lengths) - len(todo)) as bar:
            for n in todo:
                points = run_sweep(
                    lengths=[n],
                    layouts=spec.layouts,
                    methods=spec.methods,
                    check=spec.check,
                    kernel_dense_upto=spec.kernel_dense_upto,
                    flex_until_s=spec.flex_until_s,
                    stop_after_s=spec.stop_after_s,
                    log=log.info,
                )
                rows.append(TimingRow(key=str(n), tokens=n, source="measured", points=jsonable(points)))
                bar.advance()

    def published_rows(self, doc: dict[str, Any]) -> tuple[list[TimingRow], dict[str, Any]]:
        points = doc.get("rows")
        if not isinstance(points, list) or not all(
            isinstance(p, dict) and "method" in p and "tokens" in p for p in points
        ):
            raise ValueError(
                "published sweep: 'rows' must be a list of sweep rows (objects with 'tokens' and 'method')"
            )
        groups: dict[int | None, list[dict]] = {}
        for p in points:
            groups.setdefault(p["tokens"], []).append(p)
        rows = [
            TimingRow(key=str(n) if n is not None else "other", tokens=n, source="published", points=jsonable(g))
            for n, g in groups.items()
        ]
        return rows, {"provenance": doc.get("provenance", {}), "setup": doc.get("setup", {})}

    # ------------------------------------------------------------------------------------- reporting

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        """One part per timing job: where its numbers come from, then plots and tables (or why there are none)."""
        if not records:
            return None
        jobs, plots = [], []
        for rec in records:
            job = self._job_part(run, rec)
            jobs.append(job)
            plots += job.get("plots", [])
        return SectionData(context={"jobs": jobs}, plots=plots)

    def _job_part(self, run: RunFolder, rec: UnitRecord) -> dict[str, Any]:
        from bsight.harness.benchmarks.kernel_sweep import targets  # the issue's targets, computed from the rows

        origin = self.origin(rec)
        setup = origin["meta"].get("setup") or {}
        origin["setup"] = setup if {"heads", "head_dim", "dtype"} <= setup.keys() else None
        points = timing_points(run.rows(rec.unit, TimingRow))
        if not points:
            return {"job": rec.unit.job, "origin": origin, "empty": True}
        ctx = timing_context(points)
        plots = []
        for lay in dict.fromkeys(lay for _, lay in ctx["keys"]):
            time_series, speed_series = {}, {}
            styles = {f"{m} {c}": series_style(m, c) for m, c in ctx["series"]}
            for m, c in ctx["series"]:
                pts = [
                    (s, ctx["cells"][(s, lay, m, c)])
                    for s, ll in ctx["keys"]
                    if ll == lay and (s, lay, m, c) in ctx["cells"]
                ]
                if pts:
                    time_series[f"{m} {c}"] = ([x for x, _ in pts], [y for _, y in pts])
                base = {s: ctx["cells"].get((s, lay, "cudnn", "dense")) for s, _ in pts}
                sp = [(s, base[s] / ms) for s, ms in pts if base.get(s)]
                if sp and (m, c) in ctx["speed_series"]:
                    speed_series[f"{m} {c}"] = ([x for x, _ in sp], [y for _, y in sp])
            name = f"timing-{rec.unit.job}-{lay}"
            plots.append(
                make_plot(
                    f"{name}-ms",
                    f"Attention time vs prompt tokens, layout {lay}",
                    line_plot(
                        time_series, "prompt tokens", "attention forward, ms", logx=True, logy=True, styles=styles
                    ),
                )
            )
            if speed_series:
                plots.append(
                    make_plot(
                        f"{name}-speedup",
                        f"Speedup over cuDNN dense causal vs prompt tokens, layout {lay}",
                        line_plot(
                            speed_series,
                            "prompt tokens",
                            "speedup over cuDNN dense (x)",
                            logx=True,
                            logy=True,
                            hline=1.0,
                            styles=styles,
                        ),
                    )
                )
        return {
            "job": rec.unit.job,
            "origin": origin,
            "empty": False,
            "columns": ctx["columns"],
            "table": ctx["table"],
            "speed_columns": ctx["speed_columns"],
            "speedups": ctx["speedups"],
            "notes": ctx["notes"],
            "checks": ctx["checks"],
            "targets": targets(points),
            "plots": plots,
        }

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        """Measured times only: published numbers are not this run's measurements."""
        out = []
        for rec in records:
            if rec.info.get("source") != "measured":
                continue
            ctx = timing_context(timing_points(run.rows(rec.unit, TimingRow)))
            for (s, lay, m, c), ms in sorted(ctx["cells"].items()):
                out.append(
                    Metric(name=f"{rec.unit.job}/{lay}/{s}/{m}/{c}/ms", value=ms, higher_is_better=False, relative=True)
                )
        return out
