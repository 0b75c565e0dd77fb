"""Job ``tau_sweep``: choose tau from data - FLOPs reduction vs fidelity of each tau's head map on held-out prompts.

One unit per model. It reads the per-prompt NMSE tables an earlier job of the run declares as its
``characterization`` artifact (a ``characterize`` job; no model run: each tau re-aggregates them,
:func:`~bsight.kernels.sparsity.aggregate.build_head_map`, with that job's delta and gamma) and runs the
held-out task under the baseline method and under ``method`` (one whose plugin takes a head map, asked through
:meth:`~bsight.harness.interfaces.AttentionMethod.with_artifact`) with each tau's head map. Per sample and
head map: the greedy answer (generation, extracted answer, correct: the accuracy job's rows,
:func:`greedy_answer`), agreement of the extracted answer with the
baseline's, the mean KL divergence ``KL(dense || blindsight)`` of the next-token distribution over the answer
positions (teacher forcing: the gold continuation ``meta["gold_continuation"]``, else ``answer``, appended to
the prompt, :meth:`~bsight.harness.interfaces.ModelAdapter.prepare`), and the prompt's exact attention FLOPs
reduction under that head map. Rows are durable one by one (keys ``#setup``, ``#tau=<t>``,
``<sample>@dense``, ``<sample>@tau=<t>``), so a killed run resumes at the next missing one; adding a tau or
raising ``limit`` adds rows and keeps the others.

The default tau follows a rule written in the job (``rule``): the largest mean held-out FLOPs reduction among
the taus whose answer agreement with dense is at least ``min_agreement`` and whose mean KL is at most
``max_kl`` (ties: the smaller tau). The unit writes every tau's head map and the chosen one
(``headmaps/<job>/<model>.json`` in the run folder, and ``publish`` if set). Later jobs of the run read the
head map of the characterize job: set its ``tau`` to the value this sweep chooses; the section says whether
they match.

The section, per model: what the characterization found (sparse heads, whether segment-start sinks matter),
a table per tau (head categories, NMSE on the characterization prompts, FLOPs reduction, agreement, mean KL,
accuracy dense vs blindsight with a paired bootstrap CI, n, estimated TTFT speedup), the Pareto plot and the chosen
tau with its rule. Beside the FLOPs plot, the same fidelity numbers and accuracy against each tau's estimated TTFT
speedup: Amdahl over published H100 measurements of a Qwen2-VL-7B-shaped 36,864-token prompt weighted by the head
map's category shares (:mod:`~bsight.harness.jobs.ttft_estimate`), labelled as not measured on this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bsight.harness import stats
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import ModelInfo
from bsight.harness.jobs.answering import (
    DEFAULT_MAX_NEW_TOKENS,
    AccuracyRow,
    Headline,
    check_budget,
    greedy_answer,
    run_seed,
)
from bsight.harness.jobs.ttft_estimate import TTFTEstimate, published_ttft_estimate
from bsight.harness.jobtypes import (
    ACCURACY_TABLE,
    CALIBRATION_TABLE,
    HEADMAP_DIR,
    Artifact,
    ConfigIssue,
    JobSpec,
    JobType,
    Metric,
    ResultRow,
    SectionData,
    Unit,
    fingerprint,
    job_index,
)
from bsight.harness.plots import make_plot, new_figure
from bsight.harness.report import shared_table
from bsight.harness.store import StoreError
from bsight.kernels.sparsity.aggregate import build_head_map
from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES, Category
from bsight.kernels.sparsity.characterization import CharacterizationResult
from bsight.kernels.sparsity.flops import layer_pair_table, reduction_from_pairs
from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo, HeadMap
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.param_sweep import SweepRow, sweep

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Prepared, Sample, Task
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

SETUP_KEY = "#setup"
HEAD_MAP, CHARACTERIZATION = "head_map", "characterization"  # artifact kinds: what the sweep runs, what it reads
SINK_GAIN = 2.0  # a head "uses segment-start sinks" when adding them divides its median NMSE by more than this


class DefaultRule(BaseModel):
    """How the sweep picks the default tau: the largest mean FLOPs reduction on held-out prompts among the
    taus that keep the answers (agreement with dense) and the next-token distributions (mean KL) close."""

    model_config = ConfigDict(extra="forbid")
    min_agreement: float = Field(0.9, ge=0, le=1, description="share of held-out answers equal to dense's, at least")
    max_kl: float = Field(0.05, ge=0, description="mean KL(dense || blindsight) over answer positions, nats, at most")

    def text(self) -> str:
        return (
            "the largest mean FLOPs reduction on the held-out prompts among the taus whose answers agree with "
            "dense on at least "
            f"{self.min_agreement:.0%} of the samples and whose mean KL(dense || blindsight) over the answer "
            "positions is at most "
            f"{self.max_kl:g} nats (ties: the smaller tau)"
        )


class TauSweepSpec(JobSpec):
    type: Literal["tau_sweep"]
    characterize: str | None = Field(
        None,
        description="name of the earlier characterize job whose prompts give each tau's head map; default: the "
        "only one",
    )
    models: list[str] | None = Field(None, description="names from `models:`; default: the characterize job's")
    task: str | None = Field(
        None,
        description="held-out task from `tasks:` (not the characterization prompts); default: the only task "
        "the characterize job does not use",
    )
    taus: list[float] = Field(min_length=1, description="the tau values to sweep")
    limit: int | None = Field(None, ge=1, description="first N held-out samples")
    max_new_tokens: int | None = Field(
        None, ge=1, description=f"greedy tokens per answer; default: the task's, else {DEFAULT_MAX_NEW_TOKENS}"
    )
    baseline: str = Field("dense", description="method name from `methods:` the head maps are compared with")
    method: str | None = Field(
        None,
        description="the method from `methods:` that runs each tau's head map (its plugin must take one; its other "
        "options, e.g. kernel, apply)",
    )
    rule: DefaultRule = Field(default_factory=DefaultRule, description="how the default tau is chosen")
    publish: str | None = Field(None, description="also write the chosen head map here ('{model}' = config model name)")
    bootstrap: int = Field(2000, ge=100, le=1_000_000, description="bootstrap resamples for the paired accuracy CI")
    confidence: float = Field(0.95, gt=0, lt=1)

    @field_validator("taus")
    @classmethod
    def _taus(cls, values: list[float]) -> list[float]:
        if any(t <= 0 for t in values):
            raise ValueError(f"every tau must be > 0, got {values}")
        if len({tau_key(t) for t in values}) != len(values):  # rows and files are keyed by tau_key
            raise ValueError(f"taus must be distinct (to 6 significant digits), got {values}")
        return sorted(values)


# ------------------------------------------------------------------------------------------------ rows


class SweepSetup(BaseModel):
    """What every row of a unit was computed under, and what the characterization found."""

    model_config = ConfigDict(extra="forbid")
    model: ModelInfo
    characterize_unit: str
    dataset: DatasetInfo  # the characterization prompts
    sink_policy: SinkPolicy
    delta: float
    gamma: float
    nmse_median: dict[str, float]  # per sparse category: median NMSE over (prompt, layer, head)
    sink_gain_heads: int  # heads whose median NMSE drops > SINK_GAIN x when other segments' start sinks are added
    heads: int  # layers x query heads


class TauHeadMap(BaseModel):
    """One tau's head map as measured on the characterization prompts (NMSE, FLOPs, category shares)."""

    model_config = ConfigDict(extra="forbid")
    sweep: SweepRow
    file: str  # the head map, relative to the run folder


