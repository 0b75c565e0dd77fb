"""Job ``flops`` on tiny real transformers VLMs and the offline task: exact counts from the layout alone for static
head maps (checked against explicitly materialized masks, sliding windows and the head map's sinks included, with
the model never run), measured counts for a dynamic method, head maps from an earlier characterize job, the
section and the metrics."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import quiet

from bsight.harness.adapter_kit import tiny_vlms  # noqa: E402
from bsight.harness.config import ConfigError, parse_config
from bsight.harness.jobs.flops import FlopsJob, FlopsRow
from bsight.harness.runner import execute, plan
from bsight.harness.store import RunFolder
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.masks import base_mask, head_mask, materialize
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.plugins.methods.streaming import streaming_mask
from bsight.plugins.models.gemma3 import Gemma3
from bsight.plugins.models.hf_vlm import HFVLMAdapter
from bsight.plugins.models.qwen2_vl import Qwen2VL
from bsight.plugins.tasks.offline_images import OfflineImages

pytestmark = pytest.mark.usefixtures("single_thread")
TASK = {"plugin": "offline_images", "options": {"image_size": 64, "per_subtask": 2}}
LIMIT = 4
ADAPTERS = {"qwen": Qwen2VL, "gemma": Gemma3}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "qwen": tiny_vlms.qwen_checkpoint(root / "qwen", num_layers=3),
        "gemma": tiny_vlms.gemma_checkpoint(root / "gemma"),
    }


def config(root: Path, checkpoints: dict[str, Path], methods: dict, jobs: list[dict], name: str = "f") -> dict:
    return {
        "run": {"name": name, "output_dir": str(root)},
        "models": {m: {"plugin": ADAPTERS[m].name, "options": {"checkpoint": str(p)}} for m, p in checkpoints.items()},
        "methods": {"dense": {"plugin": "dense"}, **methods},
        "tasks": {"offline": TASK},
        "jobs": jobs,
    }


def random_head_map(path: Path, layers: int, heads: int, sinks: SinkPolicy) -> HeadMap:
    cats = np.random.default_rng().integers(0, len(Category), (layers, heads))
    hm = HeadMap.uniform("tiny", layers, heads, "dense", sinks)
    hm.categories = [[Category(int(c)).label for c in row] for row in cats]
    hm.save(path)
    return hm


def loaded(kind: str, checkpoint: Path) -> HFVLMAdapter:
    adapter = ADAPTERS[kind]({"checkpoint": str(checkpoint)})
    adapter.load()
    return adapter


def explicit_flops(adapter: HFVLMAdapter, cats: np.ndarray, sinks: SinkPolicy | None) -> list[tuple[float, float]]:
    """(dense, sparse) FLOPs per prompt by counting materialized S x S masks, layer by layer."""
    info = adapter.info
    out = []
    for sample in list(OfflineImages(TASK["options"]).samples())[:LIMIT]:
        layout = adapter.prepare(sample).layouts[0]
        meta = LayoutMeta.build((layout.with_sinks(sinks) if sinks else layout).unpadded())
        dense = sparse = 0
        for layer, window in enumerate(info.sliding_windows):
            dense += int(materialize(base_mask(meta, window), meta.length).sum()) * info.num_heads
            sparse += int(
                materialize(head_mask(meta, torch.tensor(cats[layer]), window), meta.length, info.num_heads).sum()
            )
        out.append((4.0 * info.head_dim * dense, 4.0 * info.head_dim * sparse))
    return out


def test_static_head_maps_are_counted_exactly_without_running_the_model(registry, checkpoints, tmp_path, monkeypatch):
    qwen, gemma = loaded("qwen", checkpoints["qwen"]), loaded("gemma", checkpoints["gemma"])
    sinks = SinkPolicy(
        fraction=random.choice([0.1, 0.3, 0.5])
    )  # not the adapter's: the head map's policy must be applied
    hm = random_head_map(tmp_path / "hm.json", qwen.info.num_layers, qwen.info.num_heads, sinks)
    uniform = random.choice(["sink", "intra_image", "intra_image_sink"])
    methods = {
        "mapped": {"plugin": "blindsight", "options": {"head_map": str(tmp_path / "hm.json")}},
        "uniform": {"plugin": "blindsight", "options": {"uniform": uniform}},
    }
    jobs = [
        {"type": "flops", "models": ["qwen"], "methods": ["dense", "mapped"], "limit": LIMIT},
        {"type": "flops", "name": "gemma", "models": ["gemma"], "methods": ["dense", "uniform"], "limit": LIMIT},
    ]

    def never(*args, **kwargs):
        raise AssertionError("a static head map needs no model run")

    for name in ("prefill", "logits", "generate", "forward"):
        monkeypatch.setattr(HFVLMAdapter, name, never)
    out = execute(
        parse_config(config(tmp_path, checkpoints, methods, jobs), registry), registry, tmp_path / "f", console=quiet()
    )
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    rows = {rec.unit.id: folder.rows(rec.unit, FlopsRow) for rec in folder.manifest().units}
    assert all(len(r) == LIMIT for r in rows.values())

    g = gemma.info
    assert (
        g.sliding_windows[0] is not None and g.sliding_windows[1] is None
    )  # windows and bidirectional images both exercised
    expected = {
        "flops/qwen/mapped/offline": explicit_flops(qwen, hm.category_array(), sinks),
        "gemma/gemma/uniform/offline": explicit_flops(
            gemma, np.full((g.num_layers, g.num_heads), Category.parse(uniform).value), None
        ),
    }
    for unit, ref in expected.items():
        for row, (dense, sparse) in zip(rows[unit], ref):
            assert (row.dense_flops, row.sparse_flops, row.source) == (dense, sparse, "layout")
            assert row.reduction == pytest.approx(1 - sparse / dense)
    for unit in ("flops/qwen/dense/offline", "gemma/gemma/dense/offline"):
        assert all(r.reduction == 0.0 and r.sparse_flops == r.dense_flops for r in rows[unit])
    assert any(r.reduction > 0 for r in rows["gemma/gemma/uniform/offline"])

    html = (out.run_dir / "index.html").read_text()
    section = re.search(r'<section id="flops">(.*?)</section>', html, re.S).group(1)
    assert section.count("<svg") == 2  # one CDF per (model, task)
    mapped = rows["flops/qwen/mapped/offline"]
    mean = float(np.mean([r.reduction for r in mapped]))
    assert f"{100 * mean:.1f}%" in section
    metrics = {m.name: m.value for m in FlopsJob().metrics(folder, folder.manifest().units)}
    assert metrics["flops/qwen/offline/mapped/flops_reduction_mean"] == pytest.approx(mean)


def test_dynamic_methods_count_what_they_computed(registry, checkpoints, tmp_path):
    n_sink, window = random.randint(1, 8), random.randint(8, 40)
    methods = {"stream": {"plugin": "streaming", "options": {"n_sink": n_sink, "window": window}}}
    jobs = [
        {"type": "flops", "models": ["qwen"], "methods": ["stream"], "limit": 2, "run_model": True},
        {"type": "flops", "name": "static_only", "models": ["qwen"], "methods": ["stream"], "limit": 2},
    ]
    out = execute(
        parse_config(config(tmp_path, {"qwen": checkpoints["qwen"]}, methods, jobs), registry),
        registry,
        tmp_path / "f",
        console=quiet(),
    )
    assert out.failed == ["static_only/qwen/stream/offline"]
    folder = RunFolder.open(out.run_dir)
    measured, refused = folder.manifest().units
    assert "no static head categories" in refused.error and "run_model: true" in refused.error
    qwen = loaded("qwen", checkpoints["qwen"])
    info = qwen.info
    for row, sample in zip(folder.rows(measured.unit, FlopsRow), OfflineImages(TASK["options"]).samples()):
        meta = LayoutMeta.build(qwen.prepare(sample).layouts[0].unpadded())
        kept = sum(
            int(materialize(streaming_mask(meta, n_sink, window, w), meta.length).sum()) for w in info.sliding_windows
        )
        dense = sum(int(materialize(base_mask(meta, w), meta.length).sum()) for w in info.sliding_windows)
        assert row.source == "measured" and row.sparse_flops == 4.0 * info.head_dim * info.num_heads * kept
        assert row.dense_flops == 4.0 * info.head_dim * info.num_heads * dense


def test_head_maps_of_an_earlier_characterize_job(registry, checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    methods = {"bs": {"plugin": "blindsight", "options": {"head_map": "maps/qwen.json"}}}
    characterize = {
        "type": "characterize",
        "models": ["qwen"],
        "task": "offline",
        "limit": 2,
        "publish": "maps/{model}.json",
    }
    flops = {"type": "flops", "models": ["qwen"], "methods": ["bs"], "limit": 2}
    ckpt = {"qwen": checkpoints["qwen"]}

    with pytest.raises(
        ConfigError, match=r"jobs\[0\]\.methods\[0\]: method 'bs' reads head_map 'maps/qwen.json', which does not exist"
    ):
        parse_config(
            config(tmp_path, ckpt, methods, [flops, characterize]), registry
        )  # written only after the flops job

    def fingerprint(tau: float) -> str:
        cfg = parse_config(config(tmp_path, ckpt, methods, [{**characterize, "tau": tau}, flops]), registry)
        return next(u.fingerprint for _, u in plan(cfg) if u.type == "flops")

    assert fingerprint(0.05) == fingerprint(0.05) != fingerprint(0.2)  # a re-characterization recounts

    data = config(tmp_path, ckpt, methods, [characterize, flops])
    out = execute(parse_config(data, registry), registry, tmp_path / "f", console=quiet())
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    char_rec, flops_rec = folder.manifest().units
    hm = HeadMap.load(tmp_path / "maps" / "qwen.json")
    assert flops_rec.info["head_map"]["weights"] == "random" and flops_rec.info["head_map"]["shares"] == hm.shares()
    assert (out.run_dir / char_rec.info["files"]["head_map"]).read_text() == (
        tmp_path / "maps" / "qwen.json"
    ).read_text()
    rows = folder.rows(flops_rec.unit, FlopsRow)
    ref = explicit_flops(loaded("qwen", checkpoints["qwen"]), hm.category_array(), hm.sink_policy)
    assert [(r.dense_flops, r.sparse_flops) for r in rows] == ref[:2]
    section = re.search(r'<section id="flops">(.*?)</section>', (out.run_dir / "index.html").read_text(), re.S).group(1)
    assert "characterized on random weights" in section
