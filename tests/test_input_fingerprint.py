"""Changed inputs never give silently wrong numbers: a lowered ``limit`` counts only the selected samples, a
changed sample is redone, and a different config pointed at a run folder is refused unless ``--fresh``.
Before the fix: "6 / 3" and accuracy over 6, old rows and gold answers kept, the old units silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ext_config, quiet, write_yaml

from bsight.harness.cli import main
from bsight.harness.config import parse_config
from bsight.harness.jobs.accuracy import AccuracyRow
from bsight.harness.runner import execute
from bsight.harness.store import RunFolder, StoreError

pytestmark = pytest.mark.usefixtures("single_thread")


def run(registry, root: Path, **kw):
    config = parse_config(ext_config(root, name="fp", n=6, max_new_tokens=2, **kw), registry)
    return execute(config, registry, root / "fp", console=quiet())


def counted(run_dir: Path) -> dict[str, list[str]]:
    folder = RunFolder.open(run_dir)
    return {r.unit.method: [row.key for row in folder.rows(r.unit, AccuracyRow)] for r in folder.manifest().units}


def test_lowered_limit_counts_only_the_selected_samples(ext_registry, tmp_path):
    assert run(ext_registry, tmp_path, limit=6).rows_written == 12
    out = run(ext_registry, tmp_path, limit=3)
    assert out.rows_written == 0 and not out.incomplete
    assert counted(out.run_dir) == {m: ["b0000", "b0001", "b0002"] for m in ("dense", "sw")}
    recs = RunFolder.open(out.run_dir).manifest().units
    assert [(r.rows, r.expected) for r in recs] == [(3, 3), (3, 3)]
    md = (out.run_dir / "report.md").read_text()
    assert "6 / 3" not in md
    again = run(ext_registry, tmp_path, limit=6)  # the other rows were kept on disk: nothing to redo
    assert again.rows_written == 0 and len(counted(again.run_dir)["dense"]) == 6


def test_changed_task_data_redoes_the_changed_samples(ext_registry, tmp_path, monkeypatch):
    first = run(ext_registry, tmp_path)
    assert first.rows_written == 12
    task_cls = ext_registry.get("task", "brightest-image")
    original = task_cls.samples

    def edited(self):
        for s in original(self):
            if s.id == "b0001":  # the gold answer of one sample was corrected in the data file
                s = s.model_copy(update={"answer": "B" if s.answer != "B" else "A"})
            yield s

    monkeypatch.setattr(task_cls, "samples", edited)
    new_gold = next(s.answer for s in edited(task_cls({"n": 6})) if s.id == "b0001")
    out = run(ext_registry, tmp_path)
    assert out.rows_written == 2  # that sample, under each of the two methods
    folder = RunFolder.open(out.run_dir)
    for rec in folder.manifest().units:
        rows = {r.key: r for r in folder.rows(rec.unit, AccuracyRow)}
        assert len(rows) == 6 and rows["b0001"].gold == new_gold
    assert run(ext_registry, tmp_path).rows_written == 0  # and then it is stable


def test_a_different_config_in_the_same_folder_is_refused_unless_fresh(ext_registry, tmp_path, capsys):
    first = ext_config(tmp_path / "runs", name="same", n=2, max_new_tokens=2)
    assert main(["run", str(write_yaml(tmp_path / "a.yaml", first))]) == 0
    other = ext_config(tmp_path / "runs", name="same", n=2, max_new_tokens=2)
    other["tasks"] = {"other": other["tasks"].pop("bright")}  # another config: its units are not the folder's
    cfg = write_yaml(tmp_path / "b.yaml", other)
    assert main(["run", str(cfg)]) == 2
    assert "does not plan" in capsys.readouterr().err
    assert len(RunFolder.open(tmp_path / "runs" / "same").manifest().units) == 2  # untouched
    assert main(["run", str(cfg), "--fresh"]) == 0
    assert {r.unit.task for r in RunFolder.open(tmp_path / "runs" / "same").manifest().units} == {"other"}


def test_refusal_names_the_folder(ext_registry, tmp_path):
    run(ext_registry, tmp_path)
    config = parse_config(ext_config(tmp_path, name="fp", n=6, max_new_tokens=2), ext_registry)
    config.methods.pop("sw")
    with pytest.raises(StoreError, match=r"fp: holds results of units this config does not plan \(accuracy/tiny/sw"):
        execute(config, ext_registry, tmp_path / "fp", console=quiet())
