"""Job ``inmodel``: every attention method inside full-size VLMs (random weights) on one GPU, timed fairly
(:mod:`bsight.harness.benchmarks.inmodel`): TTFT, attention share, decode time per token, one-time and per-prompt
overheads, FLOPs, agreement and KL with dense, per model and prompt length; the issue-16 targets checked.

One unit per job; one row per (model, target length, sample), so a killed run resumes at the next prompt. On a
machine without CUDA the job loads the published results (``source: auto``), or fails preflight with exit 2
(``source: measure``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from bsight.harness.hookspecs import hookimpl
from bsight.harness.jobs.published import MeasuredOrPublished, MeasuredSpec, jsonable
from bsight.harness.jobtypes import Metric, ResultRow, SectionData, Unit

if TYPE_CHECKING:
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

META_KEYS = ("provenance", "labels", "dense_policy", "spec", "publication")
TARGETS = {"per_prompt_overhead_max": 0.05, "decode_within": 1.2, "amdahl_min": 0.9, "from_tokens": 36_000}
NOISE_MAX = 0.05  # spread of the non-attention time across methods above which a prompt's TTFT ratios are noise


class InModelSpec(MeasuredSpec):
    type: Literal["inmodel"]
    published: str | None = Field("reports/published/inmodel_h100.json", description="published results")
    archs: list[str] = Field(["qwen2-vl-7b"], min_length=1, description="bsight random-model architectures")
    lengths: list[int] = Field([16_384, 36_864, 73_728, 147_456], min_length=1, description="target prompt tokens")
    samples_per_length: int = Field(1, ge=1)
    repeats: int = Field(2, ge=1, description="steady-state calls per method and prompt (median reported)")
    decode_tokens: int = Field(8, ge=1)
    methods: list[Literal["dense", "blindsight", "flex", "streaming", "mminference"]] = [
        "dense",
        "blindsight",
        "flex",
        "streaming",
        "mminference",
    ]
    shares: dict[str, float] = Field(
        {"dense": 0.30, "sink": 0.20, "intra_image": 0.25, "intra_image_sink": 0.25},
        description="category shares of blindsight's and flex's SYNTHETIC head map",
    )
    decode_backends_max_tokens: int = Field(40_000, ge=0, description="time dense decode per SDPA backend up to here")
    num_layers: int | None = Field(None, ge=1, description="cut the language tower (quick checks only)")
    seed: int = 0
    budget_s: float = Field(3600.0, gt=0)


class InModelRow(ResultRow):
    """One prompt: the benchmark's entry (``key``: ``arch/target/sample``)."""

    source: Literal["measured", "published"]
    arch: str
    target_tokens: int
    entry: dict[str, Any]


def _rows(doc: dict[str, Any], source: Literal["measured", "published"]) -> list[InModelRow]:
    rows = []
    for model in doc.get("models", []):
        seen: dict[int, int] = {}
        for entry in model.get("prompts", []):
            t = int(entry["target_tokens"])
            i = seen[t] = seen.get(t, -1) + 1
            rows.append(
                InModelRow(
                    key=f"{model['arch']}/{t}/{i}", source=source, arch=model["arch"], target_tokens=t, entry=entry
                )
            )
    return rows


