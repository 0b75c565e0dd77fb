"""The repository's benchmarks.yaml - the default run of README's first command - runs end to end, and validates
and plans what the README promises: both real models characterized, a tau sweep on held-out prompts for each, FLOPs
under head maps that an earlier characterize job writes at a tau its sweep covers, and the CPU jobs (planted,
timing, ttft)."""

from __future__ import annotations

import os

import pytest
from conftest import REPO

from bsight.harness import provenance as prov
from bsight.harness.cli import main
from bsight.harness.config import load_config
from bsight.harness.plugins import load_registry
from bsight.harness.runner import plan
from bsight.harness.store import RunFolder


@pytest.fixture(scope="module")
def config():
    return load_config(REPO / "benchmarks.yaml", load_registry())


def test_default_config_plans_the_real_weights_run(config):
    models = {name: ref.options["model"] for name, ref in config.models.items() if ref.plugin == "segmented_text"}
    assert sorted(models.values()) == ["gemma3-270m", "smollm2-135m"]
    units = plan(config)
    kinds = [u.type for _, u in units]
    for kind in ("characterize", "tau_sweep", "flops", "planted", "timing", "ttft"):
        assert kind in kinds, kind
    assert sorted(u.model for _, u in units if u.type == "tau_sweep") == sorted(models)
    assert sorted(u.model for _, u in units if u.type == "characterize") == sorted(models)


def test_later_jobs_use_a_swept_tau_written_by_an_earlier_characterize_job(config):
    specs = {s.name: (i, s) for i, s in enumerate(config.jobs)}
    for i, spec in enumerate(config.jobs):
        if spec.type == "tau_sweep":
            j, char = specs[spec.characterize]
            assert j < i and char.type == "characterize" and char.tau in spec.taus
            assert spec.task != char.task and config.tasks[spec.task].options["split"] == "heldout"
            assert config.tasks[char.task].options["split"] == "characterization"
        if spec.type == "flops":  # each head map a flops method reads is an earlier characterize job's artifact
            produced = config.produced(i)
            for method in spec.methods:
                path = config.methods[method].options.get("head_map")
                if path is not None:
                    writer = produced[("head_map", os.path.normpath(path))]
                    assert specs[writer.job][1].type == "characterize", path


def test_dry_run_lists_the_units(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["run", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out and "sweep-gemma3-270m/gemma3-270m" in out and f"{len(plan(config))} units" in out


def test_provenance_renders_no_machine_paths(tmp_path, monkeypatch):
    """The published copy of the default run's report must name no folder of the machine that ran it."""
    from bsight.harness.report import environment

    monkeypatch.chdir(tmp_path)
    inside = tmp_path / "configs" / "bench.yaml"
    argv = [str(tmp_path / ".venv" / "bin" / "bsight"), "run", str(inside), "--out=/somewhere/else/run1", "--fresh"]
    env = environment("md")
    assert (
        env.from_string("{{ argv|command }}").render(argv=argv) == "bsight run configs/bench.yaml --out=…/run1 --fresh"
    )
    assert env.from_string("{{ p|portable }}").render(p=str(inside)) == "configs/bench.yaml"
    assert env.from_string("{{ p|portable }}").render(p="benchmarks.yaml") == "benchmarks.yaml"
    p = prov.collect("default", "0" * 16, str(inside)).model_copy(update={"command": argv})
    for kind in ("md", "html"):
        text = environment(kind).get_template(f"sections/provenance.{kind}.j2").render(provenance=p, error=None)
        assert "configs/bench.yaml" in text and "bsight run configs/bench.yaml" in text and str(tmp_path) not in text


def test_default_config_runs_and_says_where_the_report_is(tmp_path, monkeypatch, capsys):
    """README's first command: the checkout's benchmarks.yaml, real GGUF models on the CPU (about 8 minutes
    on 2 cores from a clean cache), every unit done, the report's sections filled with this run's numbers."""
    monkeypatch.chdir(tmp_path)  # no benchmarks.yaml here: the checkout's default is used
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "runs" / "default" / "index.html"
    assert out.strip().splitlines()[-1] == f"report: {report}"
    units = RunFolder.open(report.parent).manifest().units
    assert units and all(u.status == "done" for u in units), [(u.unit.id, u.status, u.error) for u in units]
    md = (report.parent / "report.md").read_text()
    assert md.count("the tau this sweep chooses") == 2  # each model's head map is built at its sweep's tau
    for model in ("gemma3-270m", "smollm2-135m"):
        assert f"### {model} on multidoc (job flops-{model})" in md and f"| blindsight-{model} | 36 |" in md
        assert f"{model}: category of each layer and query head" in md
    html = report.read_text()
    assert "Planted-structure check" in html and "Published results, <strong>not measured in this run</strong>" in html
