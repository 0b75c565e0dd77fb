"""Kill a real run, run it again: finished samples are kept, none is redone, duplicated or lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import env_with, ext_config, kill_run_when, quiet, write_yaml

from bsight.harness.cli import main
from bsight.harness.config import parse_config
from bsight.harness.jobs.accuracy import AccuracyRow
from bsight.harness.runner import execute
from bsight.harness.store import RunFolder, UnitRows

pytestmark = pytest.mark.usefixtures("single_thread")

N = 60


def complete_rows(run_dir: Path) -> dict[Path, bytes]:
    """Each unit file's complete lines (what a kill leaves durable)."""
    out = {}
    for path in sorted((run_dir / "results").rglob("*.jsonl")):
        data = path.read_bytes()
        out[path] = data[: data.rfind(b"\n") + 1]
    return out


def check_complete(run_dir: Path, n: int) -> None:
    for path in (run_dir / "results").rglob("*.jsonl"):
        lines = path.read_text().splitlines()
        keys = [json.loads(line)["key"] for line in lines]
        assert len(keys) == len(set(keys)) == n, (path, len(keys), len(set(keys)))
        assert set(keys) == {f"b{i:04d}" for i in range(n)}


def test_kill_and_resume(ext_paths, ext_registry, tmp_path):
    cfg = write_yaml(tmp_path / "ext.yaml", ext_config(tmp_path / "runs", name="killed", n=N, max_new_tokens=4))
    run_dir = tmp_path / "runs" / "killed"
    ready = lambda: (run_dir / "results").exists() and sum(p.count(b"\n") for p in complete_rows(run_dir).values()) >= 5  # noqa: E731
    kill_run_when(cfg, env_with(ext_paths), ready)
    before = complete_rows(run_dir)
    n_before = sum(b.count(b"\n") for b in before.values())
    assert 5 <= n_before < 2 * N

    assert main(["run", str(cfg)]) == 0
    after = complete_rows(run_dir)
    check_complete(run_dir, N)
    for path, old in before.items():
        assert after[path].startswith(old)  # rows written before the kill are kept as they were, not redone
    prov = RunFolder.open(run_dir).provenance()
    assert [s.ended is None for s in prov.sessions] == [True, False]  # the killed session never ended
    assert prov.sessions[-1].status == "completed" and prov.sessions[-1].rows_written == 2 * N - n_before
    manifest = RunFolder.open(run_dir).manifest()
    assert [(r.status, r.rows, r.expected) for r in manifest.units] == [("done", N, N)] * 2

    assert main(["run", str(cfg), "--fresh"]) == 0
    check_complete(run_dir, N)
    prov = RunFolder.open(run_dir).provenance()
    assert len(prov.sessions) == 1 and prov.sessions[0].rows_written == 2 * N


def test_config_changes_resume_only_what_changed(ext_registry, tmp_path):
    def run(**kw):
        cfg = parse_config(ext_config(tmp_path / "runs", name="grow", n=6, max_new_tokens=2, **kw), ext_registry)
        return execute(cfg, ext_registry, tmp_path / "runs" / "grow", console=quiet())

    assert run(limit=3).rows_written == 6  # 3 samples x 2 methods
    assert run(limit=5).rows_written == 4  # raising the limit adds only the new samples
    assert run(limit=5).rows_written == 0  # nothing left to do
    out = run(limit=5, window=5)  # a method option changed: only that method's unit starts over
    assert out.rows_written == 5 and not out.failed
    folder = RunFolder.open(tmp_path / "runs" / "grow")
    units = {r.unit.method: r for r in folder.manifest().units}
    assert len(folder.rows(units["sw"].unit, AccuracyRow)) == 5
    assert len(list((tmp_path / "runs" / "grow" / "results" / "accuracy").glob("tiny__sw__bright.*.jsonl"))) == 2
    dense_rows = UnitRows(folder.unit_path(units["dense"].unit), AccuracyRow, writable=False)
    assert len(dense_rows) == 5