class Fidelity(BaseModel):
    """A head map's output next to the baseline's on one sample."""

    model_config = ConfigDict(extra="forbid")
    agrees: bool  # both answers parsed and equal (the report recomputes agreement from the stored answers)
    kl_mean: float  # mean over answer positions of KL(baseline || method), nats
    kl_max: float
    top1_match: float  # share of answer positions whose most likely token equals the baseline's
    flops_reduction: float  # exact attention FLOPs reduction of this prompt under the head map


class TauSweepRow(ResultRow):
    """``#setup``; ``#tau=<t>`` (a head map); or one sample under the baseline (``<id>@dense``, no fidelity) or
    a tau's head map (``<id>@tau=<t>``)."""

    kind: Literal["setup", "tau", "sample"]
    tau: float | None = None
    setup: SweepSetup | None = None
    head_map: TauHeadMap | None = None
    answer: AccuracyRow | None = None
    answer_tokens: int | None = None  # teacher-forced gold tokens the KL is averaged over
    fidelity: Fidelity | None = None


def tau_key(tau: float) -> str:
    return f"tau={tau:g}"


def sample_key(sample_id: str, tau: float | None) -> str:
    return f"{sample_id}@{'dense' if tau is None else tau_key(tau)}"


# ------------------------------------------------------------------------------------------- helpers


def gold_continuation(sample: Sample) -> str:
    """What teacher forcing appends to the prompt: the task's ``meta["gold_continuation"]`` (the gold answer as
    the text continues it, e.g. with its leading space), else the gold ``answer``."""
    return str(sample.meta.get("gold_continuation") or sample.answer)


def answer_log_probs(adapter: ModelAdapter, method: AttentionMethod, forced: Prepared, n: int) -> torch.Tensor:
    """``float64 [n, vocab]`` log-probabilities of the next token at the ``n`` positions that predict the
    teacher-forced continuation (the last ``n`` tokens of ``forced``)."""
    logits = adapter.logits(forced, method, last=n + 1)
    if logits.shape[0] != 1 or logits.shape[1] < n + 1:
        raise ValueError(f"adapter {adapter.name!r} returned logits of shape {tuple(logits.shape)} for last={n + 1}")
    return torch.log_softmax(logits[0, -(n + 1) : -1].double(), dim=-1)


