"""Jobs ``timing`` and ``ttft``: published results load with their provenance (also from outside a checkout),
measured rows are durable per prompt length and resume, and the sections render from both."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from conftest import REPO, quiet

from bsight.harness.config import ConfigError, parse_config
from bsight.harness.jobs.published import load_published
from bsight.harness.jobs.timing import TimingJob, TimingRow, timing_context
from bsight.harness.jobs.ttft import TTFTRow
from bsight.harness.report import render_report
from bsight.harness.runner import execute
from bsight.harness.store import RunFolder
from bsight.kernels.sparsity.artifacts import find_published

PUBLISHED = "reports/published/kernel_sweep_h100.json"
pytestmark = pytest.mark.usefixtures("single_thread")


def run(registry, root: Path, jobs: list[dict], name: str = "t"):
    config = parse_config({"run": {"name": name, "output_dir": str(root)}, "jobs": jobs}, registry)
    return execute(config, registry, root / name, console=quiet())


def sections_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, re.S))


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# ----------------------------------------------------------------------------------- published sweep


def test_published_sweep_loads_with_provenance_and_renders(registry, tmp_path):
    out = run(registry, tmp_path, [{"type": "timing", "source": "published"}])
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    (rec,) = folder.manifest().units
    doc = json.loads((REPO / PUBLISHED).read_text())
    rows = folder.rows(rec.unit, TimingRow)
    # every published row is kept, grouped by length, untouched
    assert sorted(p["ms"] or 0 for r in rows for p in r.points) == sorted(p["ms"] or 0 for p in doc["rows"])
    assert {r.key for r in rows} == {str(p["tokens"]) if p["tokens"] else "other" for p in doc["rows"]}
    assert all(r.source == "published" for r in rows) and rec.expected == len(rows) and rec.status == "done"
    assert rec.info["source"] == "published" and rec.info["meta"]["provenance"]["gpu"] == doc["provenance"]["gpu"]
    assert TimingJob().metrics(folder, [rec]) == []  # published numbers are not this run's measurements

    s = sections_of((out.run_dir / "index.html").read_text())["timing"]
    t = text(s)
    prov = doc["provenance"]
    assert (
        "not measured in this run" in t and prov["gpu"] in t and prov["git_commit"][:12] in t and prov["date"][:10] in t
    )
    assert s.count("<svg") == 4  # time and speedup per layout
    # a table cell and a speedup computed from the published numbers
    pick = random.choice(
        [
            p
            for p in doc["rows"]
            if p["method"] == "ours" and p["category"] == "intra_image_sink" and p["layout"] == "peers"
        ]
    )
    cudnn = next(p["ms"] for p in doc["rows"] if p["method"] == "cudnn" and p["tokens"] == pick["tokens"])
    assert f"{pick['ms']:.2f}" in t and f"{cudnn / pick['ms']:.2f}x" in t
    md = (out.run_dir / "report.md").read_text()
    assert "Published results, not measured in this run" in md and "plots/timing-timing-peers-speedup.svg" in md


def test_halves_of_mixed30_are_times_not_speedups():
    """The dense and kernel halves of a mixed30 call are timed apart: the ms table shows them, the speedup
    table and plots over cuDNN (whole attention calls only) do not."""
    base = {"tokens": 36864, "layout": "peers", "config": "default"}
    points = [
        dict(base, method=m, category=c, ms=ms)
        for m, c, ms in [
            ("cudnn", "dense", 16.0),
            ("ours", "mixed30", 7.0),
            ("ours", "mixed30_serial", 6.5),
            ("ours", "mixed30_dense_part", 5.0),
            ("ours", "mixed30_kernel_part", 1.5),
        ]
    ]
    ctx = timing_context(points)
    assert {"ours mixed30_dense_part", "ours mixed30_kernel_part", "ours mixed30"} <= set(ctx["columns"])
    assert ctx["speed_columns"] == ["ours mixed30", "ours mixed30_serial"]
    (row,) = ctx["speedups"]
    assert row["x"] == [16.0 / 7.0, 16.0 / 6.5]


def test_published_files_resolve_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no reports/ here: the installed package's data is used
    found = find_published(PUBLISHED)
    assert found is not None and json.loads(found.read_text())["rows"]
    assert load_published(PUBLISHED)[1] == load_published(str(REPO / PUBLISHED))[1]
    (tmp_path / "reports" / "published").mkdir(parents=True)
    own = tmp_path / PUBLISHED
    own.write_text(json.dumps({"provenance": {"gpu": "mine"}, "rows": []}))
    assert (
        json.loads(find_published(PUBLISHED).read_text())["provenance"]["gpu"] == "mine"
    )  # the working directory's wins
    assert find_published("reports/published/none.json") is None and find_published("elsewhere/x.json") is None
    own.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_published(PUBLISHED)


def test_config_errors_name_the_field(registry, tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config(
            {"jobs": [{"type": "timing", "source": "published", "published": str(tmp_path / "absent.json")}]}, registry
        )
    assert "jobs[0].published:" in str(e.value) and "not found" in str(e.value)
    with pytest.raises(ConfigError, match=r"jobs\[0\].lengths"):
        parse_config({"jobs": [{"type": "timing", "lengths": [100]}]}, registry)
    with pytest.raises(ConfigError, match=r"jobs\[0\]: Value error, source 'published' needs a `published` file"):
        parse_config({"jobs": [{"type": "ttft", "source": "published", "published": None}]}, registry)


# ------------------------------------------------------------------------------------ measured sweep


def fake_sweep(calls: list[int], fail_at: int | None, ms: dict):
    """Stands in for the GPU-only run_sweep: rows in its schema, times drawn once per (length, method, category)."""

    def run_sweep(lengths, layouts, methods, **kw):
        (n,) = lengths
        calls.append(n)
        if n == fail_at:
            raise RuntimeError("device lost")
        rows = []
        for lay in layouts:
            rows.append(
                {
                    "tokens": n,
                    "layout": lay,
                    "images": n // 1040,
                    "method": "layout_meta_build",
                    "category": "-",
                    "ms": 0.5,
                }
            )
            for method, cats in (
                ("cudnn", ["dense"]),
                ("ours", ["dense", "sink", "intra_image", "intra_image_sink", "mixed30"]),
            ):
                for c in cats:
                    rows.append(
                        {
                            "tokens": n,
                            "layout": lay,
                            "images": n // 1040,
                            "method": method,
                            "category": c,
                            "config": "default",
                            "ms": ms.setdefault((n, method, c), random.uniform(1, 100)),
                        }
                    )
        rows.append(
            {
                "tokens": None,
                "layout": "-",
                "method": "ours",
                "category": "compiled_variants_growth",
                "ms": None,
                "value": 0,
            }
        )
        return rows

    return run_sweep


def test_measured_sweep_is_durable_per_length_and_resumes(registry, tmp_path, monkeypatch):
    import torch

    import bsight.harness.benchmarks.kernel_sweep as sweep

    monkeypatch.setattr(TimingJob, "can_measure", lambda self, spec: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    lengths = [1024, 2048, 4096]
    job = {"type": "timing", "lengths": lengths, "layouts": ["peers"], "methods": ["ours", "cudnn"]}
    calls: list[int] = []
    ms: dict = {}
    monkeypatch.setattr(sweep, "run_sweep", fake_sweep(calls, fail_at=4096, ms=ms))
    first = run(registry, tmp_path, [job], name="m")
    assert first.failed == ["timing/measure"] and calls == lengths
    folder = RunFolder.open(first.run_dir)
    (rec,) = folder.manifest().units
    assert [r.key for r in folder.rows(rec.unit, TimingRow)] == ["1024", "2048"] and "device lost" in rec.error

    calls.clear()
    monkeypatch.setattr(sweep, "run_sweep", fake_sweep(calls, fail_at=None, ms=ms))
    again = run(registry, tmp_path, [job], name="m")
    assert not again.failed and calls == [4096]  # finished lengths are not measured again
    (rec,) = folder.manifest().units
    rows = folder.rows(rec.unit, TimingRow)
    assert [r.key for r in rows] == ["1024", "2048", "4096"] and all(r.source == "measured" for r in rows)
    metrics = {m.name: m for m in TimingJob().metrics(folder, [rec])}
    m = metrics["timing/peers/2048/ours/sink/ms"]
    assert m.value == ms[(2048, "ours", "sink")] and m.relative and not m.higher_is_better
    t = text(sections_of((again.run_dir / "index.html").read_text())["timing"])
    assert "Measured in this run on Test GPU" in t and "not measured in this run" not in t
    assert f"{ms[(4096, 'cudnn', 'dense')] / ms[(4096, 'ours', 'intra_image')]:.2f}x" in t


def test_kernel_sweep_run_returns_the_document_the_cli_writes(tmp_path, monkeypatch):
    """``kernel_sweep.run(spec)`` (what the timing job calls) returns the document the CLI writes (run_sweep faked:
    it needs a GPU), progress through ``log``, with the shared benchmark provenance."""
    import torch

    import bsight.harness.benchmarks.kernel_sweep as sweep

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    calls: list[int] = []
    monkeypatch.setattr(sweep, "run_sweep", fake_sweep(calls, fail_at=None, ms={}))
    spec = sweep.KernelSweepSpec(
        lengths=[1024], layouts=["peers"], methods=["ours", "cudnn"], configs={"b": [64, 64, 4, 2]}
    )
    doc = sweep.run(spec, log=lambda line: None)
    out = tmp_path / "sweep.json"
    written = sweep.main(
        [
            "--out",
            str(out),
            "--lengths",
            "1024",
            "--layouts",
            "peers",
            "--methods",
            "ours,cudnn",
            "--configs",
            "b=64/64/4/2",
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(written, default=str))
    assert out.with_suffix(".md").read_text().startswith("# BlindSight kernel timing sweep, Test GPU")
    assert doc.keys() == written.keys() == {"provenance", "setup", "rows", "targets"}
    assert doc["setup"] == written["setup"] and set(doc["setup"]["configs"]) == {"default", "b"}
    assert doc["rows"] == written["rows"] and doc["targets"] == written["targets"]
    prov = written["provenance"]
    assert doc["provenance"].keys() == prov.keys() >= {"gpu", "git_commit", "date", "torch", "triton", "command"}
    assert prov["gpu"] == "Test GPU" and prov["command"][:5] == ["python", "-m", sweep.__name__, "--out", "sweep.json"]
    assert doc["provenance"]["command"] == [f"{sweep.__name__}.run"] and calls == [1024, 1024]


# -------------------------------------------------------------------------------------------- TTFT


@pytest.fixture(scope="module")
def small_ttft(tmp_path_factory) -> Path:
    """A real ``python -m bsight.harness.benchmarks.ttft --small`` result (tiny Qwen2-VL on the CPU)."""
    from bsight.harness.benchmarks import ttft

    out = tmp_path_factory.mktemp("ttft") / "ttft_small.json"
    assert ttft.main(["--small", "--lengths", "200", "--out", str(out)]) == 0
    return out


def test_ttft_section_renders_from_the_script_output(registry, tmp_path, small_ttft):
    doc = json.loads(small_ttft.read_text())
    out = run(registry, tmp_path, [{"type": "ttft", "source": "published", "published": str(small_ttft)}])
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    (rec,) = folder.manifest().units
    (row,) = folder.rows(rec.unit, TTFTRow)
    entry = doc["lengths"][0]
    assert row.tokens == entry["tokens"] == 200 and row.dense["ttft_ms"] == entry["dense"]["ttft_ms"]
    assert row.speedup == entry["speedup"]
    s = text(sections_of((out.run_dir / "index.html").read_text())["timing"])
    assert "Time to first token" in s and "not measured in this run" in s and "Random weights" in s
    assert f"{entry['blindsight']['ttft_ms']:.1f}" in s and f"{entry['speedup']['ttft']:.2f}x" in s
    assert "No data in this run" not in s


def test_ttft_run_returns_the_document_the_cli_writes(small_ttft):
    """``ttft.run(spec)`` (what the ttft job calls) returns the document the CLI writes, progress through ``log``."""
    from bsight.harness.benchmarks import ttft

    written = json.loads(small_ttft.read_text())
    lines: list[str] = []
    updates: list[int] = []
    doc = ttft.run(
        ttft.TTFTBenchSpec(small=True, lengths=[200]), log=lines.append, on_update=lambda d: updates.append(1)
    )
    doc = json.loads(json.dumps(doc))  # as written (tuples become lists)
    assert doc.keys() == written.keys() and doc["setup"].keys() == written["setup"].keys()
    assert doc["provenance"].keys() == written["provenance"].keys()
    assert [e.keys() for e in doc["lengths"]] == [e.keys() for e in written["lengths"]]
    assert doc["head_map"] == written["head_map"] and doc["model"] == written["model"]
    assert written["provenance"]["command"].startswith("python -m bsight.harness.benchmarks.ttft --small --lengths 200")
    assert doc["provenance"]["command"] == "bsight.harness.benchmarks.ttft.run"
    assert any(line.startswith("200 tokens, dense: ") for line in lines) and len(updates) >= 3


def test_ttft_without_a_file_says_so_and_small_runs_measure(registry, tmp_path, monkeypatch):
    import bsight.kernels.sparsity.artifacts as artifacts

    monkeypatch.chdir(tmp_path)  # no reports/ here, and no packaged results either (until the GPU run lands):
    monkeypatch.setattr(artifacts, "PUBLISHED_PACKAGE", "bsight.harness")
    out = run(
        registry,
        tmp_path,
        [{"type": "ttft", "source": "published"}, {"type": "ttft", "name": "small", "small": True, "lengths": [160]}],
    )
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    none, small = folder.manifest().units
    assert none.expected == 0 and none.info["source"] == "none"
    (row,) = folder.rows(small.unit, TTFTRow)
    assert row.source == "measured" and row.tokens == 160 and row.dense["ttft_ms"] > 0 and row.blindsight["ttft_ms"] > 0
    assert "tiny config" in small.info["meta"]["model"]["weights"]
    assert small.info["meta"]["provenance"]["command"] == "bsight.harness.benchmarks.ttft.run"  # no argv round trip
    render_report(folder)
    s = text(sections_of((out.run_dir / "index.html").read_text())["timing"])
    assert "No TTFT data: not measured in this run (source: published)" in s and "reports/published/ttft_h100.json" in s
    assert "Measured in this run on cpu" in s
