"""The accuracy job's numbers from stored rows: headline (micro or macro), per-subtask breakdown, unparsed
counts, agreement with the baseline, the paired CI; and a real run that takes the task's headline and
generation budget."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ext_config, quiet, synthetic_accuracy_run

from bsight.harness import stats
from bsight.harness.config import parse_config
from bsight.harness.hookspecs import hookimpl
from bsight.harness.jobs.accuracy import AccuracyJob, AccuracyRow
from bsight.harness.plugins import load_registry
from bsight.harness.runner import execute
from bsight.harness.store import RunFolder

JOB = AccuracyJob()


def section(run: RunFolder) -> dict:
    records = run.manifest().units
    (table,) = JOB.report(run, records).context["tables"]
    return table


def by_method(table: dict) -> dict[str, dict]:
    return {m["method"]: m for m in table["methods"]}


# Six samples, gold "A"; subtask x has four, y two. Worked out by hand:
#   dense: correct T T F F | T F   answers A A B C | A None
#   fast:  correct T F F T | T T   answers A None C A | A A
SUBTASKS = ["x", "x", "x", "x", "y", "y"]
DENSE = [True, True, False, False, True, False]
FAST = [True, False, False, True, True, True]
ANSWERS = {"dense": ["A", "A", "B", "C", "A", None], "fast": ["A", None, "C", "A", "A", "A"]}


@pytest.mark.parametrize("headline", ["micro", "macro"])
def test_numbers_from_stored_rows(tmp_path, headline):
    run = synthetic_accuracy_run(
        tmp_path / headline, {"dense": DENSE, "fast": FAST}, ANSWERS, SUBTASKS, headline=headline
    )
    table = section(run)
    m = by_method(table)
    assert table["headline"] == headline
    if headline == "micro":
        assert m["dense"]["accuracy"] == pytest.approx(3 / 6) and m["fast"]["accuracy"] == pytest.approx(4 / 6)
        assert m["fast"]["delta"].delta == pytest.approx(1 / 6)
    else:  # mean of subtasks: dense (2/4 + 1/2) / 2, fast (2/4 + 2/2) / 2
        assert m["dense"]["accuracy"] == pytest.approx(0.5) and m["fast"]["accuracy"] == pytest.approx(0.75)
        assert m["fast"]["delta"].delta == pytest.approx(0.25)
    assert m["fast"]["micro_accuracy"] == pytest.approx(4 / 6)
    assert m["dense"]["unparsed"] == 1 and m["fast"]["unparsed"] == 1
    # agreement over pairs where both parsed: s0 A=A, s2 C/B, s3 A/C, s4 A=A -> 2 of 4 (s1 None/A and s5 A/None are
    # not agreements, nor disagreements: 2 of 6 pairs have an unparsed side); generations ("?" when unparsed) are
    # identical in s0 and s4 only
    assert m["fast"]["agreement"] == pytest.approx(2 / 4) and m["fast"]["paired_n"] == 6
    assert m["fast"]["parsed_pairs"] == 4 and m["fast"]["either_unparsed"] == pytest.approx(2 / 6)
    assert m["fast"]["exact_generation"] == pytest.approx(2 / 6)
    assert m["dense"]["delta"] is None and m["dense"]["is_baseline"]
    d = m["fast"]["delta"]
    assert d.lo <= d.delta <= d.hi and d.hi - d.lo > 0
    assert table["method_names"] == ["dense", "fast"]
    assert [(b["subtask"], b["cells"]) for b in table["breakdown"]] == [
        ("x", [(0.5, 4), (0.5, 4)]),
        ("y", [(0.5, 2), (1.0, 2)]),
    ]
    metrics = {x.name: x.value for x in JOB.metrics(run, run.manifest().units)}
    stem = "accuracy/m/t/fast"
    assert metrics[f"{stem}/accuracy"] == pytest.approx(m["fast"]["accuracy"])
    assert metrics[f"{stem}/delta"] == pytest.approx(d.delta)
    assert metrics[f"{stem}/agreement"] == pytest.approx(2 / 4)
    assert metrics[f"{stem}/either_unparsed"] == pytest.approx(2 / 6)
    assert metrics[f"{stem}/exact_generation"] == pytest.approx(2 / 6)
    assert metrics[f"{stem}/unparsed_rate"] == pytest.approx(1 / 6)


def test_macro_ci_resamples_within_subtasks(tmp_path):
    """Every x pair gains 1, every y pair is unchanged: each stratified resample has a macro change of exactly
    (1 + 0) / 2, so the macro CI is that point; the micro CI is not (resamples vary the share of x)."""
    rng = np.random.default_rng()
    nx, ny = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    same = list(rng.random(ny) < 0.5)
    base, meth = [False] * nx + same, [True] * nx + same
    groups = ["x"] * nx + ["y"] * ny
    macro = stats.paired_bootstrap(meth, base, resamples=500, seed=int(rng.integers(1 << 30)), groups=groups)
    assert (macro.delta, macro.lo, macro.hi) == (0.5, 0.5, 0.5)
    micro = stats.paired_bootstrap(meth, base, resamples=500, seed=int(rng.integers(1 << 30)))
    assert micro.delta == pytest.approx(nx / (nx + ny)) and micro.lo < micro.delta < micro.hi
    run = synthetic_accuracy_run(tmp_path / "r", {"dense": base, "fast": meth}, subtasks=groups, headline="macro")
    d = by_method(section(run))["fast"]["delta"]
    assert (d.delta, d.lo, d.hi) == (0.5, 0.5, 0.5)


def test_bootstrap_intervals_match_the_normal_approximation():
    """With a few hundred pairs the percentile bootstrap agrees with delta +- z * standard error: micro
    se = sd(diff) / sqrt(n); macro (stratified) se = sqrt(sum_g var_g / n_g) / G."""
    rng = np.random.default_rng()
    sizes = [int(rng.integers(150, 300)) for _ in range(3)]
    groups = [g for g, n in zip("abc", sizes) for _ in range(n)]
    base = rng.random(len(groups)) < 0.6
    meth = np.where(rng.random(len(groups)) < 0.7, base, ~base)
    diff = meth.astype(float) - base
    z = 1.959964
    micro = stats.paired_bootstrap(meth, base, resamples=4000, seed=int(rng.integers(1 << 30)))
    se = diff.std() / np.sqrt(diff.size)
    assert micro.delta == pytest.approx(diff.mean())
    assert micro.lo == pytest.approx(diff.mean() - z * se, abs=0.2 * z * se)
    assert micro.hi == pytest.approx(diff.mean() + z * se, abs=0.2 * z * se)
    labels = np.array(groups)
    parts = [diff[labels == g] for g in "abc"]
    macro_delta = np.mean([p.mean() for p in parts])
    se = np.sqrt(sum(p.var() / p.size for p in parts)) / len(parts)
    macro = stats.paired_bootstrap(meth, base, resamples=4000, seed=int(rng.integers(1 << 30)), groups=groups)
    assert macro.delta == pytest.approx(macro_delta)
    assert macro.delta == pytest.approx(stats.macro_accuracy(groups, meth) - stats.macro_accuracy(groups, base))
    assert macro.lo == pytest.approx(macro_delta - z * se, abs=0.2 * z * se)
    assert macro.hi == pytest.approx(macro_delta + z * se, abs=0.2 * z * se)


def test_headline_validation():
    with pytest.raises(ValueError, match="headline must be 'micro' or 'macro'"):
        stats.headline_accuracy("mean", ["a"], [True])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 group labels for 3 paired samples"):
        stats.paired_bootstrap([True] * 3, [False] * 3, groups=["a", "b"])


def _task_plugin(headline: str, budget: int | None) -> object:
    from bsight_tinyext.task import BrightestImage

    class Declared(BrightestImage):
        name = "brightest-declared"

    Declared.headline, Declared.default_max_new_tokens = headline, budget

    class Plugin:
        @hookimpl
        def bsight_tasks(self):
            return [Declared]

    return Plugin()


def test_run_takes_headline_and_budget_from_the_task(ext_registry, tmp_path, single_thread):
    def run(budget: int | None, job_tokens: int | None, name: str, limit: int = 3):
        registry = load_registry(extra={"declared": _task_plugin("macro", budget)})
        data = ext_config(tmp_path, name=name, n=4, limit=limit)
        data["tasks"]["bright"]["plugin"] = "brightest-declared"
        data["jobs"][0]["max_new_tokens"] = job_tokens
        data["methods"].pop("sw")
        return execute(parse_config(data, registry), registry, tmp_path / name, console=quiet())

    out = run(budget=3, job_tokens=None, name="a")
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    (rec,) = folder.manifest().units
    rows = folder.rows(rec.unit, AccuracyRow)
    assert {r.max_new_tokens for r in rows} == {3} and rec.info == {
        "headline": "macro",
        "max_new_tokens": 3,
        "protocol": "bsight",
        "decoding": "greedy",
    }
    # each row: the protocol, greedy, the prompt's text hash and its length. The example task's prompt text depends
    # only on its number of images (the subtask; pixels are not text): equal text, equal hash
    assert {r.protocol for r in rows} == {"bsight"} and {r.sampling_seed for r in rows} == {None}
    assert all(len(r.prompt_sha256) == 64 for r in rows)
    assert all((a.prompt_sha256 == b.prompt_sha256) == (a.subtask == b.subtask) for a in rows for b in rows)
    assert len({r.subtask for r in rows}) > 1
    assert all(r.prompt_tokens > 0 for r in rows)
    table = section(folder)
    assert table["headline"] == "macro" and (table["protocol"], table["decoding"]) == ("bsight", "greedy")
    assert by_method(table)["dense"]["accuracy"] == pytest.approx(
        stats.macro_accuracy([r.subtask for r in rows], [r.correct for r in rows])
    )

    assert not run(budget=3, job_tokens=1, name="b").failed  # the job's own setting wins
    b = RunFolder.open(tmp_path / "b")
    assert {r.max_new_tokens for r in b.rows(b.manifest().units[0].unit, AccuracyRow)} == {1}

    # the task's default changed under stored rows (same fingerprint) and more samples are asked for: the
    # unit refuses to mix budgets
    again = run(budget=5, job_tokens=None, name="a", limit=4)
    assert again.failed == [rec.unit.id]
    assert (
        "generated with max_new_tokens=[3] but this session uses 5"
        in RunFolder.open(out.run_dir).manifest().units[0].error
    )


def test_two_unparsed_answers_are_not_an_agreement(tmp_path):
    """A method whose every answer is unparsed, like its baseline's, shows no agreement (not 100%): the agreement
    is over parsed pairs (none here) and every pair has an unparsed side."""
    none = [None] * 6
    run = synthetic_accuracy_run(
        tmp_path, {"dense": [False] * 6, "fast": [False] * 6}, {"dense": none, "fast": none}, SUBTASKS
    )
    table = section(run)
    fast = by_method(table)["fast"]
    assert fast["parsed_pairs"] == 0 and fast["either_unparsed"] == 1.0
    assert fast["agreement"] != fast["agreement"]  # nan: no parsed pair
    metrics = {x.name for x in JOB.metrics(run, run.manifest().units)}
    assert "accuracy/m/t/fast/agreement" not in metrics and "accuracy/m/t/fast/either_unparsed" in metrics
    from bsight.harness.report import render_report

    _, md = render_report(run.root, [JOB])
    text = md.read_text()
    assert "either unparsed" in text and "| – (n=0) | 100.0% |" in text  # blank agreement, all pairs unparsed
