"""The regression gate cannot pass by accident: distinct exit codes (0 no regression, 1 regression, 2 bad input,
3 error or incomplete), no NaN or infinite threshold, no silent pass on failed units, missing metrics or a
different config. Before the fix each test here got 0 (or 1 for a crash) instead."""

from __future__ import annotations

import errno
import json

import pytest
from conftest import synthetic_accuracy_run

from bsight.harness import compare as compare_module
from bsight.harness.cli import main
from bsight.harness.compare import compare_runs

SAME = [True] * 6 + [False] * 4
WORSE = [True] * 2 + [False] * 8


@pytest.fixture
def runs(tmp_path):
    a = synthetic_accuracy_run(tmp_path / "a", {"dense": SAME, "fast": SAME})
    b = synthetic_accuracy_run(tmp_path / "b", {"dense": SAME, "fast": SAME})
    return a.root, b.root


def test_failed_unit_in_b_exits_3(runs):
    a, b = runs
    manifest = json.loads((b / "units.json").read_text())
    manifest["units"][1]["status"] = "failed"
    (b / "units.json").write_text(json.dumps(manifest))
    assert main(["compare", str(a), str(b)]) == 3


def test_incomplete_unit_in_b_exits_3(runs):
    a, b = runs
    manifest = json.loads((b / "units.json").read_text())
    manifest["units"][1]["rows"] = 3  # the report would show 3 / 10
    (b / "units.json").write_text(json.dumps(manifest))
    assert main(["compare", str(a), str(b)]) == 3


def test_metric_of_a_missing_in_b_exits_3(runs, tmp_path):
    a, _ = runs
    only_dense = synthetic_accuracy_run(tmp_path / "d", {"dense": SAME}).root
    # even with the config change allowed, the metrics of the missing method are not vouched for
    assert main(["compare", str(a), str(only_dense), "--allow-config-change"]) == 3
    cmp = compare_runs(compare_module.RunFolder.open(a), compare_module.RunFolder.open(only_dense))
    assert any("missing in RUN_B" in p for p in cmp.problems)


def test_different_configs_exit_3_unless_allowed(runs, tmp_path):
    a, _ = runs
    other = synthetic_accuracy_run(tmp_path / "s", {"dense": SAME, "fast": SAME}, seed=7).root
    assert main(["compare", str(a), str(other)]) == 3
    assert main(["compare", str(a), str(other), "--allow-config-change"]) == 0
    worse = synthetic_accuracy_run(tmp_path / "w", {"dense": SAME, "fast": WORSE}, seed=7).root
    assert main(["compare", str(a), str(worse), "--allow-config-change"]) == 1  # a regression stays 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5"])
@pytest.mark.parametrize("flag", ["--threshold", "--rel-threshold"])
def test_nan_and_infinite_thresholds_are_bad_input(runs, flag, value, capsys):
    a, b = runs
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(a), str(b), f"{flag}={value}"])
    assert exc.value.code == 2
    assert "finite" in capsys.readouterr().err


def test_api_rejects_a_nan_threshold(runs):
    a, b = (compare_module.RunFolder.open(p) for p in runs)
    with pytest.raises(ValueError, match="finite"):
        compare_runs(a, b, threshold=float("nan"))


def test_a_crash_exits_3_not_1(runs, monkeypatch):
    a, b = runs

    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(compare_module, "compare_runs", boom)
    assert main(["compare", str(a), str(b)]) == 3


def test_unwritable_output_is_one_line_and_exit_3(runs, monkeypatch, capsys):
    a, b = runs

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(b / "compare.json"))

    monkeypatch.setattr(compare_module, "render_comparison", read_only)
    assert main(["compare", str(a), str(b)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"bsight: error: Read-only file system: {b / 'compare.json'}"
    ]
