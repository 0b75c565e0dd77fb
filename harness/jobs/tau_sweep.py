"""Job ``tau_sweep``: choose tau from data - FLOPs reduction vs fidelity of each tau's head map on held-out prompts.

One unit per model. It takes the stored per-prompt NMSE tables of a ``characterize`` job of the same run (no
model run: each tau re-aggregates them, :func:`~bsight.kernels.sparsity.aggregate.build_head_map`, with the
characterize job's delta and gamma) and runs the held-out task under the ``dense`` baseline and under method
``blindsight`` with each tau's head map. Per sample and head map: the greedy answer (generation, extracted
answer, correct: the accuracy job's rows, :func:`greedy_answer`), agreement of the extracted answer with the
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
accuracy dense vs blindsight with a paired bootstrap CI, n), the Pareto plot and the chosen tau with its rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bsight.harness import stats
from bsight.harness.interfaces import ModelInfo
from bsight.harness.jobs.accuracy import (
    DEFAULT_MAX_NEW_TOKENS,
    AccuracyRow,
    Headline,
    check_budget,
    greedy_answer,
    run_seed,
)
from bsight.harness.jobs.base import (
    ConfigIssue,
    JobSpec,
    JobType,
    Metric,
    ResultRow,
    SectionData,
    Unit,
    fingerprint,
    selected,
)
from bsight.harness.jobs.characterize import HEADMAP_DIR, CharacterizeJob, CharacterizeRow, CharacterizeSpec, summarize
from bsight.harness.plots import make_plot, new_figure
from bsight.kernels.sparsity.aggregate import build_head_map
from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES, Category
from bsight.kernels.sparsity.characterization import CharacterizationResult
from bsight.kernels.sparsity.flops import layer_pair_table, reduction_from_pairs
from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo, HeadMap
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.sparsity.param_sweep import SweepRow, sweep

if TYPE_CHECKING:
    from bsight.harness.config import BenchmarkConfig
    from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Prepared, Sample, Task
    from bsight.harness.runner import RunContext
    from bsight.harness.store import RunFolder, UnitRecord, UnitRowSet

SETUP_KEY = "#setup"
BLINDSIGHT = "blindsight"  # the plugin every tau's head map runs under
SINK_GAIN = 2.0  # a head "uses segment-start sinks" when adding them divides its median NMSE by more than this


class DefaultRule(BaseModel):
    """How the sweep picks the default tau: the largest mean FLOPs reduction on held-out prompts among the
    taus that keep the answers (agreement with dense) and the next-token distributions (mean KL) close."""

    model_config = ConfigDict(extra="forbid")
    min_agreement: float = Field(0.9, ge=0, le=1, description="share of held-out answers equal to dense's, at least")
    max_kl: float = Field(0.05, ge=0, description="mean KL(dense || blindsight) over answer positions, nats, at most")

    def text(self) -> str:
        return (
            f"the largest mean FLOPs reduction on the held-out prompts among the taus whose answers agree with dense on at least "
            f"{self.min_agreement:.0%} of the samples and whose mean KL(dense || blindsight) over the answer positions is at most "
            f"{self.max_kl:g} nats (ties: the smaller tau)"
        )


class TauSweepSpec(JobSpec):
    type: Literal["tau_sweep"]
    characterize: str | None = Field(
        None,
        description="name of the earlier characterize job whose prompts give each tau's head map; default: the only one",
    )
    models: list[str] | None = Field(None, description="names from `models:`; default: the characterize job's")
    task: str | None = Field(
        None,
        description="held-out task from `tasks:` (not the characterization prompts); default: the only task the characterize job does not use",
    )
    taus: list[float] = Field(min_length=1, description="the tau values to sweep")
    limit: int | None = Field(None, ge=1, description="first N held-out samples")
    max_new_tokens: int | None = Field(
        None, ge=1, description=f"greedy tokens per answer; default: the task's, else {DEFAULT_MAX_NEW_TOKENS}"
    )
    baseline: str = Field("dense", description="method name from `methods:` the head maps are compared with")
    method: str | None = Field(
        None,
        description="a `blindsight` method from `methods:` whose options (kernel, ...) every tau's head map runs with; default: blindsight's defaults",
    )
    rule: DefaultRule = Field(default_factory=DefaultRule, description="how the default tau is chosen")
    publish: str | None = Field(None, description="also write the chosen head map here ('{model}' = config model name)")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for the paired accuracy CI")
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
    agrees: bool  # extracted answer equals the baseline's
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


def _selected_models(spec: TauSweepSpec, config: BenchmarkConfig, char: CharacterizeSpec) -> list[str]:
    return selected(char, config, "models") if spec.models is None else list(spec.models)


class TauSweepJob(JobType):
    type = "tau_sweep"
    Spec = TauSweepSpec
    Row = TauSweepRow
    section = "tau_sweep"
    title = "Tau sweep: FLOPs reduction vs fidelity on held-out prompts"

    # ---------------------------------------------------------------------------------------- planning

    @staticmethod
    def characterize_spec(spec: TauSweepSpec, config: BenchmarkConfig) -> CharacterizeSpec | None:
        """The characterize job this sweep reads: the named one, else the only one listed before it."""
        index = next((i for i, s in enumerate(config.jobs) if s is spec), len(config.jobs))
        earlier = [s for s in config.jobs[:index] if s.type == "characterize"]
        if spec.characterize is not None:
            return next((s for s in earlier if s.name == spec.characterize), None)
        return earlier[0] if len(earlier) == 1 else None

    def task_of(self, spec: TauSweepSpec, config: BenchmarkConfig) -> str | None:
        if spec.task is not None:
            return spec.task
        char = self.characterize_spec(spec, config)
        used = CharacterizeJob.task_of(char, config) if char is not None else None
        rest = [t for t in config.tasks if t != used]
        return rest[0] if len(rest) == 1 else None

    def check(self, spec: TauSweepSpec, config: BenchmarkConfig) -> list[ConfigIssue]:
        issues: list[ConfigIssue] = []
        char = self.characterize_spec(spec, config)
        if char is None:
            index = next((i for i, s in enumerate(config.jobs) if s is spec), len(config.jobs))
            earlier = [s.name for s in config.jobs[:index] if s.type == "characterize"]
            if spec.characterize is not None:
                which = f"no characterize job named {spec.characterize!r} before this one"
            else:
                which = (
                    "no characterize job before this one"
                    if not earlier
                    else "several characterize jobs before this one; name one in `characterize`"
                )
            listed = ", ".join(s.name for s in config.jobs if s.type == "characterize") or "none"
            issues.append(
                ConfigIssue(
                    ("characterize",),
                    f"{which} (characterize jobs in the config: {listed}); a sweep reads one listed before it",
                )
            )
            return issues
        char_models = selected(char, config, "models")
        for i, name in enumerate(_selected_models(spec, config, char)):
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
                        f"{name!r} is not characterized by job {char.name!r} (it characterizes {', '.join(char_models)})",
                    )
                )
        task = self.task_of(spec, config)
        used = CharacterizeJob.task_of(char, config)
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
        elif task == used:
            issues.append(
                ConfigIssue(
                    ("task",),
                    f"{task!r} is the task job {char.name!r} characterizes on; held-out samples must come from another task (e.g. its held-out split)",
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
        if (
            spec.method is not None
            and spec.method in config.methods
            and config.methods[spec.method].plugin != BLINDSIGHT
        ):
            issues.append(
                ConfigIssue(
                    ("method",),
                    f"{spec.method!r} uses plugin {config.methods[spec.method].plugin!r}; the sweep runs head maps under {BLINDSIGHT!r}",
                )
            )
        if spec.publish is not None:
            rest = spec.publish.replace("{model}", "")
            if "{" in rest or "}" in rest:
                issues.append(ConfigIssue(("publish",), "the only placeholder allowed is '{model}'"))
            elif len(_selected_models(spec, config, char)) > 1 and "{model}" not in spec.publish:
                issues.append(
                    ConfigIssue(
                        ("publish",),
                        "this job sweeps several models: put '{model}' in the path so each gets its own file",
                    )
                )
        return issues

    def expand(self, spec: TauSweepSpec, config: BenchmarkConfig) -> list[Unit]:
        char = self.characterize_spec(spec, config)
        assert char is not None  # check() ran
        task = self.task_of(spec, config)
        template = config.methods[spec.method].model_dump() if spec.method else None
        units = []
        for model in _selected_models(spec, config, char):
            char_unit = self._char_unit(char, config, model)
            fp = fingerprint(
                self.type,
                config.models[model].model_dump(),
                config.tasks[task].model_dump(),
                config.methods[spec.baseline].model_dump(),
                template,
                spec.max_new_tokens,
                char_unit.fingerprint,
                char.limit,
                char.delta,
                char.gamma,
            )
            units.append(
                Unit(job=spec.name, type=self.type, id=f"{spec.name}/{model}", model=model, task=task, fingerprint=fp)
            )
        return units

    @staticmethod
    def _char_unit(char: CharacterizeSpec, config: BenchmarkConfig, model: str) -> Unit:
        return next(u for u in CharacterizeJob().expand(char, config) if u.model == model)

    # ------------------------------------------------------------------------------------------ running

    def _characterization(
        self, spec: TauSweepSpec, unit: Unit, ctx: RunContext
    ) -> tuple[CharacterizeSpec, Unit, CharacterizationResult]:
        """The characterize unit's stored prompts for this model; it must have finished."""
        from bsight.harness.store import RunFolder

        char = self.characterize_spec(spec, ctx.config)
        assert char is not None and ctx.run_dir is not None
        char_unit = self._char_unit(char, ctx.config, unit.model)
        rows = RunFolder(ctx.run_dir).rows(char_unit, CharacterizeRow)
        setup = next((r.setup for r in rows if r.kind == "setup"), None)
        prompts = [r for r in rows if r.kind != "setup"][: char.limit]
        wanted = len(ctx.samples(char_unit.task, char.limit))
        if setup is None or len(prompts) < wanted:
            raise ValueError(
                f"unit {char_unit.id} holds {len(prompts)} of {wanted} characterized prompts: it must finish before {unit.id} (see its error above)"
            )
        return char, char_unit, summarize(char, setup, prompts).result

    def _blindsight(self, spec: TauSweepSpec, ctx: RunContext, head_map: HeadMap, info: ModelInfo) -> AttentionMethod:
        options = dict(ctx.config.methods[spec.method].options) if spec.method else {}
        options.pop("uniform", None)
        method = ctx.registry.get("method", BLINDSIGHT)({**options, "head_map": head_map})
        method.setup(info)
        return method

    def run_unit(self, spec: TauSweepSpec, unit: Unit, ctx: RunContext, rows: UnitRowSet[TauSweepRow]) -> None:
        adapter, task = ctx.model(unit.model), ctx.task(unit.task)
        info = adapter.info
        char, char_unit, result = self._characterization(spec, unit, ctx)
        samples = ctx.samples(unit.task, spec.limit)
        if any(s.id.startswith("#") for s in samples):
            raise ValueError(f"task {unit.task!r} has sample ids starting with '#', which this job reserves")
        taus = spec.taus
        ctx.expect(1 + len(taus) + len(samples) * (1 + len(taus)))
        max_new_tokens = spec.max_new_tokens or task.default_max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        check_budget([r.answer for r in rows if r.answer is not None], max_new_tokens, unit)
        stored = rows.rows.get(SETUP_KEY)
        if stored is None:
            medians, gain = nmse_structure(result)
            setup = SweepSetup(
                model=info,
                characterize_unit=char_unit.id,
                dataset=result.dataset,
                sink_policy=result.sink_policy,
                delta=char.delta,
                gamma=char.gamma,
                nmse_median=medians,
                sink_gain_heads=gain,
                heads=info.num_layers * info.num_heads,
            )
            rows.append(TauSweepRow(key=SETUP_KEY, kind="setup", setup=setup))
        elif stored.setup.model != info:
            raise ValueError(
                f"unit {unit.id}: stored rows come from {stored.setup.model.model_id} (revision {stored.setup.model.revision or '-'}), "
                f"the loaded model is {info.model_id} (revision {info.revision or '-'}); rerun with --fresh"
            )
        assert ctx.run_dir is not None
        folder = Path(HEADMAP_DIR) / unit.job
        head_maps: dict[float, HeadMap] = {}
        for tau in taus:
            hm = build_head_map(result, CharacterizationParams(tau=tau, delta=char.delta, gamma=char.gamma))
            file = folder / f"{unit.model}.tau{tau:g}.json"
            hm.save(ctx.run_dir / file)
            head_maps[tau] = hm
            if f"#{tau_key(tau)}" not in rows.done:
                (point,) = sweep(result, [tau], [char.delta], [char.gamma])
                rows.append(
                    TauSweepRow(
                        key=f"#{tau_key(tau)}", kind="tau", tau=tau, head_map=TauHeadMap(sweep=point, file=str(file))
                    )
                )
        baseline = ctx.method(spec.baseline)
        baseline.setup(info)
        methods = {tau: self._blindsight(spec, ctx, hm, info) for tau, hm in head_maps.items()}
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
        ctx.note(chosen_tau=chosen, files=files, headline=task.headline)

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
                f"sample {sample.id!r}: prepare() gave a batch of {len(prepared.layouts)}; the sweep takes one prompt at a time"
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
                f"sample {sample.id!r}: adapter {adapter.name!r} did not append the gold continuation after the prompt's tokens "
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
                pair_tables[policy] = layer_pair_table(LayoutMeta.build(lay.unpadded()), info.sliding_windows)
            answer = greedy_answer(
                adapter,
                method,
                task,
                sample,
                prepared,
                max_new_tokens,
                key=key,
                method_name=f"{BLINDSIGHT}@{tau_key(tau)}",
                **common,
            )
            lp = answer_log_probs(adapter, method, forced, n)
            kl = kl_per_position(base_lp, lp)
            fidelity = Fidelity(
                agrees=stats.agreement([answer.extracted], [dense.extracted]) == 1.0,
                kl_mean=float(kl.mean()),
                kl_max=float(kl.max()),
                top1_match=float((lp.argmax(-1) == base_lp.argmax(-1)).double().mean()),
                flops_reduction=float(reduction_from_pairs(pair_tables[policy], head_maps[tau].category_array())),
            )
            rows.append(TauSweepRow(key=key, kind="sample", tau=tau, answer=answer, answer_tokens=n, fidelity=fidelity))

    # ---------------------------------------------------------------------------------------- reporting

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
                    "agreement": float(np.mean([f.agrees for f in fid])) if fid else nan,
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
        used = _characterize_tau(run, setup.characterize_unit)
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
            units.append(u)
        if not units:
            return None
        return SectionData(context={"units": units, "categories": [c.label for c in Category]}, plots=plots)

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


