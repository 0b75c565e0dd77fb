"""Job ``characterize`` on tiny real transformers VLMs and the offline task: the head map it writes is the one the
method library builds from the same prompts, parameters re-aggregate without a model run, fixed-offset sinks
are discovered on Gemma 3, a killed run resumes without redoing or losing a prompt, and the section renders."""

from __future__ import annotations

import json
import os
import random
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_run_when, quiet, write_yaml

from bsight.harness.adapter_kit import tiny_vlms  # noqa: E402
from bsight.harness.characterize import characterize_model
from bsight.harness.config import ConfigError, parse_config
from bsight.harness.jobs.characterize import SETUP_KEY, CharacterizeJob, CharacterizeRow
from bsight.harness.report import fmt_seconds
from bsight.harness.runner import execute
from bsight.harness.sinks import top_offsets
from bsight.harness.store import RunFolder
from bsight.kernels.sparsity.aggregate import build_head_map
from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo, HeadMap
from bsight.kernels.sparsity.param_sweep import SweepRow, sweep
from bsight.plugins.models.qwen2_vl import Qwen2VL
from bsight.plugins.tasks.offline_images import OfflineImages

pytestmark = pytest.mark.usefixtures("single_thread")
TASK = {"plugin": "offline_images", "options": {"image_size": 64, "per_subtask": 40}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "qwen": tiny_vlms.qwen_checkpoint(root / "qwen", seed=random.randrange(1000)),
        "gemma": tiny_vlms.gemma_checkpoint(root / "gemma"),
    }


def config(root: Path, checkpoints: dict[str, Path], jobs: list[dict], name: str = "c") -> dict:
    return {
        "run": {"name": name, "output_dir": str(root)},
        "models": {
            "qwen": {"plugin": "qwen2_vl", "options": {"checkpoint": str(checkpoints["qwen"])}},
            "gemma": {"plugin": "gemma3", "options": {"checkpoint": str(checkpoints["gemma"])}},
        },
        "methods": {"dense": {"plugin": "dense"}},
        "tasks": {"offline": TASK},
        "jobs": jobs,
    }


def run(registry, data: dict, root: Path):
    return execute(parse_config(data, registry), registry, root / data["run"]["name"], console=quiet())


def unit_rows(folder: RunFolder, model: str) -> tuple:
    rec = next(r for r in folder.manifest().units if r.unit.model == model)
    return rec, folder.rows(rec.unit, CharacterizeRow)


