"""Job ``ttft``: end-to-end time to first token, dense vs ``blindsight`` (:mod:`bsight.harness.benchmarks.ttft`).

On a CUDA machine each prompt length is one call of :func:`bsight.harness.benchmarks.ttft.run` (one durable
row per length, so a killed run resumes at the next length). ``small: true`` runs the script's tiny CPU
configuration instead: the whole path with a tiny random model, numbers that say nothing about the 7B model
(the section labels them). Elsewhere the job loads the published results (default
``reports/published/ttft_h100.json``) and says where they were measured; without that file the section says
there is no data. Its part of the timing section: TTFT and attention time per length and method, attention
share of TTFT, peak GPU memory, speedups, and what the model was (random weights, random head map: timing only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from bsight.harness.hookspecs import hookimpl
from bsight.harness.jobs.published import MeasuredOrPublished, MeasuredSpec, jsonable
from bsight.harness.jobtypes import Metric, ResultRow, SectionData, Unit
from bsight.harness.plots import line_plot, make_plot

if TYPE_CHECKING:
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

METHODS = ("dense", "blindsight")
META_KEYS = ("benchmark", "provenance", "setup", "head_map", "images", "kernel", "sdpa_backend", "fallback_warnings")


class TTFTSpec(MeasuredSpec):
    type: Literal["ttft"]
    published: str | None = Field(
        "reports/published/ttft_h100.json", description="published TTFT results shown where none are measured"
    )
    small: bool = Field(
        False, description="measure the script's tiny CPU configuration (checks the path; not a 7B measurement)"
    )
    lengths: list[int] | None = Field(
        None, min_length=1, description="prompt lengths in tokens; default: the script's (36K-300K; small: 400, 900)"
    )
    repeats: int = Field(1, ge=1, description="timed prefills per length and method (median reported)")
    dense_share: float = Field(0.3, ge=0, le=1, description="share of dense heads in the random timing head map")
    seed: int = 0
    budget_s: float = Field(420.0, gt=0, description="per length: skip runs that would start after this many seconds")


class TTFTRow(ResultRow):
    """One prompt length (``key``: its target token count): the script's entry for it, per method a summary
    (``ttft_ms``, ``attention_ms``, ``attention_share``, peak memory on GPU, per-run details) or why it is missing."""

    source: Literal["measured", "published"]
    tokens: int
    images: int
    image_tokens: int
    text_tokens: int
    dense: dict[str, Any]
    blindsight: dict[str, Any]
    speedup: dict[str, float] | None = None


def row_from_entry(entry: dict[str, Any], source: Literal["measured", "published"]) -> TTFTRow:
    """A length entry of the script's JSON as a row; a malformed entry is a ValueError naming what is missing."""
    missing = [k for k in ("target_tokens", "tokens", "images", "image_tokens", "text_tokens") if k not in entry]
    if missing:
        raise ValueError(f"TTFT entry lacks {', '.join(missing)} (keys: {', '.join(sorted(entry))})")
    return TTFTRow(
        key=str(entry["target_tokens"]),
        source=source,
        tokens=entry["tokens"],
        images=entry["images"],
        image_tokens=entry["image_tokens"],
        text_tokens=entry["text_tokens"],
        dense=jsonable(entry.get("dense", {"skipped": "not run"})),
        blindsight=jsonable(entry.get("blindsight", {"skipped": "not run"})),
        speedup=entry.get("speedup"),
    )


def document_meta(doc: dict[str, Any]) -> dict[str, Any]:
    """What the section shows about a TTFT document besides its rows (the model config itself is left out)."""
    model = {k: v for k, v in doc.get("model", {}).items() if k != "config"}
    return {"model": model, **{k: doc[k] for k in META_KEYS if k in doc}}