def _characterize_tau(run: RunFolder, char_unit_id: str) -> float | None:
    """The tau of the characterize job this sweep read (the head map later jobs use), from the run's config."""
    job = char_unit_id.split("/", 1)[0]
    for entry in run.config_data().get("jobs", []):
        if entry.get("type") == "characterize" and entry.get("name") == job:
            return float(entry["tau"])
    return None


def pareto_plot(points: list[dict[str, Any]], rule: DefaultRule, model: str):
    """Two panels over the taus: FLOPs reduction vs answer agreement, and vs mean KL (log scale); the rule's
    thresholds dashed, the chosen tau starred."""
    fig = new_figure(width=8.0, height=3.2)
    left, right = fig.subplots(1, 2)
    pts = [p for p in points if p["n"]]
    x = [100 * p["flops_heldout"] for p in pts]
    panels = (
        (left, "agreement", lambda v: 100 * v, "answers equal to dense (%)", 100 * rule.min_agreement, False),
        (right, "kl_mean", lambda v: v, "mean KL(dense || blindsight), nats", rule.max_kl, True),
    )
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
        ax.axhline(threshold, color="0.5", linewidth=0.8, linestyle="--", label="rule threshold")
        ax.set_xlabel("mean attention FLOPs reduction (%)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    left.legend(frameon=False, fontsize=7, loc="lower left")
    fig.suptitle(f"{model}: one point per tau", fontsize=9)
    return fig
