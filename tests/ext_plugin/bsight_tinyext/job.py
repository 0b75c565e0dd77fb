"""An example third-party job type: prompt lengths per model and task (tokens and segments of each prompt).

It shows the fourth plugin family: a spec, resumable units with one row per sample, a report section (no
template of its own: the generic table) and compare metrics. It reads the model and the task only through the
run context, as any job does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from bsight.harness.jobtypes import (
    ConfigIssue,
    JobSpec,
    JobType,
    Metric,
    ResultRow,
    SectionData,
    Unit,
    fingerprint,
    name_issues,
    selected,
)

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet


class PromptStatsSpec(JobSpec):
    type: Literal["prompt_stats"]
    models: list[str] | None = Field(None, description="names from `models:`; default all")
    tasks: list[str] | None = Field(None, description="names from `tasks:`; default all")
    limit: int | None = Field(None, ge=1, description="first N samples of each task")


class PromptStatsRow(ResultRow):
    tokens: int
    segments: int


class PromptStatsJob(JobType):
    type = "prompt_stats"
    Spec = PromptStatsSpec
    Row = PromptStatsRow
    section = "prompt_stats"
    title = "Prompt lengths"
    description = "Tokens and segments of each prompt, per model and task (example third-party job type)"

    def check(self, spec: PromptStatsSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        return name_issues(spec, config, ("models", "tasks"))

    def expand(self, spec: PromptStatsSpec, config: BenchmarkConfig) -> list[Unit]:
        return [
            Unit(
                job=spec.name,
                type=self.type,
                id=f"{spec.name}/{model}/{task}",
                model=model,
                task=task,
                fingerprint=fingerprint(self.type, config.models[model].model_dump(), config.tasks[task].model_dump()),
            )
            for model in selected(spec, config, "models")
            for task in selected(spec, config, "tasks")
        ]

    def run_unit(self, spec: PromptStatsSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet) -> None:
        adapter = ctx.model(unit.model)
        samples = ctx.samples(unit.task, spec.limit)
        ctx.expect(len(samples))
        for sample in samples:
            if sample.id not in rows.done:
                layout = adapter.prepare(sample).layouts[0]
                rows.append(PromptStatsRow(key=sample.id, tokens=layout.length, segments=layout.num_images))

    def _table(self, run: RunFolder, records: list[UnitRecord]) -> list[dict]:
        out = []
        for rec in records:
            found = run.rows(rec.unit, PromptStatsRow)
            if found:
                tokens = [r.tokens for r in found]
                out.append(
                    {
                        "model": rec.unit.model,
                        "task": rec.unit.task,
                        "prompts": len(found),
                        "mean_tokens": sum(tokens) / len(tokens),
                        "max_tokens": max(tokens),
                    }
                )
        return out

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        table = self._table(run, records)
        return SectionData(context={"note": "Tokens per prompt (example job type).", "table": table}) if table else None

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        return [
            Metric(
                name=f"prompt_stats/{r['model']}/{r['task']}/mean_tokens",
                value=r["mean_tokens"],
                higher_is_better=False,
                relative=True,
            )
            for r in self._table(run, records)
        ]