class TTFTJob(MeasuredOrPublished):
    type = "ttft"
    report_order = 70
    Spec = TTFTSpec
    Row = TTFTRow
    section = "timing"  # with the kernel sweep's part
    title = "Time to first token"

    def can_measure(self, spec: TTFTSpec) -> bool:
        import torch

        return spec.small or torch.cuda.is_available()

    def measure_params(self, spec: TTFTSpec) -> dict[str, Any]:
        return spec.model_dump(include={"small", "lengths", "repeats", "dense_share", "seed", "budget_s"})

    def measure(self, spec: TTFTSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[TTFTRow]) -> None:
        from bsight.harness.benchmarks import ttft

        lengths = list(dict.fromkeys(spec.lengths or (ttft.SMALL_LENGTHS if spec.small else ttft.LENGTHS)))
        ctx.expect(len(lengths))
        todo = [n for n in lengths if str(n) not in rows.done]
        with ctx.progress(unit.id, total=len(lengths), completed=len(lengths) - len(todo)) as bar:
            for n in todo:
                bench = ttft.TTFTBenchSpec(
                    lengths=[n], **spec.model_dump(include={"small", "repeats", "dense_share", "seed", "budget_s"})
                )
                doc = ttft.run(bench, log=lambda line: None)  # its progress lines would break the run's display
                ctx.note(meta=jsonable(document_meta(doc)))
                (entry,) = doc["lengths"]
                rows.append(row_from_entry(entry, "measured"))
                bar.advance()

    def published_rows(self, doc: dict[str, Any]) -> tuple[list[TTFTRow], dict[str, Any]]:
        entries = doc.get("lengths")
        if not isinstance(entries, list):
            raise ValueError("published TTFT results: 'lengths' must be a list of per-length entries")
        return [row_from_entry(e, "published") for e in entries], document_meta(doc)

    # ------------------------------------------------------------------------------------- reporting

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        """One part per TTFT job: where its numbers come from, what was measured, plots and the table."""
        if not records:
            return None
        jobs = [self._job_part(run, rec) for rec in records]
        return SectionData(context={"jobs": jobs}, plots=[p for j in jobs for p in j.get("plots", [])])

    def _job_part(self, run: RunFolder, rec: UnitRecord) -> dict[str, Any]:
        origin = self.origin(rec)
        meta = origin["meta"]
        model, head_map, setup = meta.get("model") or {}, meta.get("head_map") or {}, meta.get("setup") or {}
        origin["run"] = {
            "model_id": model.get("id"),
            "weights": model.get("weights"),
            "head_map": head_map.get("kind"),
            "dense_share": head_map.get("dense_share"),
            "kernel": meta.get("kernel"),
            "sdpa": (meta.get("sdpa_backend") or {}).get("backend"),
            "dtype": setup.get("dtype"),
            "repeats": setup.get("repeats"),
            "mlp_chunk": setup.get("mlp_chunk_tokens"),
            "warnings": meta.get("fallback_warnings") or [],
        }
        job = rec.unit.job
        rows = sorted(run.rows(rec.unit, TTFTRow), key=lambda r: r.tokens)
        if not rows:
            return {"job": job, "origin": origin, "empty": True}
        table = []
        for r in rows:
            for name in METHODS:
                m = getattr(r, name)
                table.append(
                    {
                        "tokens": r.tokens,
                        "images": r.images,
                        "image_tokens": r.image_tokens,
                        "method": name,
                        "r": m,
                        "ok": "ttft_ms" in m,
                        "why": m.get("skipped") or m.get("error") or "not run",
                        "speedup": r.speedup if name == "blindsight" else None,
                    }
                )
        plots = []
        series = {
            f"{name} {what}": (
                [r.tokens for r in rows if key in getattr(r, name)],
                [getattr(r, name)[key] for r in rows if key in getattr(r, name)],
            )
            for name in METHODS
            for what, key in (("TTFT", "ttft_ms"), ("attention", "attention_ms"))
        }
        series = {k: v for k, v in series.items() if v[0]}
        if series:
            plots.append(
                make_plot(
                    f"ttft-{job}-ms",
                    "Time to first token and prefill attention time vs prompt tokens",
                    line_plot(series, "prompt tokens", "ms", logx=True, logy=True),
                )
            )
        sped = [r for r in rows if r.speedup]
        if sped:
            speed = {
                f"{k} speedup": (
                    [r.tokens for r in sped if k in r.speedup],
                    [r.speedup[k] for r in sped if k in r.speedup],
                )
                for k in ("ttft", "attention")
            }
            plots.append(
                make_plot(
                    f"ttft-{job}-speedup",
                    "blindsight speedup over dense vs prompt tokens",
                    line_plot(
                        {k: v for k, v in speed.items() if v[0]}, "prompt tokens", "speedup (x)", logx=True, hline=1.0
                    ),
                )
            )
        return {"job": job, "origin": origin, "empty": False, "table": table, "plots": plots}

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        """Measured TTFT and attention time per length and method (published numbers are not this run's)."""
        out = []
        for rec in records:
            if rec.info.get("source") != "measured":
                continue
            for r in run.rows(rec.unit, TTFTRow):
                for name in METHODS:
                    for key in ("ttft_ms", "attention_ms"):
                        if key in getattr(r, name):
                            out.append(
                                Metric(
                                    name=f"{rec.unit.job}/{r.key}/{name}/{key}",
                                    value=getattr(r, name)[key],
                                    higher_is_better=False,
                                    relative=True,
                                )
                            )
        return out


@hookimpl
def bsight_job_types():
    return [TTFTJob]