def check_targets(rows: list[InModelRow], doc_policy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's targets per prompt of >= 36K tokens: met or missed, and by how much."""
    out = []
    for r in rows:
        e = r.entry
        methods = e.get("methods") or {}
        tokens = e.get("tokens", r.target_tokens)
        backends = {
            b: d["decode_ms_per_token"]
            for b, d in (e.get("decode_backends") or {}).items()
            if "decode_ms_per_token" in d
        }
        policy = (doc_policy or {}).get("decode_backend", "flash")
        if backends and policy in backends:
            # the dense baseline's decode = the dense method under its policy's decode backend, timed in the same
            # warm sweep as the other backends (the per-method decode column is one cold generation each)
            ratio = backends[policy] / min(backends.values())
            fastest = min(backends, key=backends.get)
            out.append(
                {
                    "arch": r.arch,
                    "tokens": tokens,
                    "target": "dense decode step within 1.2x of the fastest SDPA backend",
                    "value": f"{ratio:.2f}x ({policy} {backends[policy]:.1f} vs {fastest} {backends[fastest]:.1f} ms)",
                    "met": ratio <= TARGETS["decode_within"],
                }
            )
        if tokens < TARGETS["from_tokens"]:
            continue
        for name, m in methods.items():
            if "per_prompt_overhead_share" in m:
                share = m["per_prompt_overhead_share"]
                out.append(
                    {
                        "arch": r.arch,
                        "tokens": tokens,
                        "target": f"{name}: per-prompt overhead at most 5% of prefill",
                        "value": f"{share:.1%}",
                        "met": share <= TARGETS["per_prompt_overhead_max"],
                    }  # fmt: skip
                )
        v = (methods.get("blindsight") or {}).get("vs_dense")
        if v:
            noise = next(iter(non_attention_spread([r])), None)
            value = f"{v['ttft_speedup']:.2f}x of {v['amdahl_bound']:.2f}x ({v['ratio']:.0%})"
            if noise and noise["noisy"]:  # a TTFT ratio inside the prompt's timing noise says little either way
                value += f"; timing noise {noise['spread']:.0%}: not reliable"
            out.append(
                {
                    "arch": r.arch,
                    "tokens": tokens,
                    "target": "blindsight TTFT speedup at least 90% of its Amdahl bound",
                    "value": value,
                    "met": v["ratio"] >= TARGETS["amdahl_min"],
                }  # fmt: skip
            )
    return out


def non_attention_spread(rows: list[InModelRow]) -> list[dict[str, Any]]:
    """Per prompt, how much the time outside attention (TTFT minus the method's attention time) differs between
    methods: identical work under every method, so its spread is the timing noise each TTFT ratio carries. Above
    :data:`NOISE_MAX` a prompt's TTFT speedups and Amdahl ratios say more about that noise than about the method."""
    out = []
    for r in rows:
        rest = {
            n: m["ttft_ms"] - m["attention_ms"]
            for n, m in (r.entry.get("methods") or {}).items()
            if "ttft_ms" in m and "attention_ms" in m
        }
        if len(rest) < 2 or min(rest.values()) <= 0:
            continue
        lo, hi = min(rest, key=rest.get), max(rest, key=rest.get)
        spread = rest[hi] / rest[lo] - 1
        out.append({"arch": r.arch, "tokens": r.entry.get("tokens", r.target_tokens), "spread": spread,
                    "low": f"{lo} {rest[lo]:,.0f}", "high": f"{hi} {rest[hi]:,.0f}",
                    "noisy": spread > NOISE_MAX})  # fmt: skip
    return out


def rows_by_commit(rows: list[InModelRow]) -> dict[str, list[str]]:
    """The prompts each code version measured (``entry["commit"]``), where a resumed run's rows come from more than
    one; empty when one version measured them all."""
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r.entry.get("commit") or "not recorded", []).append(f"{r.arch} {r.target_tokens:,}")
    return out if len(out) > 1 else {}