def kl_per_position(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``KL(base || other)`` per row of two ``[n, vocab]`` log-probability tensors (nats, >= 0)."""
    return (base.exp() * (base - other)).sum(-1).clamp_min(0.0)


def nmse_structure(result: CharacterizationResult) -> tuple[dict[str, float], int]:
    """Per sparse category the median NMSE over every (prompt, layer, head), and how many heads gain from
    segment-start sinks (median ``intra_image_sink`` NMSE below ``intra_image``'s divided by SINK_GAIN)."""
    nmse = result.nmse_array()  # [P, L, H, 3] in SPARSE_CATEGORIES order
    medians = {c.label: float(np.median(nmse[..., i])) for i, c in enumerate(SPARSE_CATEGORIES)}
    per_head = np.median(nmse, axis=0)  # [L, H, 3]
    intra, with_sinks = (
        SPARSE_CATEGORIES.index(Category.INTRA_IMAGE),
        SPARSE_CATEGORIES.index(Category.INTRA_IMAGE_SINK),
    )
    gain = int((per_head[..., with_sinks] * SINK_GAIN < per_head[..., intra]).sum())
    return medians, gain


def choose_tau(points: list[dict[str, Any]], rule: DefaultRule) -> float | None:
    """The rule applied to per-tau summaries (``tau``, ``agreement``, ``kl_mean``, ``flops_heldout``): the
    qualifying tau with the largest FLOPs reduction, the smaller tau on ties; None when none qualifies."""
    ok = [p for p in points if p["n"] and p["agreement"] >= rule.min_agreement and p["kl_mean"] <= rule.max_kl]
    if not ok:
        return None
    return min(ok, key=lambda p: (-p["flops_heldout"], p["tau"]))["tau"]


TRANSFER_CHANGES = ("sparse_share", "flops_heldout", "agreement", "exact_generation", "kl_mean", "top1_match")


def transfer_comparisons(
    units: list[dict[str, Any]], revisions: dict[str, str], costs: dict[str, dict[str, float]] | None = None
) -> list[dict[str, Any]]:
    """Calibration transfer: the sweeps of one model on one held-out task whose head maps were characterized on
    different tasks, side by side at every tau they share. The in-domain sweep is the one characterized on the
    held-out task's own dataset (the same dataset revision in ``revisions``, task name -> revision: e.g. another
    split or other subtasks of it); when exactly one sweep is, each other sweep's ``change`` at a tau is its value
    minus the in-domain one's (the fidelity cost of calibrating on another task). ``costs``: characterize unit id ->
    its calibration wall time (``n``, ``total_s``, ``mean_s``), shown beside each sweep."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for u in units:
        groups.setdefault((u["model"], u["task"]), []).append(u)
    out = []
    for (model, task), members in groups.items():
        if len({m["setup"].dataset.name for m in members}) < 2:
            continue
        held_out = revisions.get(task)
        in_domain = [m for m in members if held_out is not None and m["setup"].dataset.revision == held_out]
        reference = in_domain[0] if len(in_domain) == 1 else None
        ordered = ([reference] if reference else []) + [m for m in members if m is not reference]
        taus = sorted(set.intersection(*({p["tau"] for p in m["points"]} for m in members)))
        rows = []
        for tau in taus:
            at = {m["job"]: next(p for p in m["points"] if p["tau"] == tau) for m in ordered}
            ref = at[reference["job"]] if reference else None
            for m in ordered:
                p = at[m["job"]]
                rows.append(
                    {
                        "tau": tau,
                        "job": m["job"],
                        "characterized_on": m["setup"].dataset.name,
                        "in_domain": m is reference,
                        "point": p,
                        "change": None
                        if ref is None or m is reference
                        else {k: p[k] - ref[k] for k in TRANSFER_CHANGES},
                    }
                )
        calibrations = [
            {
                "job": m["job"],
                "characterized_on": m["setup"].dataset.name,
                "revision": m["setup"].dataset.revision,
                "prompts": m["setup"].dataset.size,
                "in_domain": m is reference,
                "cost": (costs or {}).get(m["setup"].characterize_unit),
            }
            for m in ordered
        ]
        out.append(
            {
                "model": model,
                "task": task,
                "random_weights": any(m["weights"] == "random" for m in members),
                "reference": reference["setup"].dataset.name if reference else None,
                "in_domain_count": len(in_domain),
                "calibrations": calibrations,
                "rows": rows,
            }
        )
    return out


def ttft_estimate() -> tuple[TTFTEstimate | None, str | None]:
    """The published TTFT estimate the section plots against, or None and why (a file absent or unreadable)."""
    try:
        estimate = published_ttft_estimate()
    except ValueError as e:
        return None, str(e)
    if estimate is None:
        return None, "the published TTFT and kernel sweep results were not found"
    return estimate, None


def _selected_models(spec: TauSweepSpec, tables: dict[str, Artifact]) -> list[str]:
    return list(tables) if spec.models is None else list(spec.models)


class TauSweepJob(JobType):
    type = "tau_sweep"
    report_order = 50
    Spec = TauSweepSpec
    Row = TauSweepRow
    section = "tau_sweep"
    title = "Tau sweep: FLOPs reduction vs fidelity on held-out prompts"

    # ---------------------------------------------------------------------------------------- planning

    @staticmethod
    def characterization(spec: TauSweepSpec, config: BenchmarkConfig) -> tuple[str | None, dict[str, Artifact]]:
        """The earlier job whose ``characterization`` artifacts (per-prompt NMSE tables) this sweep reads, and
        those artifacts by model: the named job, else the only earlier job that produces them."""
        tables = [a for a in config.produced(job_index(spec, config)).values() if a.kind == CHARACTERIZATION]
        jobs = list(dict.fromkeys(a.job for a in tables))
        job = spec.characterize if spec.characterize is not None else (jobs[0] if len(jobs) == 1 else None)
        return job, {a.model: a for a in tables if a.job == job and a.model is not None}

    def task_of(self, spec: TauSweepSpec, config: BenchmarkConfig) -> str | None:
        if spec.task is not None:
            return spec.task
        _, tables = self.characterization(spec, config)
        used = {a.info.get("task") for a in tables.values()}
        rest = [t for t in config.tasks if t not in used]
        return rest[0] if len(rest) == 1 else None

    def check(self, spec: TauSweepSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        issues: list[ConfigIssue] = []
        job, tables = self.characterization(spec, config)
        if not tables:
            earlier = sorted(
                {a.job for a in config.produced(job_index(spec, config)).values() if a.kind == CHARACTERIZATION}
            )
            if spec.characterize is not None:
                which = f"no job named {spec.characterize!r} before this one writes characterization tables"
            else:
                which = (
                    "no job before this one writes characterization tables"
                    if not earlier
                    else "several jobs before this one write characterization tables; name one in `characterize`"
                )
            issues.append(
                ConfigIssue(
                    ("characterize",),
                    f"{which} (jobs writing them: {', '.join(earlier) or 'none'}; a characterize job does); "
                    "a sweep reads one listed before it",
                )
            )
            return issues
        char_models = list(tables)
        for i, name in enumerate(_selected_models(spec, tables)):
            if name not in config.models:
                issues.append(
                    ConfigIssue(
                        ("models", i),
                        f"{name!r} is not defined under `models:`; defined: {', '.join(config.models) or 'none'}",
                    )
                )
            elif name not in char_models:
                issues.append(
                    ConfigIssue(
                        ("models", i),
                        f"{name!r} is not characterized by job {job!r} (it characterizes {', '.join(char_models)})",
                    )
                )
        task = self.task_of(spec, config)
        used = ", ".join(sorted({str(a.info.get("task")) for a in tables.values()}))
        if task is None:
            issues.append(
                ConfigIssue(
                    ("task",),
                    f"name the held-out task; defined under `tasks:`: {', '.join(config.tasks) or 'none'} "
                    f"(the characterization uses {used!r})",
                )
            )
        elif task not in config.tasks:
            issues.append(
                ConfigIssue(
                    ("task",), f"{task!r} is not defined under `tasks:`; defined: {', '.join(config.tasks) or 'none'}"
                )
            )
        elif any(a.info.get("task") == task for a in tables.values()):
            issues.append(
                ConfigIssue(
                    ("task",),
                    f"{task!r} is the task job {job!r} characterizes on; held-out samples must come from another task "
                    "(e.g. its held-out split)",
                )
            )
        for field, name in (("baseline", spec.baseline), ("method", spec.method)):
            if name is not None and name not in config.methods:
                issues.append(
                    ConfigIssue(
                        (field,),
                        f"{name!r} is not defined under `methods:`; defined: {', '.join(config.methods) or 'none'}",
                    )
                )
        takers = [m for m in config.methods if HEAD_MAP in config.method_class(m).accepts]
        if spec.method is None:
            issues.append(
                ConfigIssue(
                    ("method",),
                    "name the method from `methods:` that runs each tau's head map (its other options apply); "
                    f"methods whose plugin takes a head map: {', '.join(takers) or 'none'}",
                )
            )
        elif spec.method in config.methods and spec.method not in takers:
            issues.append(
                ConfigIssue(
                    ("method",),
                    f"{spec.method!r} (plugin {config.methods[spec.method].plugin!r}) takes no head map; "
                    f"methods that do: {', '.join(takers) or 'none'}",
                )
            )
        if spec.publish is not None:
            rest = spec.publish.replace("{model}", "")
            if "{" in rest or "}" in rest:
                issues.append(ConfigIssue(("publish",), "the only placeholder allowed is '{model}'"))
            elif len(_selected_models(spec, tables)) > 1 and "{model}" not in spec.publish:
                issues.append(
                    ConfigIssue(
                        ("publish",),
                        "this job sweeps several models: put '{model}' in the path so each gets its own file",
                    )
                )
        return issues

    def expand(self, spec: TauSweepSpec, config: BenchmarkConfig) -> list[Unit]:
        _, tables = self.characterization(spec, config)
        task = self.task_of(spec, config)
        template = config.methods[spec.method].model_dump() if spec.method else None
        units = []
        for model in _selected_models(spec, tables):
            char = tables[model]
            fp = fingerprint(
                self.type,
                config.models[model].model_dump(),
                config.tasks[task].model_dump(),
                config.methods[spec.baseline].model_dump(),
                template,
                spec.max_new_tokens,
                char.identity,
                char.info["delta"],
                char.info["gamma"],
            )
            units.append(
                Unit(job=spec.name, type=self.type, id=f"{spec.name}/{model}", model=model, task=task, fingerprint=fp)
            )
        return units

    def consumes(self, spec: TauSweepSpec, config: BenchmarkConfig) -> list[tuple[tuple[str | int, ...], Artifact]]:
        _, tables = self.characterization(spec, config)
        return [(("characterize",), tables[m]) for m in _selected_models(spec, tables) if m in tables]

    # ------------------------------------------------------------------------------------------ running

    def _characterization(
        self, spec: TauSweepSpec, unit: Unit, ctx: RunContext
    ) -> tuple[Artifact, CharacterizationResult]:
        """The characterization artifact of this model and its tables; its producer must have finished."""
        _, tables = self.characterization(spec, ctx.config)
        char = tables[unit.model]
        assert ctx.run_dir is not None and char.run_path is not None
        file = ctx.run_dir / char.run_path
        if not file.is_file():
            raise ValueError(
                f"{file} does not exist: job {char.job!r} must characterize {unit.model!r} before {unit.id} "
                "(see its error above)"
            )
        return char, CharacterizationResult.load(file)

    def _method(self, spec: TauSweepSpec, ctx: RunContext, head_map: HeadMap, info: ModelInfo) -> AttentionMethod:
        """The configured method with its other options, running ``head_map``."""
        assert spec.method is not None  # check() ran
        cls = ctx.config.method_class(spec.method)
        method = cls(cls.with_artifact(dict(ctx.config.methods[spec.method].options), HEAD_MAP, head_map))
        method.setup(info)
        return method

    def run_unit(self, spec: TauSweepSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[TauSweepRow]) -> None:
        adapter, task = ctx.model(unit.model), ctx.task(unit.task)
        info = adapter.info
        char, result = self._characterization(spec, unit, ctx)
        delta, gamma = char.info["delta"], char.info["gamma"]
        ctx.note(characterize_tau=char.info.get("tau"))
        samples = ctx.samples(unit.task, spec.limit)
        if any(s.id.startswith("#") for s in samples):
            raise ValueError(f"task {unit.task!r} has sample ids starting with '#', which this job reserves")
        taus = spec.taus
        ctx.expect(1 + len(taus) + len(samples) * (1 + len(taus)))
        max_new_tokens = spec.max_new_tokens or task.default_max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        if not task.decoding().greedy:  # its agreement and KL compare greedy answers: never silently greedy
            raise ValueError(
                f"unit {unit.id}: task {unit.task!r} uses scoring protocol {task.protocol!r}, which samples; the tau "
                "sweep compares greedy answers: give the task a greedy protocol (e.g. protocol: bsight)"
            )
        check_budget([r.answer for r in rows if r.answer is not None], max_new_tokens, unit)
        stored = rows.rows.get(SETUP_KEY)
        if stored is None:
            medians, gain = nmse_structure(result)
            setup = SweepSetup(
                model=info,
                characterize_unit=f"{char.job}/{char.model}",
                dataset=result.dataset,
                sink_policy=result.sink_policy,
                delta=delta,
                gamma=gamma,
                nmse_median=medians,
                sink_gain_heads=gain,
                heads=info.num_layers * info.num_heads,
            )
            rows.append(TauSweepRow(key=SETUP_KEY, kind="setup", setup=setup))
        elif stored.setup.model != info:
            raise ValueError(
                f"unit {unit.id}: stored rows come from {stored.setup.model.model_id} (revision "
                f"{stored.setup.model.revision or '-'}), "
                f"the loaded model is {info.model_id} (revision {info.revision or '-'}); rerun with --fresh"
            )
        assert ctx.run_dir is not None
        folder = Path(HEADMAP_DIR) / unit.job
        head_maps: dict[float, HeadMap] = {}
        for tau in taus:
            hm = build_head_map(result, CharacterizationParams(tau=tau, delta=delta, gamma=gamma))
            file = folder / f"{unit.model}.tau{tau:g}.json"
            hm.save(ctx.run_dir / file)
            head_maps[tau] = hm
            if f"#{tau_key(tau)}" not in rows.done:
                (point,) = sweep(result, [tau], [delta], [gamma])
                rows.append(
                    TauSweepRow(
                        key=f"#{tau_key(tau)}", kind="tau", tau=tau, head_map=TauHeadMap(sweep=point, file=str(file))
                    )
                )
        baseline = ctx.method(spec.baseline)
        baseline.setup(info)
        methods = {tau: self._method(spec, ctx, hm, info) for tau, hm in head_maps.items()}
        variants: list[float | None] = [None, *taus]
        todo = [s for s in samples if any(sample_key(s.id, t) not in rows.done for t in variants)]
        with ctx.progress(unit.id, total=len(samples), completed=len(samples) - len(todo)) as bar:
            for sample in todo:
                self._sample(spec, unit, rows, adapter, task, sample, baseline, methods, head_maps, max_new_tokens)
                bar.advance()
        chosen = choose_tau(self._points(list(rows), spec, ctx.seed, task.headline), spec.rule)
        files = {"head_maps": str(folder)}
        if chosen is not None:
            files["chosen"] = str(
                head_maps[chosen].save(ctx.run_dir / folder / f"{unit.model}.json").relative_to(ctx.run_dir)
            )
            if spec.publish is not None:
                files["published"] = str(head_maps[chosen].save(Path(spec.publish.replace("{model}", unit.model))))
        ctx.note(chosen_tau=chosen, files=files, headline=task.headline, protocol=task.protocol)

    def _sample(
        self,
        spec: TauSweepSpec,
        unit: Unit,
        rows: UnitRowSet[TauSweepRow],
        adapter: ModelAdapter,
        task: Task,
        sample: Sample,
        baseline: AttentionMethod,
        methods: dict[float, AttentionMethod],
        head_maps: dict[float, HeadMap],
        max_new_tokens: int,
    ) -> None:
        """Every missing row of one sample: the baseline's answer, then each tau's answer and fidelity."""
        prepared = adapter.prepare(sample)
        if len(prepared.layouts) != 1:
            raise ValueError(
                f"sample {sample.id!r}: prepare() gave a batch of {len(prepared.layouts)}; the sweep takes one "
                "prompt at a time"
            )
        common = {"model": unit.model, "task_name": unit.task}
        dense_key = sample_key(sample.id, None)
        forced = adapter.prepare(sample, continuation=gold_continuation(sample))
        n = forced.num_tokens - prepared.num_tokens
        if n < 1 and forced.num_tokens == prepared.num_tokens:
            raise ValueError(
                f"sample {sample.id!r}: its gold continuation {gold_continuation(sample)!r} gives no tokens to score"
            )
        if n < 1 or not torch.equal(
            forced.inputs["input_ids"][0, : prepared.num_tokens], prepared.inputs["input_ids"][0]
        ):
            raise ValueError(
                f"sample {sample.id!r}: adapter {adapter.name!r} did not append the gold continuation after "
                "the prompt's tokens "
                f"({prepared.num_tokens} prompt tokens, {forced.num_tokens} with the continuation)"
            )
        if dense_key not in rows.done:
            answer = greedy_answer(
                adapter,
                baseline,
                task,
                sample,
                prepared,
                max_new_tokens,
                key=dense_key,
                method_name=spec.baseline,
                **common,
            )
            rows.append(TauSweepRow(key=dense_key, kind="sample", answer=answer, answer_tokens=n))
        dense = rows.rows[dense_key].answer
        missing = [t for t in methods if sample_key(sample.id, t) not in rows.done]
        if not missing:
            return
        base_lp = answer_log_probs(adapter, baseline, forced, n)
        info = adapter.info
        layout = prepared.layouts[0]
        pair_tables: dict[SinkPolicy | None, np.ndarray] = {}
        for tau in missing:
            method, key = methods[tau], sample_key(sample.id, tau)
            policy = method.sink_policy
            if policy not in pair_tables:  # sinks as the attention bridge applies them for this method
                lay = layout.with_sinks(policy) if policy is not None else layout
                pair_tables[policy] = layer_pair_table(
                    lay.unpadded(), info.sliding_windows, info.kinds(), info.bidirectional_layers
                )
            answer = greedy_answer(
                adapter,
                method,
                task,
                sample,
                prepared,
                max_new_tokens,
                key=key,
                method_name=f"{method.name}@{tau_key(tau)}",
                **common,
            )
            lp = answer_log_probs(adapter, method, forced, n)
            kl = kl_per_position(base_lp, lp)
            fidelity = Fidelity(
                # two unparsed answers are not an agreement (DESIGN.md section 5)
                agrees=None not in (answer.extracted, dense.extracted)
                and stats.agreement([answer.extracted], [dense.extracted]) == 1.0,
                kl_mean=float(kl.mean()),
                kl_max=float(kl.max()),
                top1_match=float((lp.argmax(-1) == base_lp.argmax(-1)).double().mean()),
                flops_reduction=float(reduction_from_pairs(pair_tables[policy], head_maps[tau].category_array())),
            )
            rows.append(TauSweepRow(key=key, kind="sample", tau=tau, answer=answer, answer_tokens=n, fidelity=fidelity))

    # ---------------------------------------------------------------------------------------- reporting

    @staticmethod
    def _score_ci(rows: list[TauSweepRow], tau: float, macro: bool, spec: TauSweepSpec, seed: int) -> stats.PairedDelta:
        """Bootstrap CI of the headline score under one tau, on the samples ``_points`` scores (those the
        baseline answered too)."""
        dense = {r.answer.sample_id for r in rows if r.kind == "sample" and r.tau is None}
        mine = [r.answer for r in rows if r.kind == "sample" and r.tau == tau and r.answer.sample_id in dense]
        groups = [a.subtask for a in mine] if macro else None
        return stats.score_interval([a.correct for a in mine], groups, spec.bootstrap, spec.confidence, seed)

    @staticmethod
    def _points(
        rows: list[TauSweepRow], spec: TauSweepSpec, seed: int = 0, headline: Headline = "micro"
    ) -> list[dict[str, Any]]:
        """Per tau with a head map row: its summary over the samples answered under both it and the baseline;
        accuracy as the task's headline score (``macro``: mean of per-subtask accuracies, the bootstrap
        resampling within subtasks), as the accuracy job reports it."""
        dense = {r.answer.sample_id: r.answer for r in rows if r.kind == "sample" and r.tau is None}
        out = []
        # only the job's taus: rows of a tau since removed from the config stay in the file but are not shown
        for head in sorted((r for r in rows if r.kind == "tau" and r.tau in spec.taus), key=lambda r: r.tau):
            mine = {r.answer.sample_id: r for r in rows if r.kind == "sample" and r.tau == head.tau}
            keys = stats.paired(mine, dense)
            fid = [mine[k].fidelity for k in keys]
            nan = float("nan")
            subtasks = [dense[k].subtask for k in keys]
            delta = stats.paired_bootstrap(
                [mine[k].answer.correct for k in keys],
                [dense[k].correct for k in keys],
                resamples=spec.bootstrap,
                confidence=spec.confidence,
                seed=seed,
                groups=subtasks if headline == "macro" else None,
            )
            shares = head.head_map.sweep.shares
            agree = stats.answer_agreement(
                [mine[k].answer.extracted for k in keys],
                [dense[k].extracted for k in keys],
                [mine[k].answer.generation for k in keys],
                [dense[k].generation for k in keys],
            )
            out.append(
                {
                    "tau": head.tau,
                    "n": len(keys),
                    "sweep": head.head_map.sweep,
                    "file": head.head_map.file,
                    "shares": shares,
                    "sparse_share": 1.0 - shares[Category.DENSE.label],
                    "flops_heldout": float(np.mean([f.flops_reduction for f in fid])) if fid else nan,
                    "flops_heldout_min": float(np.min([f.flops_reduction for f in fid])) if fid else nan,
                    # over the pairs where both answers parsed; the rest are counted apart
                    "agreement": agree.rate,
                    "either_unparsed": agree.either_unparsed,
                    "exact_generation": agree.exact_generation,
                    "kl_mean": float(np.mean([f.kl_mean for f in fid])) if fid else nan,
                    "kl_max": float(np.max([f.kl_max for f in fid])) if fid else nan,
                    "top1_match": float(np.mean([f.top1_match for f in fid])) if fid else nan,
                    "accuracy_dense": stats.headline_accuracy(headline, subtasks, [dense[k].correct for k in keys]),
                    "accuracy": stats.headline_accuracy(headline, subtasks, [mine[k].answer.correct for k in keys]),
                    "unparsed": stats.unparsed([mine[k].answer.extracted for k in keys]),
                    "delta": delta,
                }
            )
        return out

    def _unit_context(self, run: RunFolder, rec: UnitRecord, seed: int) -> dict[str, Any] | None:
        spec: TauSweepSpec = self.spec_of(rec)
        rows = run.rows(rec.unit, TauSweepRow)
        setup = next((r.setup for r in rows if r.kind == "setup"), None)
        if setup is None:
            return None
        headline = rec.info.get("headline", "micro")
        points = self._points(rows, spec, seed, headline)
        chosen = choose_tau(points, spec.rule)
        for p in points:
            p["qualifies"] = (
                bool(p["n"]) and p["agreement"] >= spec.rule.min_agreement and p["kl_mean"] <= spec.rule.max_kl
            )
            p["chosen"] = p["tau"] == chosen
        dense = [r.answer for r in rows if r.kind == "sample" and r.tau is None]
        used = rec.info.get("characterize_tau")
        model = setup.model
        return {
            "job": rec.unit.job,
            "model": rec.unit.model,
            "task": rec.unit.task,
            "model_id": model.model_id,
            "weights": model.weights,
            "layers": model.num_layers,
            "heads": model.num_heads,
            "setup": setup,
            "status": rec.status,
            "samples": len(dense),
            "expected_samples": None
            if rec.expected is None
            else (rec.expected - 1 - len(spec.taus)) // (1 + len(spec.taus)),
            "dense_accuracy": stats.headline_accuracy(headline, [a.subtask for a in dense], [a.correct for a in dense]),
            "dense_unparsed": stats.unparsed([a.extracted for a in dense]),
            "headline": headline,
            "points": points,
            "chosen": chosen,
            "chosen_point": next((p for p in points if p["chosen"]), None),
            # no tau has a measured agreement: every answer pair has an unparsed side (e.g. random weights)
            "agreement_undefined": bool(points) and all(p["n"] and np.isnan(p["agreement"]) for p in points),
            "rule": spec.rule,
            "rule_text": spec.rule.text(),
            "confidence": spec.confidence,
            "used_tau": used,
            "sink_gain_share": setup.sink_gain_heads / setup.heads,
            "files": rec.info.get("files", {}),
            "sink_heads_max": max((p["shares"][Category.SINK.label] for p in points), default=0.0),
        }

    def report(self, run: RunFolder, records: list[UnitRecord]) -> SectionData | None:
        seed = run_seed(run)
        units, plots = [], []
        estimate, why_no_ttft = ttft_estimate()
        for rec in records:
            u = self._unit_context(run, rec, seed)
            if u is None or not u["points"]:
                continue
            u["plot"] = make_plot(
                f"tau-sweep-{u['job']}-{u['model']}",
                f"{u['model']}: FLOPs reduction vs fidelity per tau (held-out prompts)",
                pareto_plot(u["points"], u["rule"], u["model"]),
            )
            plots.append(u["plot"])
            u["ttft_plot"] = None
            if estimate is not None:
                for p in u["points"]:
                    p["ttft_speedup"] = estimate.speedup(p["shares"])
                u["ttft_plot"] = make_plot(
                    f"tau-sweep-ttft-{u['job']}-{u['model']}",
                    f"{u['model']}: accuracy and fidelity per tau (held-out prompts) vs {estimate.caption()}",
                    ttft_plot(u["points"], u["rule"], u["model"], estimate),
                )
                plots.append(u["ttft_plot"])
            units.append(u)
        if not units:
            return None
        context = {
            "units": units,
            "transfers": transfer_comparisons(units, _dataset_revisions(run), _calibration_costs(run)),
            "categories": [c.label for c in Category],
            "ttft": estimate,
            "ttft_caption": estimate.caption() if estimate else None,
            "ttft_note": estimate.note() if estimate else None,
            "why_no_ttft": why_no_ttft,
        }
        return SectionData(context=context, plots=plots)

    tables = (ACCURACY_TABLE,)

    def table(self, run: RunFolder, records: list[UnitRecord], name: str) -> list[dict[str, Any]]:
        """``accuracy``: the baseline's answers (``reference``) and, per tau, the answers under that tau's head
        map (``tau``, its category ``shares`` and the ``plugin`` that ran it), for other reports."""
        if name != ACCURACY_TABLE:
            return []
        seed = run_seed(run)
        config = run.config_data()
        plugins = {m: ref.get("plugin") for m, ref in config.get("methods", {}).items()}
        out = []
        for rec in records:
            spec = self.spec_of(rec)
            rows = run.rows(rec.unit, self.Row)
            headline = rec.info.get("headline", "micro")
            common = {
                "model": rec.unit.model,
                "task": rec.unit.task,
                "is_baseline": False,
                "headline": headline,
                "protocol": rec.info.get("protocol"),
                "decoding": "greedy",
                "expected": None,
                "status": rec.status,
            }
            answers = [r.answer for r in rows if r.kind == "sample" and r.tau is None and r.answer is not None]
            dense = [a.correct for a in answers]
            groups = [a.subtask for a in answers] if headline == "macro" else None
            ci = stats.score_interval(dense, groups, spec.bootstrap, spec.confidence, seed)
            if dense:
                out.append(
                    {
                        **common,
                        "method": spec.baseline,
                        "plugin": plugins.get(spec.baseline),
                        "tau": None,
                        "reference": True,
                        "job": rec.unit.job,
                        "accuracy": ci.delta,  # the headline score (macro: over subtasks)
                        "n": len(dense),
                        "baseline": spec.baseline,
                        "is_baseline": True,
                        "agreement": None,
                        "label": spec.baseline,
                        "ci": ci,
                        "delta": None,
                    }
                )
            for p in self._points(rows, spec, seed, headline):
                if p["n"]:
                    out.append(
                        {
                            **common,
                            "method": None,
                            "plugin": plugins.get(spec.method) if spec.method else None,
                            "tau": f"{p['tau']:g}",
                            "reference": False,
                            "job": f"{rec.unit.job} (tau {p['tau']:g})",
                            "accuracy": p["accuracy"],
                            "n": p["n"],
                            "baseline": spec.baseline,
                            "agreement": p["agreement"],
                            "shares": p["shares"],
                            "label": f"{spec.method or 'head map'} (tau {p['tau']:g})",
                            "ci": self._score_ci(rows, p["tau"], groups is not None, spec, seed),
                            "delta": p["delta"],
                            "flops_reduction": p["flops_heldout"],
                        }
                    )
        return out

    def metrics(self, run: RunFolder, records: list[UnitRecord]) -> list[Metric]:
        out = []
        seed = run_seed(run)
        for rec in records:
            u = self._unit_context(run, rec, seed)
            if u is None:
                continue
            for p in u["points"]:
                if not p["n"]:
                    continue
                stem = f"{u['job']}/{u['model']}/{tau_key(p['tau'])}"
                out += [
                    Metric(name=f"{stem}/flops_reduction_mean", value=p["flops_heldout"], higher_is_better=True),
                    Metric(name=f"{stem}/agreement", value=p["agreement"], higher_is_better=True),
                    Metric(name=f"{stem}/kl_mean", value=p["kl_mean"], higher_is_better=False, relative=True),
                    Metric(name=f"{stem}/accuracy_delta", value=p["delta"].delta, higher_is_better=True),
                ]
            if u["chosen_point"] is not None:
                out.append(
                    Metric(
                        name=f"{u['job']}/{u['model']}/chosen/flops_reduction_mean",
                        value=u["chosen_point"]["flops_heldout"],
                        higher_is_better=True,
                    )
                )
        return out


def _dataset_revisions(run: RunFolder) -> dict[str, str]:
    """Task name -> dataset revision, as the run's provenance recorded them (empty when it has none)."""
    try:
        return dict(run.provenance().datasets)
    except StoreError:
        return {}


def _calibration_costs(run: RunFolder) -> dict[str, dict[str, Any]]:
    """Characterize unit id -> its calibration wall time (``n``, ``total_s``, ``mean_s``, ``median_s``), from the
    ``calibration`` table the job types that characterize offer."""
    return {row["unit"]: row for row in shared_table(run, CALIBRATION_TABLE)}


def pareto_plot(points: list[dict[str, Any]], rule: DefaultRule, model: str):
    """Two panels over the taus: FLOPs reduction vs answer agreement, and vs mean KL (log scale); the rule's
    thresholds dashed, the chosen tau starred."""
    pts = [p for p in points if p["n"]]
    x = [100 * p["flops_heldout"] for p in pts]
    return fidelity_plot(pts, x, "mean attention FLOPs reduction (%)", rule, f"{model}: one point per tau")


def ttft_plot(points: list[dict[str, Any]], rule: DefaultRule, model: str, estimate: TTFTEstimate):
    """The FLOPs plot's fidelity numbers, and accuracy, against each tau's estimated TTFT speedup
    (:mod:`~bsight.harness.jobs.ttft_estimate`: published H100 measurements, not this machine)."""
    pts = [p for p in points if p["n"] and p.get("ttft_speedup") is not None]
    x = [p["ttft_speedup"] for p in pts]
    files = ", ".join(src.file.rsplit("/", 1)[-1] for src in estimate.sources)
    title = (
        f"{model}: one point per tau. x: estimated TTFT speedup on an H100 for a {estimate.model}-shaped prompt of "
        f"{estimate.tokens:,} tokens,\nfrom published measurements ({files}), not measured on this machine"
    )
    return fidelity_plot(pts, x, "estimated TTFT speedup (x)", rule, title, accuracy=True)


def fidelity_plot(
    pts: list[dict[str, Any]], x: list[float], xlabel: str, rule: DefaultRule, title: str, accuracy: bool = False
):
    """Panels over the taus (``pts``, at positions ``x``): answer agreement, mean KL (log scale) and, with
    ``accuracy``, accuracy under the head map with dense's dotted; the rule's thresholds dashed, the chosen tau
    starred."""
    fig = new_figure(width=11.5 if accuracy else 8.0, height=3.2)
    axes = fig.subplots(1, 3 if accuracy else 2)
    panels = [
        (axes[0], "agreement", lambda v: 100 * v, "answers equal to dense (%)", 100 * rule.min_agreement, False),
        (axes[1], "kl_mean", lambda v: v, "mean KL(dense || blindsight), nats", rule.max_kl, True),
    ]
    if accuracy:
        panels.append((axes[2], "accuracy", lambda v: 100 * v, "accuracy under the head map (%)", None, False))
    for ax, field, scale, label, threshold, log in panels:
        y = [scale(p[field]) for p in pts]
        if log:
            y = [max(v, 1e-9) for v in y]  # an all-dense head map has KL 0
            ax.set_yscale("log")
        ax.plot(x, y, "o-", color="#0072b2", markersize=4)
        for p, xi, yi in zip(pts, x, y):
            ax.annotate(f"tau={p['tau']:g}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if p.get("chosen"):
                ax.plot([xi], [yi], "*", color="#d55e00", markersize=12, label="chosen")
        if threshold is not None:
            ax.axhline(threshold, color="0.5", linewidth=0.8, linestyle="--", label="rule threshold")
        elif pts:
            dense = 100 * float(np.mean([p["accuracy_dense"] for p in pts]))
            ax.axhline(dense, color="0.3", linewidth=0.8, linestyle=":", label="dense")
            ax.legend(frameon=False, fontsize=7, loc="lower left")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(frameon=False, fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=9)
    return fig


@hookimpl
def bsight_job_types():
    return [TauSweepJob]
