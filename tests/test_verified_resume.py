"""Resume trusts the result files, not ``units.json``: every corruption of a finished run's files is repaired
(missing samples redone) or reported and excluded, and ``bsight run`` exits non-zero while a unit is incomplete.

Each test corrupts a finished run the way issue 19 found it broken; on the code before the fix each of them
fails (the run redid nothing, or counted a foreign row)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import ext_config, quiet, write_yaml
from rich.console import Console

from bsight.harness.cli import main
from bsight.harness.config import parse_config
from bsight.harness.jobs.accuracy import AccuracyJob, AccuracyRow
from bsight.harness.runner import execute
from bsight.harness.store import RunFolder

pytestmark = pytest.mark.usefixtures("single_thread")

N = 4


def run(registry, root: Path, console: Console | None = None, **kw):
    config = parse_config(ext_config(root, name="v", n=N, max_new_tokens=2, **kw), registry)
    return execute(config, registry, root / "v", console=console or quiet())


def unit_file(run_dir: Path, method: str) -> Path:
    (path,) = (run_dir / "results" / "accuracy").glob(f"tiny__{method}__bright.*.jsonl")
    return path


def keys_of(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def record(run_dir: Path, method: str):
    return next(r for r in RunFolder.open(run_dir).manifest().units if r.unit.method == method)


def expected_keys() -> list[str]:
    return [f"b{i:04d}" for i in range(N)]


@pytest.fixture
def finished(ext_registry, tmp_path) -> Path:
    out = run(ext_registry, tmp_path)
    assert not out.failed and out.rows_written == 2 * N
    return out.run_dir


def test_deleted_unit_file_is_redone(ext_registry, finished, tmp_path):
    unit_file(finished, "sw").unlink()
    out = run(ext_registry, tmp_path)
    assert out.rows_written == N and not out.incomplete
    assert keys_of(unit_file(finished, "sw")) == expected_keys()
    rec = record(finished, "sw")
    assert (rec.status, rec.rows, rec.expected) == ("done", N, N)


def test_truncated_unit_file_redoes_the_missing_samples(ext_registry, finished, tmp_path):
    path = unit_file(finished, "dense")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1]))
    out = run(ext_registry, tmp_path)
    assert out.rows_written == N - 1
    assert sorted(keys_of(path)) == expected_keys()
    assert record(finished, "dense").rows == N


def test_torn_last_line_of_a_done_unit_is_cut_and_its_sample_redone(ext_registry, finished, tmp_path):
    path = unit_file(finished, "dense")
    data = path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last + (len(data) - last) // 2])  # a kill in the middle of the last row
    out = run(ext_registry, tmp_path)
    assert out.rows_written == 1
    assert keys_of(path) == expected_keys()


def test_unparseable_middle_line_is_set_aside_and_redone(ext_registry, finished, tmp_path):
    path = unit_file(finished, "dense")
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = '{"key": "b0001", "garbage": true}\n'
    path.write_text("".join(lines))
    out = run(ext_registry, tmp_path)
    assert out.rows_written == 1 and not out.failed
    assert sorted(keys_of(path)) == expected_keys()
    assert "garbage" in path.with_name(path.name + ".rejected").read_text()


def test_foreign_row_is_reported_and_never_counted(ext_registry, finished, tmp_path):
    path = unit_file(finished, "dense")
    row = json.loads(path.read_text().splitlines()[0])
    row["key"] = row["sample_id"] = "intruder"
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    text = io.StringIO()
    out = run(ext_registry, tmp_path, console=Console(file=text, width=300))
    assert out.rows_written == 0
    assert "intruder" in text.getvalue()  # reported
    folder = RunFolder.open(finished)
    rec = record(finished, "dense")
    assert rec.rows == N
    assert [r.key for r in folder.rows(rec.unit, AccuracyRow)] == expected_keys()
    assert f"{N + 1} / {N}" not in (finished / "report.md").read_text()


def test_row_of_another_unit_is_not_counted_and_its_sample_redone(ext_registry, finished, tmp_path):
    dense, sw = unit_file(finished, "dense"), unit_file(finished, "sw")
    dense_lines, sw_lines = dense.read_text().splitlines(keepends=True), sw.read_text().splitlines(keepends=True)
    sw_lines[2] = dense_lines[2]  # the dense row of b0002 pasted into the sink-window unit's file
    sw.write_text("".join(sw_lines))
    out = run(ext_registry, tmp_path)
    assert out.rows_written == 1
    rows = RunFolder.open(finished).rows(record(finished, "sw").unit, AccuracyRow)
    assert sorted(r.key for r in rows) == expected_keys() and {r.method for r in rows} == {"sw"}


def test_repeated_row_is_reported_and_set_aside(ext_registry, finished, tmp_path):
    path = unit_file(finished, "dense")
    first = path.read_text().splitlines(keepends=True)[0]
    with open(path, "a") as f:
        f.write(first)
    text = io.StringIO()
    out = run(ext_registry, tmp_path, console=Console(file=text, width=300))
    assert out.rows_written == 0
    assert "repeated" in text.getvalue()
    assert keys_of(path) == expected_keys()
    assert path.with_name(path.name + ".rejected").read_text() == first


def test_run_exits_non_zero_while_a_unit_is_incomplete(ext_registry, tmp_path, monkeypatch):
    """A unit that ends 'done' with fewer rows than it expects shows as incomplete in the report: exit 1."""
    original = AccuracyJob.run_unit

    def short(self, spec, unit, ctx, rows):
        original(self, spec, unit, ctx, rows)
        ctx.expect(N + 1)  # one row the job never writes

    monkeypatch.setattr(AccuracyJob, "run_unit", short)
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="short", n=N, max_new_tokens=2))
    assert main(["run", str(cfg)]) == 1
    monkeypatch.setattr(AccuracyJob, "run_unit", original)
    assert main(["run", str(cfg)]) == 0  # expected back to N: complete
