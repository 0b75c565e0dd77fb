"""Job ``baselines`` on a tiny random-weight Qwen2-VL and the offline task: per-layer NMSE against an independent
recomputation from the layer inputs, FLOPs (static and dynamic methods), overhead, resume, the MMInference pattern
search from a config, the section's numbers from the rows (accuracy from an accuracy job of the same run), and
the GPU part - measured (the sweep's small CPU shape), published with provenance, or not measured.
Random weights: nothing here is an accuracy measurement."""

from __future__ import annotations

import json
import random
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import quiet

from bsight.harness.adapter_kit import reference_masks, tiny_vlms  # noqa: E402
from bsight.harness.benchmarks import baselines_sweep
from bsight.harness.config import ConfigError, parse_config
from bsight.harness.interfaces import AttentionMethod
from bsight.harness.jobs.accuracy import AccuracyJob
from bsight.harness.jobs.baselines import BaselinesJob, BaselinesRow, SweepMethod
from bsight.harness.runner import execute, plan
from bsight.harness.store import RunFolder
from bsight.kernels.dispatch import dense_prefill
from bsight.kernels.reference import reference_attention
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.masks import head_mask, materialize
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.plugins.methods.mminference import HeadPattern, PatternConfig
from bsight.plugins.methods.streaming import streaming_mask
from bsight.plugins.models.qwen2_vl import Qwen2VL
from bsight.plugins.tasks.offline_images import OfflineImages

