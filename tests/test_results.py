"""``results.json``: written by every run, validated by its schema, equal to the report's numbers, shown as the
report's combined table, and read by ``bsight compare``."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ext_config, parse_config, quiet, synthetic_accuracy_run, torch_threads

from bsight.harness.cli import main
from bsight.harness.compare import collect_metrics, compare_runs
from bsight.harness.plugins import default_registry
from bsight.harness.report import render_report
from bsight.harness.results import RESULTS_FILE, Results, ResultsError, build_results, read_results
from bsight.harness.runner import execute
from bsight.harness.store import RunFolder


def _load(run_dir) -> Results:
    return Results.model_validate_json((run_dir / RESULTS_FILE).read_text(encoding="utf-8"))


def _accuracy_section(run: RunFolder, registry) -> list[dict]:
    """The report's accuracy tables, as the accuracy section renders them."""
    job = next(j for j in registry.job_types() if j.type == "accuracy")
    records = [r for r in run.manifest().units if r.unit.type == "accuracy"]
    return job.report(run, records).context["tables"]


def test_a_run_writes_a_valid_results_json(ext_run):
    results = _load(ext_run)
    assert results.schema_version == 1 and results.run_name == "ext"
    assert {(s.model, s.method, s.task) for s in results.scores} == {
        ("tiny", "dense", "bright"),
        ("tiny", "sw", "bright"),
    }
    assert results.protocols == {"bright": results.scores[0].protocol}
    for s in results.scores:
        assert s.n == 6 and s.status == "done" and s.metric == "accuracy"
        assert s.ci is not None and s.ci.confidence == 0.95
        assert s.ci.lo <= s.score <= s.ci.hi
    sw = next(s for s in results.scores if s.method == "sw")
    assert sw.delta is not None and sw.delta.baseline == "dense" and sw.delta.n == 6
    assert next(s for s in results.scores if s.method == "dense").delta is None
    assert results.units == {"done": 2}
    assert results.provenance is not None and results.provenance.config_hash == results.config_hash
    assert results.provenance.models["tiny"].weights == "random"
    assert results.timing.sessions == 1 and results.timing.wall_s is not None and results.timing.wall_s >= 0
    assert results.errors == []


def test_results_numbers_equal_the_report_accuracy_table(ext_run, ext_registry):
    run = RunFolder.open(ext_run)
    results = _load(ext_run)
    tables = _accuracy_section(run, ext_registry)
    assert len(tables) == 1
    t = tables[0]
    scores = {s.method: s for s in results.scores}
    assert {m["method"] for m in t["methods"]} == set(scores)
    for m in t["methods"]:
        s = scores[m["method"]]
        assert s.score == pytest.approx(m["accuracy"], abs=0)
        assert s.n == m["n"] and s.headline == t["headline"] and s.protocol == t["protocol"]
        assert s.decoding == t["decoding"]
        if m["is_baseline"]:
            assert s.is_baseline and s.delta is None
        else:
            d = m["delta"]
            assert (s.delta.value, s.delta.ci.lo, s.delta.ci.hi, s.delta.n) == (d.delta, d.lo, d.hi, d.n)
            assert s.agreement == m["agreement"] or (s.agreement is None and m["parsed_pairs"] == 0)
    # built again from the same rows, the numbers do not move (seeded bootstrap)
    again = build_results(run, ext_registry.job_types())
    assert [s.model_dump() for s in again.scores] == [s.model_dump() for s in results.scores]


def test_the_report_shows_the_combined_table(ext_run):
    results = _load(ext_run)
    html = (ext_run / "index.html").read_text(encoding="utf-8")
    md = (ext_run / "report.md").read_text(encoding="utf-8")
    sw = next(s for s in results.scores if s.method == "sw")
    pct = f"{100 * sw.score:.1f}%"
    delta = f"Δ vs dense {100 * sw.delta.value:+.1f} pp"
    assert '<section id="results">' in html and '<table class="data combined">' in html
    assert pct in html and delta in html
    md_results = md.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert "| method | bright (" in md_results and "Random-weight model" in md_results
    row = next(line for line in md_results.splitlines() if line.startswith("| sw |"))
    assert pct in row and delta in row and f"(n={sw.n})" in row
    assert md.index("## Results") < md.index("## Accuracy")