class InModelJob(MeasuredOrPublished):
    type = "inmodel"
    report_order = 75
    Spec = InModelSpec
    Row = InModelRow
    section = "timing"  # with the kernel sweep and TTFT parts
    title = "Methods in the model on a GPU (random weights)"

    def can_measure(self, spec: InModelSpec) -> bool:
        import torch

        return torch.cuda.is_available()

    def measure_params(self, spec: InModelSpec) -> dict[str, Any]:
        return spec.model_dump(exclude={"type", "name", "source", "published", "budget_s"})

    def measure(self, spec: InModelSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[InModelRow]) -> None:
        import torch

        from bsight.harness.benchmarks import inmodel
        from bsight.harness.provenance import git_state

        commit = git_state()[0]  # per row: a resumed run's rows may come from different code
        bench_spec = {**inmodel.DEFAULTS, **spec.model_dump(exclude={"type", "name", "source", "published"})}
        keys = [(a, t, i) for a in spec.archs for t in spec.lengths for i in range(spec.samples_per_length)]
        ctx.expect(len(keys))
        device = torch.device("cuda")
        doc = inmodel.run({**bench_spec, "archs": []}, None)  # provenance, labels, policy: no model
        ctx.note(meta=jsonable({k: doc[k] for k in META_KEYS if k in doc}))
        with ctx.progress(
            unit.id, total=len(keys), completed=sum(f"{a}/{t}/{i}" in rows.done for a, t, i in keys)
        ) as bar:
            for arch in spec.archs:
                todo = [
                    (t, i)
                    for t in spec.lengths
                    for i in range(spec.samples_per_length)
                    if f"{arch}/{t}/{i}" not in rows.done
                ]
                if not todo:
                    continue
                bench = inmodel.Bench(arch, bench_spec, device)
                bench.warm_up()
                for t, i in todo:
                    try:
                        entry = bench.measure_prompt(t, i)
                    except Exception as e:  # noqa: BLE001 - recorded in the row; the run goes on
                        entry = {"target_tokens": t, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                    inmodel.summarize(entry)
                    entry["commit"] = commit
                    rows.append(
                        InModelRow(
                            key=f"{arch}/{t}/{i}", source="measured", arch=arch, target_tokens=t, entry=jsonable(entry)
                        )
                    )
                    bar.advance()
                del bench
                torch.cuda.empty_cache()

    def published_rows(self, doc: dict[str, Any]) -> tuple[list[InModelRow], dict[str, Any]]:
        if not isinstance(doc.get("models"), list):
            raise ValueError("published in-model results: 'models' must be a list")
        return _rows(doc, "published"), {k: doc[k] for k in META_KEYS if k in doc}

    # ------------------------------------------------------------------------------------- reporting

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        if not records:
            return None
        parts = []
        for rec in records:
            rows = sorted(run.rows(rec.unit, InModelRow), key=lambda r: (r.arch, r.target_tokens, r.key))
            table = []
            for r in rows:
                e = r.entry
                for name, m in (e.get("methods") or {"-": {"error": e.get("error") or e.get("skipped")}}).items():
                    table.append({"arch": r.arch, "tokens": e.get("tokens", r.target_tokens), "images": e.get("images"),
                                  "method": name, "m": m, "v": m.get("vs_dense") or {}})  # fmt: skip
            parts.append(
                {
                    "job": rec.unit.job,
                    "origin": self.origin(rec),
                    "table": table,
                    "commits": rows_by_commit(rows),
                    "noise": non_attention_spread(rows),
                    "targets": check_targets(rows, (self.origin(rec)["meta"] or {}).get("dense_policy")),
                    "decode_backends": [
                        {"arch": r.arch, "tokens": r.entry.get("tokens"), "b": r.entry["decode_backends"]}
                        for r in rows
                        if r.entry.get("decode_backends")
                    ],
                }  # fmt: skip
            )
        return SectionData(context={"jobs": parts, "noise_max": NOISE_MAX})

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        out = []
        for rec in records:
            if rec.info.get("source") != "measured":
                continue
            for r in run.rows(rec.unit, InModelRow):
                for name, m in (r.entry.get("methods") or {}).items():
                    if "ttft_ms" in m:
                        out.append(Metric(name=f"{rec.unit.job}/{r.key}/{name}/ttft_ms", value=m["ttft_ms"],
                                          higher_is_better=False, relative=True))  # fmt: skip
        return out


@hookimpl
def bsight_job_types():
    return [InModelJob]