pytestmark = pytest.mark.usefixtures("single_thread")
TASK = {"plugin": "offline_images", "options": {"image_size": 64, "per_subtask": 2}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_vlms.qwen_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen", num_layers=3)


@pytest.fixture(scope="module")
def qwen(checkpoint) -> Qwen2VL:
    adapter = Qwen2VL({"checkpoint": str(checkpoint)})
    adapter.load()
    return adapter


def config(root: Path, checkpoint: Path, methods: dict, jobs: list[dict], name: str = "b") -> dict:
    return {
        "run": {"name": name, "output_dir": str(root)},
        "models": {"qwen": {"plugin": "qwen2_vl", "options": {"checkpoint": str(checkpoint)}}},
        "methods": {"dense": {"plugin": "dense"}, **methods},
        "tasks": {"offline": TASK, "search": {**TASK, "options": {**TASK["options"], "per_subtask": 1}}},
        "jobs": jobs,
    }


def run(registry, data: dict, root: Path, name: str = "b"):
    return execute(parse_config(data, registry), registry, root / name, console=quiet())


def section(run_dir: Path) -> str:
    html = (run_dir / "index.html").read_text()
    return re.search(r'<section id="baselines">(.*?)</section>', html, re.S).group(1)


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


class Recorder(AttentionMethod):
    """Keeps every layer's q, k, v and returns dense attention (the inputs the probe's layers see)."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def prefill(self, q, k, v, meta, call):
        self.calls.append((q.clone(), k.clone(), v.clone(), meta, call))
        return dense_prefill(q, k, v, meta, call)


def layer_inputs(adapter: Qwen2VL, sample) -> list[tuple]:
    rec = Recorder()
    rec.setup(adapter.info)
    with torch.no_grad():
        adapter.prefill(adapter.prepare(sample), rec)
    return rec.calls


def nmse(out: torch.Tensor, dense: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
    o, d = out[:, rows].double(), dense[:, rows].double()
    return ((o - d).pow(2).sum((1, 2)) / d.pow(2).sum((1, 2))).numpy()


# ------------------------------------------------------------------------------------------------ rows


def test_rows_match_a_recomputation_from_the_layer_inputs(registry, checkpoint, qwen, tmp_path):
    info = qwen.info
    hm = reference_masks.random_head_map(
        "tiny",
        info.num_layers,
        info.num_heads,
        random.randrange(1 << 30),
        SinkPolicy(fraction=random.choice([0.1, 0.3])),
    )
    hm.save(tmp_path / "hm.json")
    n_sink, window = random.randint(1, 6), random.randint(16, 64)
    methods = {
        "bs": {"plugin": "blindsight", "options": {"head_map": str(tmp_path / "hm.json")}},
        "stream": {"plugin": "streaming", "options": {"n_sink": n_sink, "window": window}},
    }
    jobs = [
        {"type": "baselines", "tasks": ["offline"], "methods": ["bs", "stream", "dense"], "limit": 2, "gpu": None},
        {"type": "accuracy", "tasks": ["offline"], "methods": ["dense", "bs"], "limit": 2, "max_new_tokens": 2},
    ]
    out = run(registry, config(tmp_path, checkpoint, methods, jobs), tmp_path)
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    units = [r for r in folder.manifest().units if r.unit.type == "baselines"]
    assert [u.unit.method for u in units] == ["dense", "bs", "stream"]  # dense first
    rows = {u.unit.method: [r.prompt for r in folder.rows(u.unit, BaselinesRow)] for u in units}
    samples = list(OfflineImages(TASK["options"]).samples())[:2]

    cats = torch.as_tensor(hm.category_array(), dtype=torch.int32)
    for p, sample in zip(rows["bs"], samples):
        calls = layer_inputs(qwen, sample)
        meta = LayoutMeta.build(qwen.prepare(sample).layouts[0].with_sinks(hm.sink_policy))
        seg = torch.nonzero(meta.seg_id >= 0).flatten()
        everything = torch.arange(meta.length)
        for layer, (q, k, v, _, call) in enumerate(calls):
            dense = dense_prefill(q, k, v, meta, call)
            mine = reference_attention(q, k, v, meta, cats[layer], scale=call.scale, window=call.window)
            np.testing.assert_allclose(p.nmse_all[layer], nmse(mine, dense, everything), rtol=1e-5, atol=1e-12)
            np.testing.assert_allclose(p.nmse_segment[layer], nmse(mine, dense, seg), rtol=1e-5, atol=1e-12)
        assert p.segment_queries == seg.numel() and p.tokens == meta.length and p.flops_source == "layout"
        explicit = sum(
            int(materialize(head_mask(meta, cats[i], w), meta.length, info.num_heads).sum())
            for i, w in enumerate(info.sliding_windows)
        )
        assert p.sparse_flops == 4.0 * info.head_dim * explicit
        assert "layout_metadata" in p.overhead_ms and p.attention_ms > 0
    assert any(np.max(p.nmse_segment) > 1e-4 for p in rows["bs"])  # sparse heads change image rows ...
    for p in rows["dense"]:
        assert np.max(p.nmse_all) == 0.0 and p.reduction == 0.0 and p.sparse_flops == p.dense_flops

    for p, sample in zip(rows["stream"], samples):  # a dynamic method: the pairs it computed
        meta = LayoutMeta.build(qwen.prepare(sample).layouts[0])
        kept = sum(
            int(materialize(streaming_mask(meta, n_sink, window, w), meta.length).sum()) for w in info.sliding_windows
        )
        assert p.flops_source == "measured" and p.sparse_flops == 4.0 * info.head_dim * info.num_heads * kept

    # the section: numbers from the rows, accuracy and agreement from the accuracy job's rows
    s = section(out.run_dir)
    t = text(s)
    mean = float(np.mean([p.reduction for p in rows["bs"]]))
    nm = float(np.mean([p.nmse_segment for p in rows["bs"]]))
    per_layer = np.mean([p.nmse_segment for p in rows["bs"]], axis=(0, 2))
    assert (
        f"{100 * mean:.1f}%" in t
        and f"{nm:.3f}" in t
        and f"{per_layer.max():.3f} (layer {int(per_layer.argmax())})" in t
    )
    assert "Random-weight model" in t and s.count("<svg") == 1
    answered = [r for r in folder.manifest().units if r.unit.type == "accuracy"]
    acc = {m.name: m.value for m in AccuracyJob().metrics(folder, answered)}
    (group,) = BaselinesJob()._groups(folder, units)
    cell = next(m for m in group["methods"] if m["method"] == "bs")["accuracy"]
    # the cell is the accuracy job's own table row (read through JobType.tables, never recomputed)
    assert cell == next(r for r in AccuracyJob().table(folder, answered, "accuracy") if r["method"] == "bs")
    assert cell["accuracy"] == acc["accuracy/qwen/offline/bs/accuracy"]
    assert next(m for m in group["methods"] if m["method"] == "stream")["accuracy"] is None  # no accuracy job covers it
    if cell["agreement"] is not None:
        assert cell["agreement"] == acc["accuracy/qwen/offline/bs/agreement"]
        assert f"{100 * cell['agreement']:.1f}% vs dense" in t
    else:  # random weights: no pair of answers parsed, so there is no agreement to show
        assert "accuracy/qwen/offline/bs/agreement" not in acc
    metrics = {m.name: m.value for m in BaselinesJob().metrics(folder, units)}
    assert metrics["baselines/qwen/offline/bs/flops_reduction_mean"] == pytest.approx(mean)
    assert metrics["baselines/qwen/offline/bs/nmse_segment_mean"] == pytest.approx(nm)
    md = (out.run_dir / "report.md").read_text()
    assert "## Baseline comparison" in md and f"{100 * mean:.1f}%" in md


# ------------------------------------------------------------------------------------- search, resume


def test_pattern_search_from_a_config_and_resume(registry, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    methods = {"mm": {"plugin": "mminference", "options": {"pattern_config": "pub/qwen.json", "backend": "reference"}}}
    candidates = [
        {
            "pattern": "vertical_slash",
            "boundary": "none",
            "vertical_size": random.randint(4, 16),
            "slash_size": random.randint(16, 64),
        },
        {"pattern": "block_sparse", "boundary": "2d_boundary", "top_k": random.randint(1, 3)},
    ]
    search = {
        "method": "mm",
        "task": "search",
        "sample": random.randint(0, 3),
        "publish": "pub/{model}.json",
        "options": {"max_density": random.choice([0.3, 0.5]), "candidates": candidates},
    }
    job = {
        "type": "baselines",
        "methods": ["mm"],
        "tasks": ["offline"],
        "limit": 1,
        "search": search,
        "gpu": None,
    }

    with pytest.raises(
        ConfigError,
        match=r"jobs\[0\]\.methods\[0\]: method 'mm' reads pattern_config 'pub/qwen.json', which does not exist",
    ):
        parse_config(config(tmp_path, checkpoint, methods, [{**job, "search": None}]), registry)
    with pytest.raises(ConfigError, match=r"search\.task: 'nope' is not defined"):
        parse_config(config(tmp_path, checkpoint, methods, [{**job, "search": {**search, "task": "nope"}}]), registry)
    # the job asks the method's plugin for its search and validates the options with it
    with pytest.raises(ConfigError, match=r"search\.options: invalid for 'mminference'"):
        bad = {**search, "options": {"max_density": 2.0}}
        parse_config(config(tmp_path, checkpoint, methods, [{**job, "search": bad}]), registry)
    plain = {**methods, "d": {"plugin": "dense"}}
    with pytest.raises(ConfigError, match=r"search\.method: 'd' \(plugin 'dense'\) needs no offline search"):
        parse_config(config(tmp_path, checkpoint, plain, [{**job, "search": {**search, "method": "d"}}]), registry)

    answers = {"type": "accuracy", "methods": ["mm"], "tasks": ["offline"], "baseline": None, "limit": 1}

    def fingerprints(**change) -> dict[str, str]:  # the accuracy job reads the searched patterns too
        cfg = parse_config(config(tmp_path, checkpoint, methods, [{**job, **change}, answers]), registry)
        return {u.id: u.fingerprint for _, u in plan(cfg)}

    first = fingerprints()
    assert fingerprints(limit=2) == first  # raising the limit resumes
    changed = fingerprints(search={**search, "options": {**search["options"], "max_density": 0.9}})
    assert all(changed[k] != first[k] for k in first)  # another search redoes the patterns and the comparison
    changed = fingerprints(search={**search, "options": {**search["options"], "candidates": candidates[:1]}})
    assert all(changed[k] != first[k] for k in first)

    calls = []
    import bsight.harness.jobs.baselines as module

    real = module.measure_prompt
    monkeypatch.setattr(module, "measure_prompt", lambda *a: calls.append(a[-1].id) or real(*a))
    out = run(registry, config(tmp_path, checkpoint, methods, [job]), tmp_path)
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    search_rec, mm_rec = folder.manifest().units
    (stored,) = folder.rows(search_rec.unit, BaselinesRow)
    cfg = PatternConfig.model_validate(stored.artifact)
    sample = list(OfflineImages({**TASK["options"], "per_subtask": 1}).samples())[search["sample"]]
    assert cfg.search.sample == sample.id and cfg.search.max_density == search["options"]["max_density"]
    tried = [HeadPattern.model_validate(c) for c in candidates]
    assert all(
        h.model_copy(update={"nmse": None, "density": None}) in tried for layer in cfg.patterns for h in layer
    )  # only the given candidates
    assert (
        PatternConfig.load(tmp_path / "pub" / "qwen.json")
        == cfg
        == PatternConfig.load(out.run_dir / search_rec.info["files"]["artifact"])
    )
    density = search["options"]["max_density"]
    assert mm_rec.info["notes"] == [f"patterns: searched (sample {sample.id}, max density {density:g})"]
    (row,) = folder.rows(mm_rec.unit, BaselinesRow)
    assert row.prompt.flops_source == "measured" and {"pattern_estimation", "layout_metadata"} <= set(
        row.prompt.overhead_ms
    )
    assert calls == [row.key]

    again = run(registry, config(tmp_path, checkpoint, methods, [{**job, "limit": 2}]), tmp_path)
    assert not again.failed
    rows = RunFolder.open(again.run_dir).rows(mm_rec.unit, BaselinesRow)
    assert [r.key for r in rows] == [s.id for s in list(OfflineImages(TASK["options"]).samples())[:2]]
    assert rows[0] == row and len(calls) == 2  # the stored prompt is kept, only the new one ran; no second search
    assert "MMInference offline pattern search" in text(section(again.run_dir))


# ------------------------------------------------------------------------------------------ GPU part


def test_sweep_methods_are_the_scripts():
    assert set(typing.get_args(SweepMethod)) == set(baselines_sweep.METHODS)


def test_gpu_part_measured_published_or_missing(registry, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = baselines_sweep.main(
        [
            "--out",
            str(tmp_path / "sweep.json"),
            "--small",
            "--lengths",
            "320",
            "--reps",
            "1",
            "--methods",
            "dense,blindsight",
        ]
    )
    base = {"type": "baselines", "methods": ["dense"], "tasks": ["offline"], "limit": 1}
    jobs = [
        {**base, "name": "published", "gpu": {"source": "published", "published": "sweep.json"}},
        {**base, "name": "missing"},  # the default file does not exist outside the repository checkout's reports/
        {**base, "name": "measured", "gpu": {"small": True, "lengths": [320], "reps": 1, "methods": ["dense"]}},
    ]
    monkeypatch.setattr(
        "bsight.harness.jobs.published.find_published", lambda p: Path(p) if Path(p).is_file() else None
    )
    with pytest.raises(ConfigError, match=r"gpu\.published: 'gone\.json' not found"):
        parse_config(
            config(tmp_path, checkpoint, {}, [{**base, "gpu": {"source": "published", "published": "gone.json"}}]),
            registry,
        )
    out = run(registry, config(tmp_path, checkpoint, {}, jobs), tmp_path)
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    gpu = {r.unit.job: r for r in folder.manifest().units if r.unit.model is None}
    assert gpu["published"].info["source"] == "published" and gpu["missing"].info["source"] == "none"
    assert gpu["measured"].info["source"] == "measured" and gpu["measured"].unit.id == "measured/gpu/measure"
    (pub,) = folder.rows(gpu["published"].unit, BaselinesRow)
    (meas,) = folder.rows(gpu["measured"].unit, BaselinesRow)
    assert (
        pub.timing.model_dump() == doc["rows"][0]
        and set(pub.timing.methods) == {"dense", "blindsight/intra_image_sink"}
        and set(meas.timing.methods) == {"dense"}
    )
    t = text(section(out.run_dir))
    bs, dense = pub.timing.methods["blindsight/intra_image_sink"], pub.timing.methods["dense"]
    assert f"{bs['attention_ms']:.2f} ms" in t and f"{dense['attention_ms'] / bs['attention_ms']:.2f}x" in t
    assert f"{sum(bs['overhead_ms'].values()):.2f} ms" in t and f"{100 * bs['flops_reduction']:.1f}%" in t
    assert (
        "Published results, not measured in this run" in t
        and doc["provenance"]["git_commit"][:12] in t
        and "sweep.json" in t
    )
    assert "reduced CPU shape" in t  # the published file came from --small: labelled, never taken for a GPU timing
    assert "Not measured" in t and "reports/published/baselines_h100.json" in t
    metrics = {m.name for m in BaselinesJob().metrics(folder, list(gpu.values()))}
    assert metrics == {"measured/gpu/320/dense/attention_ms"}  # published numbers are not this run's

    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/else", "rows": []}))
    bad = run(
        registry,
        config(tmp_path, checkpoint, {}, [{**base, "gpu": {"source": "published", "published": "other.json"}}]),
        tmp_path,
        name="bad",
    )
    assert bad.failed == ["baselines/gpu/published"]
    err = next(r for r in RunFolder.open(bad.run_dir).manifest().units if r.unit.model is None).error
    assert "other.json" in err and "bsight.baselines_sweep/1" in err
