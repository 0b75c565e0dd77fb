"""The ``bsight`` command: dry runs, exit statuses, failing units."""

from __future__ import annotations

import json

import pytest
from conftest import bsight, env_with, ext_config, write_yaml

from bsight.harness import cli
from bsight.harness.cli import main
from bsight.harness.hookspecs import hookimpl
from bsight.harness.plugins import load_registry
from bsight.harness.store import RunFolder, RunStore
from bsight.plugins.methods.dense import Dense

pytestmark = pytest.mark.usefixtures("single_thread")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("bsight ")


def test_dry_run_lists_units_and_writes_nothing(ext_registry, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="dry"))
    assert main(["run", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "accuracy/tiny/dense/bright" in out and "accuracy/tiny/sw/bright" in out and "2 units" in out
    assert not (tmp_path / "runs").exists()


# every job type the example plugin's environment registers: the built-ins and its own `prompt_stats`
JOB_TYPES = "accuracy, baselines, characterize, flops, inmodel, planted, prompt_stats, tau_sweep, timing, ttft"


def test_bad_config_exits_2_without_traceback(ext_paths, tmp_path):
    data = ext_config(tmp_path / "runs")
    data["methods"]["sw"]["options"]["windw"] = 3
    data["jobs"][0]["type"] = "acc"
    res = bsight(["run", str(write_yaml(tmp_path / "bad.yaml", data))], env=env_with(ext_paths))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("bsight: error:")]
    assert errors == [
        f"bsight: error: {tmp_path / 'bad.yaml'}: jobs[0].type: unknown job type 'acc'; allowed: {JOB_TYPES}",
        f"bsight: error: {tmp_path / 'bad.yaml'}: methods.sw.options.windw: unknown key; allowed: sinks, window",
    ]
    assert not (tmp_path / "runs").exists()


def test_missing_config_and_no_default(tmp_path, monkeypatch, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bsight: error:")]
    assert errors == [f"bsight: error: {tmp_path / 'nope.yaml'}: config file not found"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "SOURCE_ROOT", tmp_path)
    assert main(["run"]) == 2
    assert "no CONFIG given and no benchmarks.yaml" in capsys.readouterr().err


def test_busy_run_folder(ext_registry, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="busy", n=1))
    holder = RunStore(tmp_path / "runs" / "busy")
    try:
        assert main(["run", str(cfg)]) == 2
    finally:
        holder.close()
    assert "another bsight process is writing this run folder" in capsys.readouterr().err


class Exploding(Dense):
    name = "exploding"
    description = "raises in prefill (test)"

    def prefill(self, q, k, v, meta, call):
        raise RuntimeError(f"no attention for {q.shape[1]} tokens")


class _ExplodingPlugin:
    @hookimpl
    def bsight_attention_methods(self):
        return [Exploding]


def test_failing_unit_is_recorded_and_the_run_goes_on(ext_registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_registry", lambda: load_registry(extra={"exploding": _ExplodingPlugin()}))
    data = ext_config(tmp_path / "runs", name="boom", n=2, max_new_tokens=2)
    data["methods"]["x"] = {"plugin": "exploding"}
    assert main(["run", str(write_yaml(tmp_path / "c.yaml", data))]) == 1
    err = capsys.readouterr().err
    assert "failed accuracy/tiny/x/bright: RuntimeError: no attention for" in err
    run = RunFolder.open(tmp_path / "runs" / "boom")
    status = {r.unit.method: (r.status, r.rows) for r in run.manifest().units}
    assert status == {"dense": ("done", 2), "sw": ("done", 2), "x": ("failed", 0)}
    assert "Traceback" in (run.root / "errors.log").read_text()
    html = (run.root / "index.html").read_text()
    assert "RuntimeError: no attention for" in html and "status-failed" in html
    assert json.loads((run.root / "provenance.json").read_text())["sessions"][-1]["status"] == "failed"
