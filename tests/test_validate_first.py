"""Input that would crash later is refused before any work, one line naming the field or file; OS-level
failures are one line with exit 2 or 3; a session that dies ends "failed" or "interrupted" with its row count.
Before the fix each of these was accepted (then a traceback at run time) or left the session "running"."""

from __future__ import annotations

import errno
import json

import pytest
from conftest import ext_config, write_yaml

from bsight.harness.cli import main
from bsight.harness.config import ConfigError, parse_config
from bsight.harness.store import RunFolder, UnitRows

pytestmark = pytest.mark.usefixtures("single_thread")


def problems(registry, data) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, registry, source="cfg.yaml")
    return str(exc.value)


@pytest.mark.parametrize("seed", [-1, 2**70])
def test_seed_out_of_range(ext_registry, tmp_path, seed):
    data = ext_config(tmp_path)
    data["run"]["seed"] = seed
    assert "cfg.yaml: run.seed:" in problems(ext_registry, data)


def test_boolean_for_an_integer(ext_registry, tmp_path):
    data = ext_config(tmp_path)
    data["jobs"][0]["limit"] = True
    assert "cfg.yaml: jobs[0].limit: must be an integer, not a boolean (got true)" in problems(ext_registry, data)
    data["run"]["seed"] = False
    assert "run.seed: must be an integer, not a boolean" in problems(ext_registry, data)


def test_bootstrap_beyond_a_sane_bound(ext_registry, tmp_path):
    data = ext_config(tmp_path)
    data["jobs"][0]["bootstrap"] = 10**15
    assert "jobs[0].bootstrap:" in problems(ext_registry, data)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_in_a_list(ext_registry, tmp_path, bad):
    data = ext_config(tmp_path)
    data["jobs"] = [{"type": "characterize", "models": ["tiny"], "task": "bright", "sweep_taus": [0.05, bad]}]
    text = problems(ext_registry, data)
    assert f"jobs[0].sweep_taus[1]: must be a finite number (got {bad})" in text


def test_non_finite_plugin_option(ext_registry, tmp_path):
    data = ext_config(tmp_path)
    data["tasks"]["bright"]["options"]["n"] = float("nan")
    assert "tasks.bright.options.n: must be a finite number" in problems(ext_registry, data)


@pytest.mark.parametrize("text", ["", "# nothing here\n", "run: {name: x}\n", "run: {name: x}\njobs: []\n"])
def test_empty_config_is_an_error(ext_registry, tmp_path, text, capsys):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text(text)
    assert main(["run", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "the config is empty" in err or "lists no jobs" in err


def test_missing_head_map_fails_dry_run_naming_field_and_file(ext_registry, tmp_path, capsys):
    data = ext_config(tmp_path / "runs")
    data["methods"]["bs"] = {"plugin": "blindsight", "options": {"head_map": str(tmp_path / "nope.json")}}
    cfg = write_yaml(tmp_path / "c.yaml", data)
    assert main(["run", str(cfg), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "head_map" in lines[0] and str(tmp_path / "nope.json") in lines[0]


def test_malformed_head_map_is_one_line(ext_registry, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": [["not-a-category", "dense"]], "shape": "wrong"}))
    data = ext_config(tmp_path / "runs")
    data["methods"]["bs"] = {"plugin": "blindsight", "options": {"head_map": str(bad)}}
    cfg = write_yaml(tmp_path / "c.yaml", data)
    assert main(["run", str(cfg), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bsight: error: methods.bs.options.head_map: {bad}: ")


def test_task_that_cannot_read_its_data_fails_dry_run(ext_registry, tmp_path, capsys, monkeypatch):
    task_cls = ext_registry.get("task", "brightest-image")

    def unreadable(self):
        raise FileNotFoundError(2, "No such file or directory", "/data/bright.jsonl")
        yield

    monkeypatch.setattr(task_cls, "samples", unreadable)
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs"))
    assert main(["run", str(cfg), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsight: error: tasks.bright: FileNotFoundError")


def test_disk_full_mid_run_is_one_line_and_the_session_ends_failed(ext_registry, tmp_path, capsys, monkeypatch):
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="full", n=4, max_new_tokens=2))
    original, calls = UnitRows.append, []

    def filling(self, row):
        calls.append(row.key)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        original(self, row)

    monkeypatch.setattr(UnitRows, "append", filling)
    assert main(["run", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bsight: error: No space left on device" in err
    session = RunFolder.open(tmp_path / "runs" / "full").provenance().sessions[-1]
    assert session.status == "failed" and session.rows_written == 3 and session.ended is not None


def test_interrupted_session_ends_interrupted_and_counts_its_rows(ext_registry, tmp_path, monkeypatch):
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="int", n=4, max_new_tokens=2))
    original, calls = UnitRows.append, []

    def interrupted(self, row):
        calls.append(row.key)
        if len(calls) > 3:
            raise KeyboardInterrupt
        original(self, row)

    monkeypatch.setattr(UnitRows, "append", interrupted)
    assert main(["run", str(cfg)]) == 130
    session = RunFolder.open(tmp_path / "runs" / "int").provenance().sessions[-1]
    assert session.status == "interrupted" and session.rows_written == 3


def test_read_only_run_folder_is_one_line_exit_3(ext_registry, tmp_path, monkeypatch, capsys):
    from bsight.harness.store import RunStore

    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="ro", n=2, max_new_tokens=2))

    def read_only(self, manifest):
        raise OSError(errno.EROFS, "Read-only file system", str(self.root / "units.json"))

    monkeypatch.setattr(RunStore, "write_manifest", read_only)
    assert main(["run", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip().splitlines()[-1]
        == f"bsight: error: Read-only file system: {tmp_path / 'runs' / 'ro' / 'units.json'}"
    )
    session = RunFolder(tmp_path / "runs" / "ro").provenance().sessions[-1]  # (no units.json was written)
    assert session.status == "failed" and session.ended is not None  # not left "running"
