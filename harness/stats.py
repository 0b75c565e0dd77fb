"""Accuracy statistics for comparing a method with the dense baseline on the same samples.

Methods are judged by paired differences: each sample is answered by both, so the spread of
``correct_method - correct_dense`` over resampled sample sets (paired bootstrap) gives the confidence interval
of the accuracy change, much tighter than comparing two independent accuracies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class PairedDelta:
    """Accuracy change method - baseline over ``n`` shared samples, with a bootstrap CI."""

    delta: float
    lo: float
    hi: float
    n: int
    confidence: float


def accuracy(correct: Sequence[bool]) -> float:
    """Share of correct answers; NaN for no samples (a report shows it as missing, never as 0)."""
    return float(np.mean(np.asarray(correct, dtype=float))) if len(correct) else float("nan")


def paired_bootstrap(
    method: Sequence[bool],
    baseline: Sequence[bool],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> PairedDelta:
    """Percentile bootstrap CI of the accuracy change method - baseline, resampling samples (pairs) with
    replacement.

    ``method[i]`` and ``baseline[i]`` must belong to the same sample. Without ``groups`` the change is the
    micro one, mean(method - baseline). With ``groups`` (each sample's subtask) it is the macro change, the
    mean over subtasks of each subtask's change: every resample draws each subtask's own samples again
    (stratified), so the macro average keeps its fixed set of subtasks and the delta is recomputed from the
    same resampled pairs for both methods. Seeded, so a report renders the same CI every time.
    """
    m = np.asarray(method, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if m.shape != b.shape or m.ndim != 1:
        raise ValueError(f"paired samples must be two equal-length 1-D sequences, got {m.shape} and {b.shape}")
    if groups is not None and len(groups) != m.size:
        raise ValueError(f"{len(groups)} group labels for {m.size} paired samples")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = m.size
    if n == 0:
        nan = float("nan")
        return PairedDelta(nan, nan, nan, 0, confidence)
    diff = m - b
    rng = np.random.default_rng(seed)
    if groups is None:
        delta, means = float(diff.mean()), _resampled_means(diff, resamples, rng)
    else:
        labels = np.asarray(groups, dtype=object)
        parts = [diff[labels == g] for g in sorted(set(groups))]
        delta = float(np.mean([p.mean() for p in parts]))
        means = np.mean([_resampled_means(p, resamples, rng) for p in parts], axis=0)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return PairedDelta(delta, float(lo), float(hi), n, confidence)


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of ``values`` (same size, with replacement)."""
    n = values.size
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // n)  # bound memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def agreement(answers: Sequence[str | None], baseline: Sequence[str | None]) -> float:
    """Share of samples where the method's extracted answer equals the baseline's (both unparsed counts as
    agreeing: the method reproduced the baseline's behaviour)."""
    if len(answers) != len(baseline):
        raise ValueError(f"{len(answers)} answers vs {len(baseline)} baseline answers")
    if not answers:
        return float("nan")
    return float(np.mean([_norm(a) == _norm(b) for a, b in zip(answers, baseline)]))


def _norm(answer: str | None) -> str | None:
    return None if answer is None else answer.strip().lower()


@dataclass(frozen=True)
class Agreement:
    """Answers of a method vs the baseline's, on paired samples. ``rate`` is over the pairs where both answers
    parsed (two unparsed answers are not an agreement; nan when no pair parsed); ``either_unparsed`` is the share
    of all pairs where one side or both could not be parsed; ``exact_generation`` the share of pairs whose raw
    generations are identical."""

    rate: float
    parsed_pairs: int
    either_unparsed: float
    exact_generation: float
    pairs: int


def answer_agreement(
    answers: Sequence[str | None],
    baseline: Sequence[str | None],
    generations: Sequence[str],
    baseline_generations: Sequence[str],
) -> Agreement:
    """Honest agreement with the baseline (DESIGN.md section 5): see :class:`Agreement`."""
    n = len(answers)
    if not (len(baseline) == len(generations) == len(baseline_generations) == n):
        raise ValueError(
            f"lengths differ: {n} answers, {len(baseline)} baseline answers, {len(generations)} generations, "
            f"{len(baseline_generations)} baseline generations"
        )
    if not n:
        return Agreement(float("nan"), 0, float("nan"), float("nan"), 0)
    parsed = [(a, b) for a, b in zip(answers, baseline) if a is not None and b is not None]
    rate = float(np.mean([_norm(a) == _norm(b) for a, b in parsed])) if parsed else float("nan")
    return Agreement(
        rate=rate,
        parsed_pairs=len(parsed),
        either_unparsed=(n - len(parsed)) / n,
        exact_generation=float(np.mean([g == h for g, h in zip(generations, baseline_generations)])),
        pairs=n,
    )


def unparsed(answers: Sequence[str | None]) -> int:
    """How many generations the extractor could not turn into an answer."""
    return sum(a is None for a in answers)


def by_group(groups: Sequence[str], correct: Sequence[bool]) -> dict[str, tuple[float, int]]:
    """Accuracy and count per group label (per-subtask breakdown), groups in sorted order."""
    acc: dict[str, list[bool]] = {}
    for g, c in zip(groups, correct, strict=True):
        acc.setdefault(g, []).append(bool(c))
    return {g: (accuracy(v), len(v)) for g, v in sorted(acc.items())}


def macro_accuracy(groups: Sequence[str], correct: Sequence[bool]) -> float:
    """Mean of per-group accuracies: the headline of benchmarks that weigh every subtask equally (MMIU,
    BLINK); NaN for no samples."""
    per = by_group(groups, correct)
    return float(np.mean([acc for acc, _ in per.values()])) if per else float("nan")


def headline_accuracy(kind: Literal["micro", "macro"], groups: Sequence[str], correct: Sequence[bool]) -> float:
    """A task's overall score as upstream reports it: ``micro`` over samples, ``macro`` over subtasks."""
    if kind == "macro":
        return macro_accuracy(groups, correct)
    if kind == "micro":
        return accuracy(correct)
    raise ValueError(f"headline must be 'micro' or 'macro', got {kind!r}")


def paired(rows: Mapping[str, object], baseline: Mapping[str, object]) -> list[str]:
    """Keys present in both result sets, in the method's order: the samples a paired statistic may use."""
    return [k for k in rows if k in baseline]


def score_interval(
    correct: Sequence[bool],
    groups: Sequence[str] | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDelta:
    """Percentile bootstrap CI of a headline score itself (micro: over samples; with ``groups``, the macro
    score, each subtask's samples resampled within it): the paired bootstrap against an all-wrong baseline,
    whose change is the score. Seeded like :func:`paired_bootstrap`."""
    return paired_bootstrap(correct, [False] * len(correct), resamples, confidence, seed, groups)