def test_head_map_is_the_library_head_map_of_the_same_prompts(registry, checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    taus = sorted(random.sample([0.002, 0.01, 0.03, 0.1, 0.3, 1.0], 3))
    job = {
        "type": "characterize",
        "models": ["qwen"],
        "limit": 4,
        "tau": 0.05,
        "sweep_taus": taus,
        "publish": "maps/{model}.json",
    }
    out = run(registry, config(tmp_path, checkpoints, [job]), tmp_path)
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    rec, rows = unit_rows(folder, "qwen")
    assert [r.kind for r in rows] == ["setup"] + ["prompt"] * 4 and rec.expected == 5 and rows[0].key == SETUP_KEY

    # the same prompts through the library, prefilled with full logits (the adapter's lean prefill must agree)
    adapter = Qwen2VL({"checkpoint": str(checkpoints["qwen"])})
    adapter.load()
    task = OfflineImages(TASK["options"])
    samples = list(task.samples())[:4]
    result = characterize_model(
        adapter,
        [(s.id, adapter.prepare(s)) for s in samples],
        dataset=DatasetInfo(name="offline", size=4),
        run=adapter.logits,
    )
    for mine, ref in zip([r.record for r in rows[1:]], result.prompts):
        assert mine.id == ref.id and mine.pairs == ref.pairs
        np.testing.assert_allclose(mine.nmse, ref.nmse, rtol=1e-5, atol=1e-9)
    stored = HeadMap.load(out.run_dir / rec.info["files"]["head_map"])
    expected = build_head_map(result, CharacterizationParams(tau=0.05, delta=0.2, gamma=0.5))
    assert stored.categories == expected.categories and stored.weights == "random" and stored.dataset.size == 4
    assert stored.dataset.revision == task.revision() and stored.sink_policy == adapter.layout_spec().sinks
    assert HeadMap.load(tmp_path / "maps" / "qwen.json").categories == stored.categories  # the published copy

    grid = [SweepRow.model_validate(r) for r in json.loads((out.run_dir / rec.info["files"]["sweep"]).read_text())]
    ref_grid = sweep(result, taus)
    assert [r.tau for r in grid] == taus
    for a, b in zip(grid, ref_grid):
        assert (
            a.shares == b.shares
            and a.flops_reduction_mean == pytest.approx(b.flops_reduction_mean)
            and a.nmse_mean == pytest.approx(b.nmse_mean, rel=1e-4, abs=1e-9)
        )

    html = (out.run_dir / "index.html").read_text()
    section = re.search(r'<section id="characterization">(.*?)</section>', html, re.S).group(1)
    assert section.count("<svg") == 4 and "Random-weight model" in section and "maps/qwen.json" in section
    assert all(
        (out.run_dir / "plots" / f"characterization-characterize-qwen-{k}.svg").is_file()
        for k in ("heatmap", "shares", "choice", "pareto")
    )
    assert "sink-votes" not in section  # the adapter's sinks: no votes to plot
    walls = [r.wall_s for r in rows[1:]]  # calibration cost: each prompt timed, the section sums them
    assert all(w is not None and w > 0 for w in walls)
    total, median = fmt_seconds(sum(walls)), fmt_seconds(statistics.median(walls))
    mean = fmt_seconds(sum(walls) / 4)
    assert f"{total} in total for 4 prompts; per prompt {mean} mean, {median} median" in section
    metrics = {m.name: m.value for m in CharacterizeJob().metrics(folder, [rec])}
    assert metrics["characterize/qwen/flops_reduction_mean"] == pytest.approx(
        sweep(result, [0.05])[0].flops_reduction_mean
    )


def test_new_parameters_reaggregate_and_a_higher_limit_adds_prompts(registry, checkpoints, tmp_path):
    job = {"type": "characterize", "models": ["qwen"], "limit": 3, "tau": 0.05}
    first = run(registry, config(tmp_path, checkpoints, [job]), tmp_path)
    assert first.rows_written == 4
    folder = RunFolder.open(first.run_dir)
    setup = unit_rows(folder, "qwen")[1][0]
    tau, delta = random.choice([0.001, 0.2, 1.0]), random.choice([0.0, 0.5, 1.0])
    again = run(registry, config(tmp_path, checkpoints, [{**job, "tau": tau, "delta": delta}]), tmp_path)
    assert again.rows_written == 0 and not again.failed  # nothing re-run: the stored tables are re-aggregated
    rec, rows = unit_rows(folder, "qwen")
    assert rows[0] == setup
    hm = HeadMap.load(first.run_dir / rec.info["files"]["head_map"])
    result = CharacterizeJob()._stored(folder, rec).result
    assert (
        hm.params.tau == tau
        and hm.categories == build_head_map(result, CharacterizationParams(tau=tau, delta=delta, gamma=0.5)).categories
    )
    more = run(registry, config(tmp_path, checkpoints, [{**job, "limit": 5}]), tmp_path)
    assert more.rows_written == 2 and HeadMap.load(first.run_dir / rec.info["files"]["head_map"]).dataset.size == 5


def test_fixed_offset_sinks_are_discovered_on_gemma(registry, checkpoints, tmp_path):
    job = {"type": "characterize", "models": ["gemma"], "limit": 3, "discover_sinks": {"top_k": 2, "prompts": 2}}
    out = run(registry, config(tmp_path, checkpoints, [job]), tmp_path)
    assert not out.failed
    rec, rows = unit_rows(RunFolder.open(out.run_dir), "gemma")
    setup = rows[0].setup
    assert setup.sink_source == "discovered" and sum(setup.votes) > 0
    assert setup.sink_policy == top_offsets(torch.tensor(setup.votes), 2) and setup.sink_policy.kind == "offsets"
    assert all(0 <= o < 18 for o in setup.sink_policy.offsets)  # inside a tiny Gemma image: 16 soft tokens + boundaries
    hm = HeadMap.load(out.run_dir / rec.info["files"]["head_map"])
    assert hm.sink_policy == setup.sink_policy and hm.num_layers == 3
    assert all(r.record.num_images >= 2 for r in rows[1:])


def test_killed_run_resumes_without_redoing_a_prompt(registry, checkpoints, tmp_path):
    n = 80
    data = config(
        tmp_path / "runs", checkpoints, [{"type": "characterize", "models": ["qwen"], "limit": n}], name="killed"
    )
    cfg = write_yaml(tmp_path / "c.yaml", data)
    run_dir = tmp_path / "runs" / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = lambda: list((run_dir / "results").rglob("*.jsonl")) if (run_dir / "results").exists() else []  # noqa: E731
    kill_run_when(cfg, env, lambda: any(f.read_bytes().count(b"\n") >= 4 for f in rows()))
    files = rows()
    (path,) = files
    data_before = path.read_bytes()
    before = data_before[: data_before.rfind(b"\n") + 1]
    done = before.count(b"\n")
    assert 4 <= done < n + 1

    out = run(registry, data, tmp_path / "runs")
    assert not out.failed and out.rows_written == n + 1 - done
    after = path.read_bytes()
    assert after.startswith(before)  # finished prompts kept byte for byte, not redone
    keys = [json.loads(line)["key"] for line in after.splitlines()]
    samples = [s.id for s in OfflineImages(TASK["options"]).samples()][:n]
    assert keys == [SETUP_KEY] + samples  # each prompt once, in task order: none lost, none twice
    rec = RunFolder.open(run_dir).manifest().units[0]
    assert (rec.status, rec.rows, rec.expected) == ("done", n + 1, n + 1)
    assert HeadMap.load(run_dir / rec.info["files"]["head_map"]).dataset.size == n


def test_config_errors(registry, checkpoints, tmp_path):
    def problems(jobs: list[dict], tasks: dict | None = None) -> str:
        data = config(tmp_path, checkpoints, jobs)
        if tasks is not None:
            data["tasks"] = tasks
        with pytest.raises(ConfigError) as e:
            parse_config(data, registry)
        return str(e.value)

    assert "jobs[0].publish: this job characterizes 2 models: put '{model}' in the path" in problems(
        [{"type": "characterize", "publish": "m.json"}]
    )
    assert "jobs[0].task: 'nope' is not defined under `tasks:`; defined: offline" in problems(
        [{"type": "characterize", "task": "nope"}]
    )
    assert "jobs[0].task: name the task" in problems([{"type": "characterize"}], tasks={"a": TASK, "b": TASK})
    assert "jobs[0].models[0]: 'big' is not defined" in problems([{"type": "characterize", "models": ["big"]}])
    assert "not both" in problems(
        [{"type": "characterize", "sinks": {"fraction": 0.1}, "discover_sinks": {"top_k": 2}}]
    )
    assert "jobs[0].tau" in problems([{"type": "characterize", "tau": 0}])


def test_lean_prefill_keeps_only_the_last_position(checkpoints):
    adapter = Qwen2VL({"checkpoint": str(checkpoints["qwen"])})
    adapter.load()
    sample = next(iter(OfflineImages(TASK["options"]).samples()))
    prepared = adapter.prepare(sample)
    shapes = []
    hook = adapter.model.lm_head.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    try:
        from bsight.plugins.methods.dense import Dense

        adapter.prefill(prepared, Dense())
        adapter.logits(prepared, Dense())
    finally:
        hook.remove()
    S = prepared.inputs["input_ids"].shape[1]
    assert shapes == [
        (1, 1, adapter.model.config.get_text_config().vocab_size),
        (1, S, adapter.model.config.get_text_config().vocab_size),
    ]
