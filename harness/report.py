"""Renders a run folder into ``index.html`` (self-contained: inline CSS and SVG, no scripts, no network) and
``report.md`` (plots as SVG files under ``plots/``), from the jinja2 templates in ``bsight.reports``.

The report frame has a fixed order of sections (:data:`SECTIONS`); each is filled by the job type whose
``section`` matches, from the run's stored rows. A section no job filled says "no data in this run"; a job
type with a section key not listed here gets its section appended. A section whose builder fails shows the
error instead of taking the whole report down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
from markupsafe import Markup

from bsight.harness.jobtypes import JobType
from bsight.harness.plugins import default_registry
from bsight.harness.results import build_results, combined_tables, write_results
from bsight.harness.store import RunFolder, UnitRecord

SECTIONS: dict[str, str] = {
    "accuracy": "Accuracy",
    "flops": "FLOPs",
    "characterization": "Characterization",
    "timing": "Kernel timing",
}


@dataclass
class RenderedSection:
    key: str
    title: str
    html: Markup
    md: str
    has_data: bool


def fmt_num(value: Any, digits: int = 3, signed: bool = False) -> str:
    """A number for a table cell (``signed``: a change, "+" before a positive one); missing values (None, NaN)
    show as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int) or value == 0:
        text = str(value)
    elif abs(value) >= 1e4:  # large timings in full ("50,600", never "5e+04")
        text = f"{value:,.0f}"
    else:
        text = f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    return f"+{text}" if signed and value > 0 else text


def fmt_pct(value: Any, digits: int = 1, signed: bool = False) -> str:
    """A rate as a percentage (``signed``: a change, in percentage points)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{100 * value:+.{digits}f}" if signed else f"{100 * value:.{digits}f}"
    return text + (" pp" if signed else "%")


def fmt_seconds(value: Any) -> str:
    """A wall time: seconds from 1 s up ("96.3 s", "1,234 s"), milliseconds below ("19.1 ms", "0.42 ms"), so a
    short calibration never shows as "0.0 s"; missing values (None, NaN) show as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value >= 1e3:
        return f"{value:,.0f} s"
    if value >= 1:
        return f"{value:.1f} s"
    return f"{1e3 * value:.3g} ms"


def portable_path(path: str | Path) -> str:
    """A path as a report may print it: relative to the working directory when inside it, else only its last
    part after an ellipsis, so a published report names no folder of the machine that rendered it."""
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return f"…/{p.name}"


def portable_command(argv: list[str]) -> str:
    """A recorded command line with the program by name only and absolute paths made :func:`portable_path`
    (``--out=/x/y`` too)."""
    if not argv:
        return ""
    parts = [Path(argv[0]).name]
    for arg in argv[1:]:
        flag, eq, value = arg.partition("=")
        if eq and value.startswith("/"):
            parts.append(f"{flag}={portable_path(value)}")
        else:
            parts.append(portable_path(arg) if arg.startswith("/") else arg)
    return " ".join(parts)


def md_text(value: Any) -> Any:
    """A value as Markdown output: strings have ``&``, ``<`` and ``>`` escaped (no raw HTML from data), Markup
    (an already rendered part of the report) is kept as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value


def environment(kind: Literal["html", "md"]) -> jinja2.Environment:
    """Template environment: HTML autoescapes; Markdown does not (its templates escape table pipes)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bsight.reports", "templates"),
        autoescape=kind == "html",
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Markdown viewers render inline HTML: text taken from data (answers, errors, names) is escaped
        finalize=None if kind == "html" else md_text,
    )
    env.filters.update(
        num=fmt_num,
        pct=fmt_pct,
        secs=fmt_seconds,
        mdcell=lambda s: str(s).replace("|", "\\|").replace("\n", " "),
        portable=portable_path,
        command=portable_command,
    )
    return env


def _records_by_type(run: RunFolder) -> dict[str, list[UnitRecord]]:
    out: dict[str, list[UnitRecord]] = {}
    for rec in run.manifest().units:
        out.setdefault(rec.unit.type, []).append(rec)
    return out


