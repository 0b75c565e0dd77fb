"""Generating, extracting and scoring one answer: a library of the job types that ask a model questions
(``accuracy``, ``tau_sweep``), not a job type. :class:`AnswerRow` is the row both store per answer."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from bsight.harness.interfaces import Sampling
from bsight.harness.jobtypes import ResultRow, Unit
from bsight.harness.prompts_cmd import prompt_record

if TYPE_CHECKING:
    from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Prepared, Sample, Task
    from bsight.harness.store import RunFolder

DEFAULT_MAX_NEW_TOKENS = 16  # for tasks that declare no default_max_new_tokens
Headline = Literal["micro", "macro"]


class AccuracyRow(ResultRow):
    """One generated answer. ``key`` is the sample id."""

    sample_id: str
    task: str
    subtask: str
    model: str
    method: str
    weights: Literal["trained", "random"]
    prompt_tokens: int
    generation: str
    extracted: str | None
    rule: str
    gold: str
    correct: bool
    prefill_s: float
    total_s: float
    overhead_ms: dict[str, float]
    max_new_tokens: int | None = None  # the generation budget used (None in rows of older runs)
    protocol: str | None = None  # the task's scoring protocol (None in rows of older runs)
    prompt_sha256: str | None = None  # SHA-256 of the decoded model input (images collapsed; see prompts_cmd)
    sampling_seed: int | None = None  # the seed of a sampling protocol's generation; None: greedy


def run_seed(run: RunFolder) -> int:
    """The run's seed, which also seeds the bootstrap so a re-rendered report shows the same CIs."""
    return int(run.config_data().get("run", {}).get("seed", 0))


def greedy_answer(
    adapter: ModelAdapter,
    method: AttentionMethod,
    task: Task,
    sample: Sample,
    prepared: Prepared,
    max_new_tokens: int,
    *,
    key: str,
    model: str,
    method_name: str,
    task_name: str,
    sampling: Sampling | None = None,
) -> AccuracyRow:
    """Greedy generation under ``method`` (seeded sampling with ``sampling``), extracted and scored by the task:
    one accuracy row (also the tau sweep's answers)."""
    prompt = prompt_record(adapter, sample, prepared)
    method.overhead.take()  # count only this sample's overhead
    if sampling is None:
        gen = adapter.generate(prepared, method, max_new_tokens)
    else:  # an adapter without sampling fails here with a TypeError: never silently greedy
        gen = adapter.generate(prepared, method, max_new_tokens, sampling=sampling)
    extraction = task.extract(gen.text, sample)
    return AccuracyRow(
        key=key,
        sample_id=sample.id,
        task=task_name,
        subtask=sample.subtask,
        model=model,
        method=method_name,
        weights=adapter.info.weights,
        prompt_tokens=gen.prompt_tokens,
        generation=gen.text,
        extracted=extraction.answer,
        rule=extraction.rule,
        gold=sample.answer,
        correct=bool(task.score(extraction, sample)),
        prefill_s=gen.prefill_s,
        total_s=gen.total_s,
        overhead_ms=method.overhead.take(),
        max_new_tokens=max_new_tokens,
        protocol=task.protocol,
        prompt_sha256=prompt.sha256,
        sampling_seed=None if sampling is None else sampling.seed,
    )


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The sampling seed of one sample: the same for every method and on every rank or resume."""
    return int.from_bytes(hashlib.sha256(f"{run_seed}\0{sample_id}".encode()).digest()[:4], "big")


def check_budget(rows: Iterable[AccuracyRow], max_new_tokens: int, unit: Unit) -> None:
    """Refuse to extend rows generated with another budget (the task's default changed since): a unit's rows
    must all answer under the same conditions."""
    used = sorted(
        {r.max_new_tokens for r in rows if r.max_new_tokens is not None and r.max_new_tokens != max_new_tokens}
    )
    if used:
        raise ValueError(
            f"unit {unit.id}: stored rows were generated with max_new_tokens={used} but this session uses "
            f"{max_new_tokens}; "
            "set max_new_tokens in the job to the stored value, or rerun with --fresh"
        )
