"""Comparing runs: per-metric deltas, regressions beyond the threshold flagged, exit status for nightly jobs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import synthetic_accuracy_run

from bsight.harness.cli import main
from bsight.harness.compare import Comparison, collect_metrics, compare_runs, judge
from bsight.harness.jobtypes import Metric


def outcomes(n: int, correct: int) -> list[bool]:
    rng = np.random.default_rng()
    out = np.zeros(n, bool)
    out[rng.choice(n, correct, replace=False)] = True
    return list(out)


@pytest.fixture
def pair(tmp_path):
    """Run A and run B: the method loses 6 of 50 correct answers in B, dense stays."""
    dense = outcomes(50, 30)
    a = synthetic_accuracy_run(tmp_path / "a", {"dense": dense, "fast": outcomes(50, 28)})
    b = synthetic_accuracy_run(tmp_path / "b", {"dense": dense, "fast": outcomes(50, 22)})
    return a, b


def test_metrics_of_an_accuracy_run(pair):
    a, _ = pair
    m = collect_metrics(a)
    assert m["accuracy/m/t/fast/accuracy"].value == pytest.approx(28 / 50)
    assert m["accuracy/m/t/dense/accuracy"].higher_is_better
    assert not m["accuracy/m/t/fast/unparsed_rate"].higher_is_better
    assert "accuracy/m/t/fast/agreement" in m and "accuracy/m/t/dense/agreement" not in m


def test_compare_flags_the_drop(pair):
    a, b = pair
    cmp = compare_runs(a, b, threshold=0.05)
    flagged = {c.name for c in cmp.regressions}
    assert "accuracy/m/t/fast/accuracy" in flagged and "accuracy/m/t/dense/accuracy" not in flagged
    change = next(c for c in cmp.changes if c.name == "accuracy/m/t/fast/accuracy")
    assert change.delta == pytest.approx(-6 / 50)
    assert "accuracy/m/t/fast/accuracy" not in {c.name for c in compare_runs(a, b, threshold=0.2).regressions}


def test_cli_exit_status_and_files(pair, tmp_path, capsys):
    a, b = pair
    assert main(["compare", str(a.root), str(b.root), "--threshold", "0.05", "--out", str(tmp_path / "cmp")]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION accuracy/m/t/fast/accuracy: 0.56 -> 0.44" in out
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert re.search(r'<tr class="regression">\s*<td class="l"><code>accuracy/m/t/fast/accuracy</code>', html)
    assert "REGRESSION" in (tmp_path / "cmp" / "compare.md").read_text()
    saved = Comparison.model_validate_json((tmp_path / "cmp" / "compare.json").read_text())
    assert "accuracy/m/t/fast/accuracy" in {c.name for c in saved.regressions}
    assert main(["compare", str(a.root), str(a.root)]) == 0  # a run against itself: nothing moves
    assert (a.root / "compare.html").is_file()


def test_bad_threshold_is_a_usage_error(pair, capsys):
    a, b = pair
    with pytest.raises(SystemExit) as e:
        main(["compare", str(a.root), str(b.root), "--threshold", "-1"])
    assert e.value.code == 2 and "must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("a", "b", "higher", "relative", "regression", "improvement"),
    [
        (0.60, 0.57, True, False, True, False),  # accuracy down 3 points > 2
        (0.60, 0.59, True, False, False, False),  # within threshold
        (0.60, 0.65, True, False, False, True),
        (0.10, 0.13, False, False, True, False),  # unparsed rate up
        (100.0, 112.0, False, True, True, False),  # 12% slower > 10%
        (100.0, 105.0, False, True, False, False),
        (100.0, 80.0, False, True, False, True),
        (
            0.0,
            1.0,
            False,
            True,
            True,
            False,
        ),  # from zero: any increase of a lower-is-better is beyond any relative threshold
    ],
)
def test_judge(a, b, higher, relative, regression, improvement):
    ma = Metric(name="x", value=a, higher_is_better=higher, relative=relative)
    mb = ma.model_copy(update={"value": b})
    c = judge("x", ma, mb, threshold=0.02, rel_threshold=0.10)
    assert (c.regression, c.improvement) == (regression, improvement)
    assert c.delta == pytest.approx(b - a)
