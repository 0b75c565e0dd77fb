"""Compare two runs metric by metric and flag regressions (nightly jobs fail on them).

Each job type names its metrics with a direction. A metric regresses when it moves the wrong way by more
than the threshold: absolute change for rates (``--threshold``, e.g. 0.02 = 2 percentage points of
accuracy), relative change for timings (``--rel-threshold``, e.g. 0.10 = 10% slower).
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel

from bsight.harness.jobtypes import Metric
from bsight.harness.plugins import default_registry
from bsight.harness.report import environment
from bsight.harness.results import headline_metrics, read_results
from bsight.harness.store import RunFolder, write_json_atomic


class MetricChange(BaseModel):
    name: str
    a: float
    b: float
    delta: float  # b - a
    relative: bool
    rel_change: float | None  # (b - a) / |a|, None when a == 0
    higher_is_better: bool
    regression: bool
    improvement: bool


class Comparison(BaseModel):
    run_a: str
    run_b: str
    config_hash_a: str
    config_hash_b: str
    threshold: float
    rel_threshold: float
    changes: list[MetricChange]
    only_a: list[str]
    only_b: list[str]
    incomplete_a: list[str] = []  # units of A, B that failed or lack rows
    incomplete_b: list[str] = []
    allow_config_change: bool = False

    @property
    def regressions(self) -> list[MetricChange]:
        return [c for c in self.changes if c.regression]

    @property
    def config_changed(self) -> bool:
        return self.config_hash_a != self.config_hash_b

    @property
    def problems(self) -> list[str]:
        """Why the comparison cannot vouch for B (exit 3): a metric of A missing in B, a failed or incomplete
        unit, different configs (unless allowed)."""
        out = []
        if self.only_a:
            out.append(f"{len(self.only_a)} metric(s) of RUN_A missing in RUN_B: {', '.join(self.only_a[:5])}")
        for side, units in (("RUN_A", self.incomplete_a), ("RUN_B", self.incomplete_b)):
            if units:
                out.append(f"{len(units)} unit(s) of {side} failed or incomplete: {', '.join(units[:5])}")
        if self.config_changed and not self.allow_config_change:
            out.append(
                f"the runs have different configs ({self.config_hash_a} vs {self.config_hash_b}); "
                "pass --allow-config-change to compare them anyway"
            )
        return out


def incomplete_units(run: RunFolder) -> list[str]:
    """Units the run's report shows failed or incomplete."""
    return [
        r.unit.id
        for r in run.manifest().units
        if r.status != "done" or (r.expected is not None and r.rows < r.expected)
    ]


def collect_metrics(run: RunFolder) -> dict[str, Metric]:
    """Every metric the run's job types report, by name."""
    by_type: dict[str, list] = {}
    for rec in run.manifest().units:
        by_type.setdefault(rec.unit.type, []).append(rec)
    types = {j.type: j for j in default_registry().job_types()}
    out: dict[str, Metric] = {}
    for kind, records in by_type.items():
        job = types.get(kind)
        if job is None:  # a run made by a newer bsight with a job type this one lacks
            continue
        for m in job.metrics(run, records):
            out[m.name] = m
    results = read_results(run)  # results.json's headline scores (none for a run made before it existed)
    for m in headline_metrics(results) if results is not None else []:
        out[m.name] = m
    return out


def judge(name: str, a: Metric, b: Metric, threshold: float, rel_threshold: float) -> MetricChange:
    delta = b.value - a.value
    rel = delta / abs(a.value) if a.value else None
    worse = -delta if b.higher_is_better else delta  # > 0 when b is worse
    if b.relative:
        size = worse / abs(a.value) if a.value else (float("inf") if worse > 0 else 0.0)
        limit = rel_threshold
    else:
        size, limit = worse, threshold
    return MetricChange(
        name=name,
        a=a.value,
        b=b.value,
        delta=delta,
        relative=b.relative,
        rel_change=rel,
        higher_is_better=b.higher_is_better,
        regression=size > limit,
        improvement=-size > limit,
    )


def compare_runs(
    run_a: RunFolder,
    run_b: RunFolder,
    threshold: float = 0.02,
    rel_threshold: float = 0.10,
    allow_config_change: bool = False,
) -> Comparison:
    """Metrics of ``run_b`` (new) judged against ``run_a`` (old)."""
    for value, what in ((threshold, "threshold"), (rel_threshold, "rel_threshold")):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    ma, mb = collect_metrics(run_a), collect_metrics(run_b)
    changes = [judge(name, ma[name], mb[name], threshold, rel_threshold) for name in sorted(ma.keys() & mb.keys())]
    return Comparison(
        run_a=str(run_a.root),
        run_b=str(run_b.root),
        config_hash_a=run_a.manifest().config_hash,
        config_hash_b=run_b.manifest().config_hash,
        threshold=threshold,
        rel_threshold=rel_threshold,
        changes=changes,
        only_a=sorted(ma.keys() - mb.keys()),
        only_b=sorted(mb.keys() - ma.keys()),
        incomplete_a=incomplete_units(run_a),
        incomplete_b=incomplete_units(run_b),
        allow_config_change=allow_config_change,
    )


def render_comparison(cmp: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """Write compare.html (self-contained), compare.md and compare.json (for scripts) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "compare.json", cmp)
    ctx = {"cmp": cmp, "regressions": cmp.regressions}
    html, md = out_dir / "compare.html", out_dir / "compare.md"
    html.write_text(environment("html").get_template("compare.html.j2").render(ctx), encoding="utf-8")
    md.write_text(environment("md").get_template("compare.md.j2").render(ctx), encoding="utf-8")
    return html, md