def build_sections(
    run: RunFolder, html_env: jinja2.Environment, md_env: jinja2.Environment, job_types: Sequence[JobType]
) -> list[RenderedSection]:
    """Every section of the frame, filled from the run where a job produced data; plots written to plots/.

    Several job types may fill one section (``planted`` goes with ``characterize``, ``ttft`` with ``timing``):
    each renders its own part, in registration order, from ``sections/<job type>.*.j2`` when that template
    exists, else ``sections/<section>.*.j2``. A part whose builder fails shows its error; the others render."""
    by_type = _records_by_type(run)
    keys = list(SECTIONS) + [j.section for j in job_types if j.section not in SECTIONS]
    out = []
    for key in dict.fromkeys(keys):
        jobs = [j for j in job_types if j.section == key and by_type.get(j.type)]
        title = next((j.title for j in job_types if j.section == key), SECTIONS.get(key, key))
        parts: list[tuple[str, str]] = []
        errors: list[tuple[str, str]] = []
        for job in jobs:
            try:
                data = job.report(run, by_type[job.type])
            except Exception as e:
                errors.append((job.title, f"{type(e).__name__}: {e}"))
                continue
            if data is None:
                continue
            plots = {p.name: p for p in data.plots}
            _write_plots(run.root, plots.values())
            ctx = {"title": job.title, "section": data.context, "plots": plots}
            name = _template(html_env, job.type, key)
            parts.append(
                (
                    html_env.get_template(f"sections/{name}.html.j2").render(ctx),
                    md_env.get_template(f"sections/{name}.md.j2").render(ctx),
                )
            )
        if parts:
            for job_title, error in errors:  # a failed part next to parts that rendered
                ctx = {"title": job_title, "error": f"{job_title}: {error}"}
                parts.append(
                    (
                        html_env.get_template("sections/_empty.html.j2").render(ctx),
                        md_env.get_template("sections/_empty.md.j2").render(ctx),
                    )
                )
            html = Markup("".join(h for h, _ in parts))
            out.append(RenderedSection(key, title, html, Markup("\n".join(m for _, m in parts)), True))
            continue
        ctx = {"title": title, "error": "; ".join(e if len(errors) == 1 else f"{t}: {e}" for t, e in errors) or None}
        out.append(
            RenderedSection(
                key,
                title,
                Markup(html_env.get_template("sections/_empty.html.j2").render(ctx)),
                Markup(md_env.get_template("sections/_empty.md.j2").render(ctx)),
                False,
            )
        )
    return out


def shared_table(run: RunFolder, name: str, job_types: Sequence[JobType] | None = None) -> list[dict[str, Any]]:
    """Rows of a named table that job types offer other job types' reports (:attr:`JobType.tables`), from the
    run's units of every job type offering it, in report order: how one job's report reads another's results
    without importing it."""
    types = default_registry().job_types() if job_types is None else job_types
    by_type = _records_by_type(run)
    out: list[dict[str, Any]] = []
    for job in types:
        if name in job.tables and by_type.get(job.type):
            out += job.table(run, by_type[job.type], name)
    return out


def _template(env: jinja2.Environment, job_type: str, section: str) -> str:
    """The job type's own section template if it has one, else the section's, else the generic table (a third
    party's job type: its ``report`` context holds ``table``, a list of rows, and ``note``)."""
    for name in (job_type, section):
        try:
            env.get_template(f"sections/{name}.html.j2")
            return name
        except jinja2.TemplateNotFound:
            continue
    return "_table"


def _write_plots(root: Path, plots) -> None:
    folder = root / "plots"
    for plot in plots:
        folder.mkdir(exist_ok=True)
        (folder / f"{plot.name}.svg").write_text(plot.svg, encoding="utf-8")


def _provenance_context(run: RunFolder) -> dict[str, Any]:
    try:
        p = run.provenance()
    except Exception as e:
        return {"provenance": None, "error": f"{type(e).__name__}: {e}"}
    return {"provenance": p, "error": None}


def render_report(run: RunFolder | Path | str, job_types: Sequence[JobType] | None = None) -> tuple[Path, Path]:
    """Write ``results.json`` (:mod:`bsight.harness.results`), then ``index.html`` and ``report.md`` (their
    combined table built from the same results) into the run folder; returns the report's paths. ``job_types``:
    those of the run's registry (default: the installed plugins')."""
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    html_env, md_env = environment("html"), environment("md")
    manifest = run.manifest()
    job_types = default_registry().job_types() if job_types is None else job_types
    results = build_results(run, job_types)
    write_results(run, results)
    sections = build_sections(run, html_env, md_env, job_types)
    counts: dict[str, int] = {}
    for rec in manifest.units:
        counts[rec.status] = counts.get(rec.status, 0) + 1
    ctx = {
        "manifest": manifest,
        "counts": counts,
        "sections": sections,
        "combined": combined_tables(results),
        "results": results,
        **_provenance_context(run),
    }
    html_path, md_path = run.root / "index.html", run.root / "report.md"
    html_path.write_text(html_env.get_template("report.html.j2").render(ctx), encoding="utf-8")
    md_path.write_text(md_env.get_template("report.md.j2").render(ctx), encoding="utf-8")
    return html_path, md_path
