"""Job types are the fourth plugin family: an external package adds one (tests/ext_plugin's ``prompt_stats``)
through the ``bsight`` entry-point group, and a run plans, runs, reports and compares it like a built-in."""

from __future__ import annotations

import json

from conftest import bsight, env_with, ext_config, write_yaml

from bsight.harness.config import parse_config
from bsight.harness.runner import plan


def _config(tmp_path, name: str) -> dict:
    data = ext_config(tmp_path, name=name, n=4)
    data["jobs"] = [{"type": "prompt_stats", "limit": 3}]
    return data


def test_the_external_job_type_is_registered(ext_registry):
    info = ext_registry.entries["job"]["prompt_stats"]
    assert info.package == "bsight-tinyext" and info.plugin == "tinyext"
    assert {"accuracy", "characterize", "flops", "tau_sweep"} <= set(ext_registry.names("job"))
    config = parse_config(_config(__import__("pathlib").Path("."), "x"), ext_registry)
    assert [u.id for _, u in plan(config)] == ["prompt_stats/tiny/bright"]


def test_bsight_runs_reports_and_compares_an_external_job(ext_paths, tmp_path):
    env = env_with(ext_paths)
    listed = bsight(["plugins"], env=env)
    assert listed.returncode == 0 and "prompt_stats" in listed.stdout and "bsight-tinyext" in listed.stdout
    runs = []
    for name in ("a", "b"):
        cfg = write_yaml(tmp_path / f"{name}.yaml", _config(tmp_path, name))
        proc = bsight(["run", str(cfg)], env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(tmp_path / name)
    rows = [json.loads(line) for line in next((runs[0] / "results").rglob("*.jsonl")).read_text().splitlines()]
    assert len(rows) == 3 and all(r["tokens"] > 0 and r["segments"] >= 1 for r in rows)
    md = (runs[0] / "report.md").read_text()
    assert "## Prompt lengths" in md and "mean_tokens" in md  # the generic table: no template of its own
    html = (runs[0] / "index.html").read_text()
    assert "Tokens per prompt (example job type)." in html
    cmp = bsight(["compare", str(runs[0]), str(runs[1])], env=env, cwd=tmp_path)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    data = json.loads((runs[1] / "compare.json").read_text())
    assert any("prompt_stats/tiny/bright/mean_tokens" in json.dumps(c) for c in data.get("changes", []))