def test_bsight_report_rewrites_results_json(ext_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(ext_run, run_dir)
    (run_dir / RESULTS_FILE).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert [s.score for s in _load(run_dir).scores] == [s.score for s in _load(ext_run).scores]


def test_compare_picks_up_a_changed_headline_from_results_json(ext_run, tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    shutil.copytree(ext_run, a_dir)
    shutil.copytree(ext_run, b_dir)
    data = json.loads((b_dir / RESULTS_FILE).read_text(encoding="utf-8"))
    sw = next(s for s in data["scores"] if s["method"] == "sw")
    old = sw["score"]
    sw["score"] = old - 0.5 if old >= 0.5 else old + 0.5
    (b_dir / RESULTS_FILE).write_text(json.dumps(data), encoding="utf-8")
    name = "results/accuracy/tiny/bright/sw/score"
    a, b = RunFolder.open(a_dir), RunFolder.open(b_dir)
    assert collect_metrics(a)[name].value == old
    cmp = compare_runs(a, b, threshold=0.02)
    change = next(c for c in cmp.changes if c.name == name)
    assert change.delta == pytest.approx(sw["score"] - old)
    assert (name in {c.name for c in cmp.regressions}) == (sw["score"] < old)
    # the rows did not change: the job types' own accuracy metric stays put
    assert next(c for c in cmp.changes if c.name == "accuracy/tiny/bright/sw/accuracy").delta == 0


def test_a_run_without_results_json_compares_on_job_metrics(tmp_path):
    run = synthetic_accuracy_run(tmp_path / "a", {"dense": [True, False], "fast": [True, True]})
    assert read_results(run) is None
    assert not any(n.startswith("results/") for n in collect_metrics(run))


def test_a_broken_results_json_is_named(ext_run, tmp_path, capsys):
    run_dir = tmp_path / "broken"
    shutil.copytree(ext_run, run_dir)
    (run_dir / RESULTS_FILE).write_text('{"schema_version": 1, "scores": "nope"}', encoding="utf-8")
    with pytest.raises(ResultsError, match="results.json: not a valid results file"):
        read_results(run_dir)
    assert main(["compare", str(ext_run), str(run_dir), "--out", str(tmp_path / "cmp")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_flops_reduction_joins_its_score(ext_registry, tmp_path):
    data = ext_config(tmp_path, name="fl", n=3, max_new_tokens=2)
    data["jobs"].append({"type": "flops", "methods": ["dense"]})  # sink-window's pattern is not static
    config = parse_config(data, ext_registry)
    with torch_threads(1):
        outcome = execute(config, ext_registry, tmp_path / "fl", console=quiet())
    assert not outcome.failed
    results = _load(outcome.run_dir)
    assert [(f.job, f.model, f.method, f.task, f.n, f.mean, f.source) for f in results.flops] == [
        ("flops", "tiny", "dense", "bright", 3, 0.0, ["layout"])
    ]
    scores = {s.method: s for s in results.scores}
    assert scores["dense"].flops_reduction == 0.0 and scores["sw"].flops_reduction is None
    render_report(outcome.run_dir, ext_registry.job_types())  # a second rendering rewrites it, same numbers
    assert [s.flops_reduction for s in _load(outcome.run_dir).scores] == [s.flops_reduction for s in results.scores]


def test_chosen_numbers_reach_results_json_and_the_combined_table(tmp_path):
    """A macro-headline run with known outcomes: results.json holds the accuracy section's numbers exactly and
    the combined table prints them."""
    subtasks = ["x"] * 20 + ["y"] * 30
    dense = [True] * 15 + [False] * 5 + [True] * 10 + [False] * 20  # x 75%, y 33.3%: macro 54.2%
    fast = [True] * 10 + [False] * 10 + [True] * 10 + [False] * 20  # x 50%, y 33.3%: macro 41.7%
    run = synthetic_accuracy_run(tmp_path / "r", {"dense": dense, "fast": fast}, subtasks=subtasks, headline="macro")
    render_report(run)
    results = _load(run.root)
    t = _accuracy_section(run, default_registry())[0]
    scores = {s.method: s for s in results.scores}
    assert scores["fast"].headline == "macro"
    assert scores["fast"].score == pytest.approx((0.5 + 1 / 3) / 2)
    assert scores["dense"].score == pytest.approx((0.75 + 1 / 3) / 2)
    for m in t["methods"]:
        assert scores[m["method"]].score == m["accuracy"]
    d = next(m for m in t["methods"] if m["method"] == "fast")["delta"]
    assert scores["fast"].delta.value == d.delta == pytest.approx(-0.125)
    assert (scores["fast"].delta.ci.lo, scores["fast"].delta.ci.hi) == (d.lo, d.hi) and d.lo < d.delta < d.hi
    row = next(line for line in (run.root / "report.md").read_text().splitlines() if line.startswith("| fast |"))
    assert row.startswith("| fast | 41.7% [") and "Δ vs dense -12.5 pp [" in row and "(n=50)" in row


def test_a_tau_sweep_contributes_its_baseline_and_each_tau(ext_registry, tmp_path):
    taus = [0.03, 3.0]
    data = {
        "run": {"name": "sw", "output_dir": str(tmp_path), "seed": 0},
        "models": {"tiny": {"plugin": "tiny-llama", "options": {"layers": 2, "heads": 4, "kv_heads": 2}}},
        "methods": {
            "dense": {"plugin": "dense"},
            "bs": {"plugin": "blindsight", "options": {"uniform": "dense", "kernel": "reference"}},
        },
        "tasks": {
            "char": {"plugin": "brightest-image", "options": {"n": 3, "max_images": 4, "seed": 1}},
            "held": {"plugin": "brightest-image", "options": {"n": 4, "max_images": 4, "seed": 2}},
        },
        "jobs": [
            {"type": "characterize", "task": "char", "tau": taus[0]},
            {"type": "tau_sweep", "taus": taus, "limit": 4, "max_new_tokens": 2, "method": "bs"},
        ],
    }
    with torch_threads(1):
        outcome = execute(parse_config(data, ext_registry), ext_registry, tmp_path / "sw", console=quiet())
    assert not outcome.failed
    results = _load(outcome.run_dir)
    assert results.errors == []
    run = RunFolder.open(outcome.run_dir)
    job = next(j for j in ext_registry.job_types() if j.type == "tau_sweep")
    rec = next(r for r in run.manifest().units if r.unit.type == "tau_sweep")
    points = {f"{p['tau']:g}": p for p in job._unit_context(run, rec, 0)["points"]}
    ref = next(s for s in results.scores if s.reference)
    assert (ref.method, ref.is_baseline, ref.n, ref.delta, ref.tau) == ("dense", True, 4, None, None)
    assert ref.protocol == results.protocols["held"] and ref.protocol is not None
    for tau in ("0.03", "3"):
        s = next(s for s in results.scores if s.tau == tau)
        p = points[tau]
        assert s.method == f"bs (tau {tau})" and s.n == p["n"] == 4
        assert s.score == p["accuracy"] and s.agreement == (
            None if p["agreement"] != p["agreement"] else p["agreement"]
        )
        assert (s.delta.value, s.delta.ci.lo, s.delta.ci.hi) == (p["delta"].delta, p["delta"].lo, p["delta"].hi)
        assert s.flops_reduction == p["flops_heldout"]
        assert f"| bs (tau {tau}) |" in (outcome.run_dir / "report.md").read_text()
