"""Job ``timing``: the kernel timing sweep (:func:`bsight.harness.benchmarks.kernel_sweep.run_sweep`), measured
here or published.

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

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from bsight.harness.benchmarks import kernel_sweep
from bsight.harness.figures import COLORS as COLORS_BY_CATEGORY
from bsight.harness.hookspecs import hookimpl
from bsight.harness.jobs.published import MeasuredOrPublished, MeasuredSpec, jsonable
from bsight.harness.jobtypes import Metric, ResultRow, SectionData, Unit
from bsight.harness.plots import line_plot, make_plot
from bsight.kernels.sparsity.categories import Category

if TYPE_CHECKING:
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- timing


LENGTHS, LAYOUTS, METHODS = kernel_sweep.LENGTHS, kernel_sweep.LAYOUTS, kernel_sweep.METHODS  # (loads no Triton)
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
    report_order = 60
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
                sweep = kernel_sweep.KernelSweepSpec(
                    lengths=[n],
                    **spec.model_dump(
                        include={"layouts", "methods", "check", "kernel_dense_upto", "flex_until_s", "stop_after_s"}
                    ),
                )
                doc = kernel_sweep.run(sweep, log=log.info)
                rows.append(TimingRow(key=str(n), tokens=n, source="measured", points=jsonable(doc["rows"])))
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
        from bsight.harness.benchmarks.kernel_sweep import targets  # the targets, computed from the rows

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


@hookimpl
def bsight_job_types():
    return [TimingJob]
