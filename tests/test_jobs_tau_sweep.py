"""Job ``tau_sweep`` on the example plugin's random-weight tiny Llama (images are its segments): each tau's head map
is the library's re-aggregation of the stored characterization, every stored number (KL over the teacher-forced
answer positions, FLOPs reduction, agreement) matches a hand computation, the section's numbers follow from the
rows, the default-tau rule picks what it says, a killed run resumes without redoing or losing a row, and config
mistakes are clear errors. Also: teacher forcing and answer prefixes on the transformers VLM adapters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import env_with, kill_run_when, quiet, write_yaml

from bsight.harness import stats
from bsight.harness.adapter_kit import prompts, tiny_vlms  # noqa: E402
from bsight.harness.config import ConfigError, parse_config
from bsight.harness.interfaces import Sample, TextPart
from bsight.harness.jobs.tau_sweep import (
    SETUP_KEY,
    DefaultRule,
    TauSweepJob,
    TauSweepRow,
    choose_tau,
    sample_key,
    tau_key,
)
from bsight.harness.jobs.ttft_estimate import estimated_ttft_speedup, published_ttft_estimate
from bsight.harness.runner import execute
from bsight.harness.store import RunFolder
from bsight.kernels.sparsity.aggregate import build_head_map
from bsight.kernels.sparsity.characterization import CharacterizationResult
from bsight.kernels.sparsity.flops import model_flops
from bsight.kernels.sparsity.headmap import CharacterizationParams, HeadMap
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.plugins.methods.blindsight import Blindsight
from bsight.plugins.methods.dense import Dense

pytestmark = pytest.mark.usefixtures("single_thread")
PUBLISHED = Path(__file__).resolve().parent.parent / "reports" / "published"
TTFT_CAPTION = (
    "estimated TTFT speedup on an H100 for a Qwen2-VL-7B-shaped prompt of 36,864 tokens, from published "
    "measurements (reports/published/ttft_h100.json, reports/published/kernel_sweep_h100.json), not measured on "
    "this machine"
)
TAUS = [0.003, 0.03, 0.3, 3.0]


def model_options() -> dict:
    return {"layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16, "image_grid": 4, "seed": random.randrange(1000)}


def config(
    root: Path, name: str, taus: list[float], model: dict, held: int = 8, limit: int = 5, rule: dict | None = None
) -> dict:
    return {
        "run": {"name": name, "output_dir": str(root), "seed": 0},
        "models": {"tiny": {"plugin": "tiny-llama", "options": model}},
        "methods": {
            "dense": {"plugin": "dense"},
            "bs": {"plugin": "blindsight", "options": {"uniform": "dense", "kernel": "reference"}},
        },
        "tasks": {
            "char": {"plugin": "brightest-image", "options": {"n": 4, "max_images": 4, "seed": 1}},
            "held": {"plugin": "brightest-image", "options": {"n": held, "max_images": 4, "seed": 2}},
        },
        "jobs": [
            {"type": "characterize", "task": "char", "tau": taus[1]},
            {
                "type": "tau_sweep",
                "taus": taus,
                "limit": limit,
                "max_new_tokens": 3,
                "method": "bs",
                "rule": rule or {"min_agreement": 0.6, "max_kl": 0.05},
            },
        ],
    }


def sweep_record(folder: RunFolder):
    return next(r for r in folder.manifest().units if r.unit.type == "tau_sweep")


@pytest.fixture(scope="module")
def swept(ext_registry, tmp_path_factory):
    """A finished run: characterize on one task, the sweep on another (random weights)."""
    root = tmp_path_factory.mktemp("sweep")
    model = model_options()
    taus = sorted(random.sample(TAUS, 3))
    data = config(root, "s", taus, model)
    out = execute(parse_config(data, ext_registry), ext_registry, root / "s", console=quiet())
    assert not out.failed, (root / "s" / "errors.log").read_text()
    return out.run_dir, data, taus


def test_rows_match_a_hand_computation(swept, ext_registry):
    run_dir, data, taus = swept
    folder = RunFolder.open(run_dir)
    rec = sweep_record(folder)
    rows = {r.key: r for r in folder.rows(rec.unit, TauSweepRow)}
    samples = list(ext_registry.get("task", "brightest-image")(data["tasks"]["held"]["options"]).samples())[:5]
    assert set(rows) == {SETUP_KEY} | {f"#{tau_key(t)}" for t in taus} | {
        sample_key(s.id, t) for s in samples for t in [None, *taus]
    }
    assert (rec.status, rec.rows, rec.expected) == ("done", len(rows), len(rows))

    # each tau's head map is the characterization re-aggregated with the characterize job's delta and gamma
    char = next(r for r in folder.manifest().units if r.unit.type == "characterize")
    result = CharacterizationResult.load(run_dir / char.info["files"]["characterization"])
    for tau in taus:
        row = rows[f"#{tau_key(tau)}"]
        expected = build_head_map(result, CharacterizationParams(tau=tau, delta=0.2, gamma=0.5))
        assert HeadMap.load(run_dir / row.head_map.file).categories == expected.categories
        assert row.head_map.sweep.shares == pytest.approx(expected.shares())

    # one random (sample, tau) recomputed by hand: greedy answer, KL over the teacher-forced answer, FLOPs
    adapter = ext_registry.get("model", "tiny-llama")(data["models"]["tiny"]["options"])
    adapter.load()
    task = ext_registry.get("task", "brightest-image")(data["tasks"]["held"]["options"])
    sample, tau = random.choice(samples), random.choice(taus)
    row, dense_row = rows[sample_key(sample.id, tau)], rows[sample_key(sample.id, None)]
    hm = HeadMap.load(run_dir / rows[f"#{tau_key(tau)}"].head_map.file)
    bs, dense = Blindsight({"head_map": hm, "kernel": "reference"}), Dense()
    bs.setup(adapter.info)
    dense.setup(adapter.info)
    prepared = adapter.prepare(sample)
    forced = adapter.prepare(sample, continuation=sample.answer)
    n = forced.num_tokens - prepared.num_tokens
    assert n == row.answer_tokens == len(sample.answer)
    p = torch.softmax(adapter.logits(forced, dense).double()[0, -n - 1 : -1], -1)
    q = torch.softmax(adapter.logits(forced, bs).double()[0, -n - 1 : -1], -1)
    kl = (p * (p.log() - q.log())).sum(-1)
    assert row.fidelity.kl_mean == pytest.approx(float(kl.mean()), rel=1e-6, abs=1e-12)
    assert row.fidelity.kl_max == pytest.approx(float(kl.max()), rel=1e-6, abs=1e-12)
    assert row.fidelity.top1_match == pytest.approx(float((p.argmax(-1) == q.argmax(-1)).double().mean()))
    layout = prepared.layouts[0].with_sinks(hm.sink_policy)
    info = adapter.info
    counted = model_flops(LayoutMeta.build(layout.unpadded()), hm.category_array(), info.sliding_windows, info.head_dim)
    assert row.fidelity.flops_reduction == pytest.approx(counted["reduction"])
    text = adapter.generate(prepared, bs, 3).text
    assert row.answer.generation == text and row.answer.extracted == task.extract(text, sample).answer
    a, b = row.answer.extracted, dense_row.answer.extracted
    # two unparsed answers are not an agreement
    assert row.fidelity.agrees == (a is not None and b is not None and a.lower() == b.lower())
    assert dense_row.answer.generation == adapter.generate(prepared, dense, 3).text and dense_row.fidelity is None


def test_section_numbers_follow_from_the_rows(swept):
    run_dir, data, taus = swept
    folder = RunFolder.open(run_dir)
    rec = sweep_record(folder)
    rows = folder.rows(rec.unit, TauSweepRow)
    section = TauSweepJob().report(folder, [rec])
    (unit,) = section.context["units"]
    dense = {r.answer.sample_id: r.answer for r in rows if r.kind == "sample" and r.tau is None}
    rule = DefaultRule(**data["jobs"][1]["rule"])
    by_hand = []
    for tau, point in zip(taus, unit["points"]):
        mine = [r for r in rows if r.kind == "sample" and r.tau == tau]
        assert point["tau"] == tau and point["n"] == len(mine) == len(dense)
        parsed = [r for r in mine if None not in (r.answer.extracted, dense[r.answer.sample_id].extracted)]
        agreement = np.mean([r.fidelity.agrees for r in parsed]) if parsed else float("nan")
        assert point["agreement"] == pytest.approx(agreement, nan_ok=True)
        assert point["either_unparsed"] == pytest.approx(1 - len(parsed) / len(mine))
        assert point["kl_mean"] == pytest.approx(np.mean([r.fidelity.kl_mean for r in mine]))
        assert point["flops_heldout"] == pytest.approx(np.mean([r.fidelity.flops_reduction for r in mine]))
        assert point["accuracy"] == pytest.approx(np.mean([r.answer.correct for r in mine]))
        delta = stats.paired_bootstrap(
            [r.answer.correct for r in mine], [dense[r.answer.sample_id].correct for r in mine], seed=0
        )
        assert (point["delta"].delta, point["delta"].lo, point["delta"].hi) == pytest.approx(
            (delta.delta, delta.lo, delta.hi)
        )
        ok = point["agreement"] >= rule.min_agreement and point["kl_mean"] <= rule.max_kl
        assert point["qualifies"] == ok
        by_hand.append((point["flops_heldout"], -tau, tau, ok))
    best = max((b for b in by_hand if b[3]), default=None)
    assert unit["chosen"] == (best[2] if best else None)
    assert rec.info["headline"] == unit["headline"] == "micro"  # the task's own headline score
    # a task scored by the mean of its subtasks (MMIU, BLINK) gets that score and a within-subtask bootstrap
    spec = TauSweepJob().spec_of(rec)
    for tau, point in zip(taus, TauSweepJob._points(rows, spec, 0, "macro")):
        mine = [r for r in rows if r.kind == "sample" and r.tau == tau]
        subtasks = [r.answer.subtask for r in mine]
        assert point["accuracy"] == pytest.approx(stats.macro_accuracy(subtasks, [r.answer.correct for r in mine]))
        delta = stats.paired_bootstrap(
            [r.answer.correct for r in mine], [dense[r.answer.sample_id].correct for r in mine], seed=0, groups=subtasks
        )
        assert (point["delta"].delta, point["delta"].lo, point["delta"].hi) == pytest.approx(
            (delta.delta, delta.lo, delta.hi)
        )
    assert unit["used_tau"] == data["jobs"][0]["tau"]
    md = (run_dir / "report.md").read_text()
    assert "Tau sweep" in md and "Rule: the largest mean FLOPs reduction" in md
    assert f"{unit['dense_accuracy'] * 100:.1f}% over {len(dense)} samples" in md
    if best is not None:
        chosen = HeadMap.load(run_dir / rec.info["files"]["chosen"])
        assert chosen.categories == HeadMap.load(run_dir / f"headmaps/tau_sweep/tiny.tau{best[2]:g}.json").categories
        assert "**chosen**" in md
    else:
        assert "none of the swept taus meets the rule" in md


def test_default_tau_rule():
    rule = DefaultRule(min_agreement=random.uniform(0.5, 0.9), max_kl=random.uniform(0.01, 0.1))
    for _ in range(200):
        points = [
            {
                "tau": t,
                "n": random.randint(0, 3),
                "agreement": random.random(),
                "kl_mean": random.uniform(0, 0.2),
                "flops_heldout": random.choice([0.1, 0.2, 0.3]),
            }
            for t in sorted(random.sample(TAUS + [0.01, 0.1], 4))
        ]
        ok = [p for p in points if p["n"] and p["agreement"] >= rule.min_agreement and p["kl_mean"] <= rule.max_kl]
        chosen = choose_tau(points, rule)
        if not ok:
            assert chosen is None
            continue
        top = max(p["flops_heldout"] for p in ok)
        assert chosen == min(p["tau"] for p in ok if p["flops_heldout"] == top)  # ties: the smaller tau


def test_ttft_estimate_is_amdahl_over_the_published_numbers():
    """All dense: 1.0; all one category: that category's Amdahl bound, by hand from the published JSONs; a mix:
    the share-weighted attention time."""
    p, ratios = random.uniform(0.05, 0.9), {"sink": 0.1, "intra_image": 0.2, "intra_image_sink": 0.3}
    assert estimated_ttft_speedup({"dense": 1.0, "sink": 0.0}, p, ratios) == pytest.approx(1.0)
    assert estimated_ttft_speedup({"sink": 1.0}, p, ratios) == pytest.approx(1 / ((1 - p) + p * 0.1))
    mix = {"dense": 0.5, "intra_image": 0.25, "intra_image_sink": 0.25}
    assert estimated_ttft_speedup(mix, p, ratios) == pytest.approx(1 / ((1 - p) + p * (0.5 + 0.05 + 0.075)))
    with pytest.raises(ValueError, match="no attention time ratio for categories \\['other'\\]"):
        estimated_ttft_speedup({"other": 1.0}, p, ratios)
    with pytest.raises(ValueError, match="attention share"):
        estimated_ttft_speedup({"dense": 1.0}, 1.5, ratios)

    ttft = json.loads((PUBLISHED / "ttft_h100.json").read_text())
    sweep = json.loads((PUBLISHED / "kernel_sweep_h100.json").read_text())
    (dense,) = [e["dense"] for e in ttft["lengths"] if e["tokens"] == 36_864]
    share = dense["attention_ms"] / dense["ttft_ms"]
    ms = {
        (r["method"], r["category"]): r["ms"]
        for r in sweep["rows"]
        if r["tokens"] == 36_864 and r["layout"] == "mixed" and r.get("ms") is not None
    }
    est = published_ttft_estimate()
    assert est is not None and est.attention_share == pytest.approx(share)
    assert est.speedup({"dense": 1.0, "sink": 0.0, "intra_image": 0.0, "intra_image_sink": 0.0}) == pytest.approx(1.0)
    for c in ("sink", "intra_image", "intra_image_sink"):
        bound = 1 / ((1 - share) + share * ms[("ours", c)] / ms[("cudnn", "dense")])
        assert est.speedup({c: 1.0}) == pytest.approx(bound) == est.bounds()[c]
        assert 1.0 < bound < 1 / (1 - share)
    assert est.caption() == TTFT_CAPTION
    note = est.note()
    for doc in (ttft, sweep):  # every number names its provenance: file, commit, GPU
        assert doc["provenance"]["git_commit"][:12] in note and doc["provenance"]["gpu"] in note


def test_report_shows_fidelity_against_estimated_ttft(swept):
    """Beside the FLOPs plot: the same per-tau numbers against the estimated TTFT speedup, captioned as an estimate
    from published H100 measurements, with a table column and a provenance note."""
    run_dir, _, taus = swept
    folder = RunFolder.open(run_dir)
    rec = sweep_record(folder)
    section = TauSweepJob().report(folder, [rec])
    (unit,) = section.context["units"]
    est = published_ttft_estimate()
    for point in unit["points"]:
        assert point["ttft_speedup"] == pytest.approx(est.speedup(point["shares"]))
        if point["shares"]["dense"] == 1.0:
            assert point["ttft_speedup"] == pytest.approx(1.0)
    plot = unit["ttft_plot"]
    assert plot is not None and plot in section.plots and TTFT_CAPTION in plot.title
    assert "estimated TTFT speedup (x)" in plot.svg
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "index.html").read_text()
    for text in (md, html):
        assert TTFT_CAPTION in text and "est. TTFT speedup (H100, 36,864 tokens" in text
        assert "commit 0b709b6a87a5" in text and "commit bf57d0541e41" in text and "NVIDIA H100 80GB HBM3" in text
    assert f"]({plot.file})" in md and (run_dir / plot.file).is_file()
    assert md.index(unit["plot"].file) < md.index(plot.file)  # next to the FLOPs plot, after it
    for point in unit["points"]:
        assert f"{point['ttft_speedup']:.3f}x" in md


def test_killed_run_resumes_without_redoing_a_row(ext_registry, ext_paths, tmp_path):
    taus = [0.03, 3.0]
    data = config(tmp_path / "runs", "killed", taus, model_options(), held=24, limit=24)
    cfg = write_yaml(tmp_path / "c.yaml", data)
    run_dir = tmp_path / "runs" / "killed"
    rows = lambda: list((run_dir / "results" / "tau_sweep").glob("*.jsonl")) if (run_dir / "results").exists() else []  # noqa: E731
    kill_run_when(
        cfg, env_with(ext_paths), lambda: any(f.read_bytes().count(b"\n") >= 1 + len(taus) + 6 for f in rows())
    )
    files = rows()
    (path,) = files
    written = path.read_bytes()
    before = written[: written.rfind(b"\n") + 1]
    done = before.count(b"\n")
    total = 1 + len(taus) + 24 * (1 + len(taus))
    assert done < total

    out = execute(parse_config(data, ext_registry), ext_registry, run_dir, console=quiet())
    assert not out.failed and out.rows_written == total - done
    after = path.read_bytes()
    assert after.startswith(before)  # finished rows kept byte for byte, not redone
    keys = [json.loads(line)["key"] for line in after.splitlines()]
    assert len(keys) == len(set(keys)) == total


def test_config_errors(ext_registry, tmp_path):
    def problems(edit) -> str:
        data = config(tmp_path, "e", TAUS, model_options())
        edit(data)
        with pytest.raises(ConfigError) as e:
            parse_config(data, ext_registry)
        return str(e.value)

    assert (
        "jobs[0].characterize: no job before this one writes characterization tables (jobs writing them: none"
        in problems(lambda d: d["jobs"].reverse())
    )
    assert "jobs[1].characterize: no job named 'other' before this one writes characterization tables" in problems(
        lambda d: d["jobs"][1].update(characterize="other")
    )
    assert "jobs[1].task: 'char' is the task job 'characterize' characterizes on" in problems(
        lambda d: d["jobs"][1].update(task="char")
    )
    # the sweep asks the method's plugin whether it takes a head map; it never names one
    assert "jobs[1].method: 'dense' (plugin 'dense') takes no head map; methods that do: bs" in problems(
        lambda d: d["jobs"][1].update(method="dense")
    )
    assert "jobs[1].method: name the method from `methods:` that runs each tau's head map" in problems(
        lambda d: d["jobs"][1].pop("method")
    )
    assert "jobs[1].models[0]: 'big' is not defined" in problems(lambda d: d["jobs"][1].update(models=["big"]))
    assert "jobs[1].baseline: 'nope' is not defined under `methods:`" in problems(
        lambda d: d["jobs"][1].update(baseline="nope")
    )
    assert "jobs[1].taus" in problems(lambda d: d["jobs"][1].update(taus=[0.1, 0.1]))
    assert "jobs[1].taus" in problems(lambda d: d["jobs"][1].update(taus=[0.0]))


@pytest.mark.parametrize("kind", ["qwen2_vl", "gemma3"])
def test_vlm_adapters_teacher_force_after_the_answer_prefix(kind, tmp_path):
    """HF VLM adapters: the answer prefix ends the prompt, a continuation is appended with the prompt as an exact
    prefix (token types and layout unchanged), and ``last`` keeps the tail of the full logits."""
    from bsight.plugins.models.gemma3 import Gemma3
    from bsight.plugins.models.qwen2_vl import Qwen2VL

    if kind == "gemma3":
        adapter = Gemma3({"checkpoint": str(tiny_vlms.gemma_checkpoint(tmp_path / kind)), "device": "cpu"})
    else:
        adapter = Qwen2VL(
            {"checkpoint": str(tiny_vlms.qwen_checkpoint(tmp_path / kind, seed=random.randrange(100))), "device": "cpu"}
        )
    adapter.load()
    rng = np.random.default_rng()
    sample: Sample = prompts.interleaved_sample(rng, [(56, 56), (56, 84)])
    sample = sample.model_copy(
        update={"answer_prefix": " the dog", "parts": [*sample.parts, TextPart(text=" Tell me.")]}
    )
    prepared = adapter.prepare(sample)
    ids = prepared.inputs["input_ids"][0]
    assert adapter.tokenizer.decode(ids).endswith(" the dog")
    forced = adapter.prepare(sample, continuation=" red car")
    more = forced.inputs["input_ids"][0]
    n = more.shape[0] - ids.shape[0]
    assert (
        n > 0
        and torch.equal(more[: ids.shape[0]], ids)
        and adapter.tokenizer.decode(more[ids.shape[0] :]) == " red car"
    )
    for key, value in prepared.inputs.items():
        if key != "input_ids" and value.shape[:2] == ids[None].shape:  # per-token tensors: text after the prompt
            tail = forced.inputs[key][0, ids.shape[0] :]
            assert torch.equal(forced.inputs[key][0, : ids.shape[0]], value[0]) and bool(
                (tail == (1 if key == "attention_mask" else 0)).all()
            )
    assert forced.layouts[0].spans == prepared.layouts[0].spans
    dense = Dense()
    full = adapter.logits(forced, dense)
    tail = adapter.logits(forced, dense, last=n + 1)
    assert tail.shape[1] == n + 1 and torch.allclose(tail, full[:, -n - 1 :], atol=1e-5)
