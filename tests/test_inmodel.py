"""Issue 16: the in-model GPU benchmark (gpu.yaml). CPU: the whole path on a tiny model, the published H100 results
and their target checks, and exit 2 for a GPU config without CUDA. The GPU test runs on a CUDA machine only
(`python -m pytest -q tests/test_inmodel.py` there; the published numbers came from
`python -m bsight.harness.benchmarks.inmodel gpu.yaml ...`, see reports/published/inmodel_h100.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bsight.harness.benchmarks import inmodel
from bsight.harness.jobs.inmodel import InModelRow, _rows, check_targets, non_attention_spread, rows_by_commit

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "reports" / "published" / "inmodel_h100.json"


def test_tiny_model_whole_path_on_cpu(tmp_path):
    spec = {
        "archs": ["qwen2-vl-7b"],
        "tiny": True,
        "device": "cpu",
        "lengths": [300],
        "image_sizes": [[112, 112]],
        "methods": ["dense", "blindsight"],
        "decode_tokens": 1,
        "repeats": 1,
        "decode_backends_max_tokens": 0,
    }
    out = inmodel.run(spec, tmp_path / "r.json")
    (entry,) = out["models"][0]["prompts"]
    assert entry["tokens"] <= 300 and entry["images"] >= 3
    methods = entry["methods"]
    assert set(methods) == {"dense", "blindsight"}
    for name, r in methods.items():
        assert r["ttft_ms"] > 0 and r["cold_ms"] > 0 and r["one_time_ms"] >= 0 and r["decode_steps"] == 1, name
    assert methods["dense"]["kl_last_token"] == pytest.approx(0.0, abs=1e-6)
    assert methods["blindsight"]["vs_dense"]["flops_reduction"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["labels"]["weights"].startswith("RANDOM")
    assert "| qwen2-vl-7b |" in inmodel.table(out)


def test_published_results_and_targets():
    doc = json.loads(PUBLISHED.read_text())
    rows = _rows(doc, "published")
    assert rows and max(r.entry["tokens"] for r in rows) >= 36_000
    targets = {t["target"]: t for t in check_targets(rows, doc["dense_policy"])}
    assert targets["blindsight TTFT speedup at least 90% of its Amdahl bound"]["met"]
    assert targets["dense decode step within 1.2x of the fastest SDPA backend"]["met"]
    for t in check_targets(rows, doc["dense_policy"]):  # each verdict follows from its value
        if t["target"].endswith("per-prompt overhead at most 5% of prefill"):
            assert t["met"] is (float(t["value"].rstrip("%")) <= 5.0), t
    assert "RANDOM" in doc["labels"]["weights"] and "SYNTHETIC" in doc["labels"]["head_map"]


def test_rows_of_a_resumed_run_name_their_code():
    """A run resumed with other code says which prompts each commit measured; one commit needs no note."""

    def row(arch, t, commit):
        entry = {"tokens": t} | ({"commit": commit} if commit else {})
        return InModelRow(key=f"{arch}/{t}/0", source="measured", arch=arch, target_tokens=t, entry=entry)

    same = [row("qwen2-vl-7b", 16384, "abc"), row("gemma-3-4b", 16384, "abc")]
    assert rows_by_commit(same) == {}
    mixed = [row("qwen2-vl-7b", 16384, "abc"), row("gemma-3-4b", 36864, "def"), row("gemma-3-4b", 73728, None)]
    assert rows_by_commit(mixed) == {
        "abc": ["qwen2-vl-7b 16,384"],
        "def": ["gemma-3-4b 36,864"],
        "not recorded": ["gemma-3-4b 73,728"],
    }


def test_noise_check_flags_prompts_whose_non_attention_time_varies():
    """TTFT minus attention is the same work under every method: a prompt where it differs by more than 5% between
    methods is flagged (its TTFT ratios are noise), one where it agrees is not."""

    def row(t, times):
        methods = {n: {"ttft_ms": ttft, "attention_ms": attn} for n, (ttft, attn) in times.items()}
        return InModelRow(
            key=f"a/{t}/0", source="measured", arch="a", target_tokens=t, entry={"tokens": t, "methods": methods}
        )

    steady = row(36864, {"dense": (2377, 499), "blindsight": (2125, 244), "flex": (2620, 781)})
    noisy = row(73728, {"dense": (10028, 1907), "blindsight": (11908, 797), "streaming": (9003, 452)})
    (a, b) = non_attention_spread([steady, noisy])
    assert not a["noisy"] and a["spread"] == pytest.approx(1881 / 1839 - 1)
    assert b["noisy"] and b["low"] == "dense 8,121" and b["high"] == "blindsight 11,111"


def test_published_amdahl_verdicts_name_their_timing_noise():
    """In the published run, each Amdahl verdict of a prompt flagged noisy says so; the steady prompts' do not."""
    doc = json.loads(PUBLISHED.read_text())
    rows = _rows(doc, "published")
    noisy = {(n["arch"], n["tokens"]) for n in non_attention_spread(rows) if n["noisy"]}
    amdahl = [t for t in check_targets(rows, doc["dense_policy"]) if "Amdahl" in t["target"]]
    assert noisy and amdahl
    for t in amdahl:
        assert ("not reliable" in t["value"]) is ((t["arch"], t["tokens"]) in noisy), t


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_gpu_config_without_cuda_exits_2(capsys, monkeypatch):
    from bsight.harness.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["run", "gpu.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "need a CUDA GPU" in err and "'inmodel' (inmodel)" in err and "source: published" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_method_in_a_two_layer_model_on_gpu(tmp_path):
    out = inmodel.run({"archs": ["qwen2-vl-7b"], "num_layers": 2, "lengths": [6000], "repeats": 1}, tmp_path / "r.json")
    methods = out["models"][0]["prompts"][0]["methods"]
    assert all("ttft_ms" in r for r in methods.values()), {k: r.get("error") for k, r in methods.items()}


def test_random_model_command_writes_published_configs(tmp_path):
    from bsight.harness.cli import main

    assert main(["random-model", "all", "--out", str(tmp_path)]) == 0
    for arch, layers in (("qwen2-vl-7b", 28), ("qwen2.5-vl-7b", 28), ("gemma-3-4b", 34)):
        cfg = json.loads((tmp_path / arch / "config.json").read_text())
        assert cfg["bsight_random_weights"] is True
        assert (cfg.get("text_config") or cfg)["num_hidden_layers"] == layers
        assert (tmp_path / arch / "preprocessor_config.json").is_file()
