"""Accuracy statistics: paired bootstrap CI, agreement, unparsed counts, per-subtask breakdown."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bsight.harness import stats


def test_accuracy():
    rng = np.random.default_rng()
    c = rng.random(101) < 0.4
    assert stats.accuracy(list(c)) == pytest.approx(c.mean())
    assert math.isnan(stats.accuracy([]))


def test_bootstrap_is_seeded_and_brackets_the_delta():
    rng = np.random.default_rng()
    m, b = rng.random(300) < 0.55, rng.random(300) < 0.5
    d1 = stats.paired_bootstrap(m, b, resamples=1000, seed=7)
    d2 = stats.paired_bootstrap(m, b, resamples=1000, seed=7)
    assert d1 == d2 and d1.n == 300
    assert d1.delta == pytest.approx(m.mean() - b.mean())
    assert d1.lo <= d1.delta <= d1.hi


def test_bootstrap_width_matches_the_normal_approximation():
    rng = np.random.default_rng()
    n = 400
    b = rng.random(n) < 0.6
    m = np.where(rng.random(n) < 0.2, ~b, b)  # the method flips 20% of the baseline's outcomes
    diff = m.astype(float) - b.astype(float)
    d = stats.paired_bootstrap(m, b, resamples=4000, confidence=0.95, seed=int(rng.integers(1 << 30)))
    expected = 2 * 1.96 * diff.std(ddof=1) / math.sqrt(n)
    assert d.hi - d.lo == pytest.approx(expected, rel=0.15)


def test_pairing_makes_identical_answers_exact():
    rng = np.random.default_rng()
    b = rng.random(50) < 0.5
    d = stats.paired_bootstrap(b, b, resamples=200)
    assert (d.delta, d.lo, d.hi) == (0.0, 0.0, 0.0)
    d = stats.paired_bootstrap(np.ones(20, bool), np.zeros(20, bool), resamples=200)
    assert (d.delta, d.lo, d.hi) == (1.0, 1.0, 1.0)


def test_bootstrap_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng()
    m, b = rng.random(64) < 0.5, rng.random(64) < 0.5
    # resamples beyond one chunk of 4e6 / n indices exercise the chunked path; compare with a hand loop
    d = stats.paired_bootstrap(m, b, resamples=70_000, seed=3)
    gen = np.random.default_rng(3)
    diff = m.astype(float) - b.astype(float)
    chunk = 4_000_000 // 64
    means = np.concatenate(
        [diff[gen.integers(0, 64, size=(min(chunk, 70_000 - s), 64))].mean(1) for s in range(0, 70_000, chunk)]
    )
    assert (d.lo, d.hi) == tuple(np.quantile(means, [0.025, 0.975]))


def test_bootstrap_input_checks():
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_bootstrap([True], [True, False])
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_bootstrap([True], [True], confidence=1.0)
    assert stats.paired_bootstrap([], []).n == 0


def test_agreement_and_unparsed():
    a = ["A", "b", None, "C", None]
    b = ["a", "B", None, "D", "A"]
    assert stats.agreement(a, b) == pytest.approx(3 / 5)  # case-insensitive; both unparsed agree
    assert stats.unparsed(a) == 2
    with pytest.raises(ValueError):
        stats.agreement(a, b[:-1])


def test_by_group():
    rng = np.random.default_rng()
    groups = list(rng.choice(["x", "y", "z"], size=60))
    correct = list(rng.random(60) < 0.5)
    out = stats.by_group(groups, correct)
    assert list(out) == sorted(set(groups))
    for g, (acc, n) in out.items():
        sel = [c for gg, c in zip(groups, correct) if gg == g]
        assert n == len(sel) and acc == pytest.approx(np.mean(sel))


def test_paired_keeps_shared_keys_in_method_order():
    assert stats.paired({"c": 1, "a": 1, "b": 1}, {"a": 0, "c": 0}) == ["c", "a"]
