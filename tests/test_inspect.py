"""``bsight inspect``: the probe's pooled maps and mass shares against an explicit S x S softmax, the command on a
tiny random Qwen2-VL checkpoint and on the example plugin, and each bad-input case (exit 2, one clear line)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ext_config, write_yaml

from bsight.harness.adapter_kit import tiny_vlms
from bsight.harness.cli import main
from bsight.harness.inspect_cmd import InspectError, first_segments, inspect_prompt
from bsight.harness.inspect_probe import MASS_COLUMNS, attention_mass, bins_of, pair_share, probe_bytes
from bsight.harness.interfaces import Sample, TextPart
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.kernels.sparsity.masks import base_mask, materialize
from bsight.kernels.sparsity.metadata import LayoutMeta

pytestmark = pytest.mark.usefixtures("single_thread")

SEGMENTS = [("text", 5), ("image", 7), ("text", 3), ("image", 6), ("image", 5), ("text", 4)]


def explicit(q, k, meta, scale, window):
    """The whole S x S softmax under the model's own mask (small S only)."""
    Hq, S, _ = q.shape
    G = Hq // k.shape[0]
    s = torch.einsum("hsd,htd->hst", q.double(), k.double().repeat_interleave(G, 0)) * scale
    keep = materialize(base_mask(meta, window), S)[0]
    return torch.softmax(s.masked_fill(~keep, float("-inf")), -1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("window", [None, 9])
@pytest.mark.parametrize("chunk_bytes", [1, 10**9])
def test_attention_mass_matches_explicit_softmax(bidirectional, window, chunk_bytes):
    torch.manual_seed(0)
    layout = PromptLayout.from_segments(SEGMENTS, SinkPolicy(fraction=0.3), bidirectional=bidirectional)
    meta = LayoutMeta.build(layout)
    S, bins = layout.length, 8
    q, k = torch.randn(4, S, 16) * 2, torch.randn(2, S, 16) * 2
    got = attention_mass(q, k, meta, scale=0.25, window=window, bins=bins, chunk_bytes=chunk_bytes)
    p = explicit(q, k, meta, 0.25, window)
    b = bins_of(S, bins)
    onehot = torch.nn.functional.one_hot(b, bins).double()  # [S, P]
    pooled = torch.einsum("hst,sp,tr->hpr", p, onehot, onehot) / torch.outer(onehot.sum(0), onehot.sum(0))
    torch.testing.assert_close(got.pooled.double(), pooled, rtol=1e-5, atol=1e-7)
    seg, sink = meta.seg_id.long(), meta.is_sink
    rows = (seg >= 1).nonzero().flatten()
    assert got.queries == rows.numel() == 11
    want = []
    for r in rows.tolist():
        own, other = seg == seg[r], (seg >= 0) & (seg != seg[r])
        want.append(torch.stack([p[:, r][:, m].sum(-1) for m in (own, other & sink, other & ~sink, seg < 0)], -1))
    torch.testing.assert_close(got.mass, torch.stack(want).mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.mass.sum(1), torch.ones(4, dtype=torch.float64))


def test_pair_share_counts_inter_image_pairs():
    layout = PromptLayout.from_segments([("text", 2), ("image", 3), ("image", 2), ("text", 1)])
    # causal pairs: 8 * 9 / 2 = 36; inter-image: the second image's 2 queries x the first image's 3 keys
    assert pair_share(LayoutMeta.build(layout)) == pytest.approx(6 / 36)
    assert pair_share(LayoutMeta.build(PromptLayout.from_segments([("text", 4)]))) == 0.0


def test_probe_memory_grows_with_length_not_quadratically_in_chunks():
    small, big = probe_bytes(8, 4096, 4, 96), probe_bytes(8, 8 * 4096, 4, 96)
    assert big < 8 * small * 1.01  # a chunk holds fewer rows at longer prompts: linear, not S x S
    assert probe_bytes(8, 36_000, 28, 96) < 2**30


# --------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    ckpt = tiny_vlms.qwen_checkpoint(root / "qwen")
    return write_yaml(
        root / "bench.yaml",
        {
            "models": {"tiny_qwen": {"plugin": "qwen2_vl", "options": {"checkpoint": str(ckpt)}}},
            "methods": {"dense": {"plugin": "dense"}},
            "tasks": {"offline": {"plugin": "offline_images", "options": {"image_size": 64, "per_subtask": 1}}},
            "jobs": [{"type": "accuracy", "limit": 1}],
        },
    )


def printed(out: str) -> dict[str, Path]:
    return {k: Path(v) for k, v in (line.split(": ", 1) for line in out.strip().splitlines())}


def test_inspect_writes_maps_shares_table_and_images_sweep(cfg, tmp_path, capsys):
    hm = HeadMap.uniform("tiny", 2, 4, "intra_image_sink", SinkPolicy(fraction=0.5))
    hm_path = hm.save(tmp_path / "hm.json")
    out = tmp_path / "o"
    args = ["inspect", str(cfg), "--model", "tiny_qwen", "--task", "offline", "--sample", "find_object-000"]
    assert main([*args, "--out", str(out), "--head-map", str(hm_path), "--images", "1,2,4", "--bins", "16"]) == 0
    files = printed(capsys.readouterr().out)
    assert {"attention maps, layer 0", "attention maps, layer 1", "inter-image share", "numbers"} <= set(files)
    assert files["attention maps, layer 1"].read_text().lstrip().startswith(("<?xml", "<svg"))
    assert "intra_image_sink" in files["attention maps, layer 0"].read_text()  # heads titled with their category
    report = json.loads(files["numbers"].read_text())
    prompt = report["prompt"]
    assert prompt["segments"] == 4 and report["sink_policy"]["fraction"] == 0.5  # the head map's sinks
    assert set(prompt["mass_share_per_layer"]) == {"0", "1"} and 0 < prompt["mass_share_mean"] < 1
    with files["per-head table (csv)"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 and {r["category"] for r in rows} == {"intra_image_sink"}
    for r in rows:
        assert math.isclose(sum(float(r[c]) for c in MASS_COLUMNS), 1.0, abs_tol=1e-4)
    shares = {str(r["layer"]): [] for r in rows}
    for r in rows:
        shares[r["layer"]].append(float(r["other_sinks"]) + float(r["other_non_sinks"]))
    for layer, v in shares.items():  # the per-layer share is the heads' mean of the table's inter-image columns
        assert prompt["mass_share_per_layer"][layer] == pytest.approx(sum(v) / len(v), abs=1e-4)
    sweep = report["images_sweep"]
    assert [s["segments"] for s in sweep] == [1, 2, 4]
    assert sweep[0]["mass_share_mean"] is None and sweep[0]["computation_share"] == 0
    assert sweep[1]["computation_share"] < sweep[2]["computation_share"]
    assert files["inter-image share vs images"].exists()


def test_inspect_layers_restricts_what_is_recorded(cfg, tmp_path, capsys):
    args = ["inspect", str(cfg), "--model", "tiny_qwen", "--task", "offline", "--sample", "odd_one_out-000"]
    assert main([*args, "--out", str(tmp_path / "o"), "--layers", "1", "--format", "png"]) == 0
    files = printed(capsys.readouterr().out)
    assert "attention maps, layer 0" not in files and files["attention maps, layer 1"].suffix == ".png"
    assert {r["layer"] for r in json.loads(files["numbers"].read_text())["heads"]} == {1}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sample", "find_objekt-000"], "has no sample 'find_objekt-000' (5 samples); nearest ids: find_object-000"),
        (["--sample", "find_object-000", "--memory-gib", "0.001"], "needs about"),
        (["--sample", "find_object-000", "--images", "2,9"], "--images 9: sample 'find_object-000' has 4 segments"),
        (["--sample", "find_object-000", "--layers", "0,7"], "--layers [7]"),
        (["--sample", "same_or_different-000", "--head-map", "{hm}"], "head map for tiny is 3 layers x 4 heads"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(cfg, tmp_path, capsys, extra, message):
    hm = HeadMap.uniform("tiny", 3, 4, "sink", SinkPolicy()).save(tmp_path / "hm3.json")
    extra = [e.replace("{hm}", str(hm)) for e in extra]
    out = tmp_path / "o"
    assert main(["inspect", str(cfg), "--model", "tiny_qwen", "--task", "offline", *extra, "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bsight: error:")]
    assert len(err) == 1 and message in err[0], err
    if "needs about" in message:
        assert "1.02 MiB is available" in err[0] and "inspection probe" in err[0]
    assert not out.exists()


def test_example_plugin_and_a_prompt_without_segments(ext_registry, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "ext.yaml", ext_config(tmp_path, n=3))
    args = ["inspect", str(cfg), "--model", "tiny", "--task", "bright", "--sample", "b0001", "--out", str(tmp_path)]
    assert main(args) == 0  # b0001: three images
    report = json.loads(printed(capsys.readouterr().out)["numbers"].read_text())
    assert report["weights"] == "random" and report["prompt"]["segments"] == 3
    adapter = ext_registry.get("model", "tiny-llama")()
    adapter.load()
    text_only = Sample(id="t", task="bright", parts=[TextPart(text="Which image is the brightest?")], answer="A")
    with pytest.raises(InspectError, match="no image .* segments .* nothing inter-image to show"):
        inspect_prompt(adapter, text_only, layers=None, bins=8, chunk_bytes=2**20)
    one = first_segments(next(ext_registry.get("task", "brightest-image")().samples()), 1)
    with pytest.raises(InspectError, match="one image segment: there is nothing inter-image to show"):
        inspect_prompt(adapter, one, layers=None, bins=8, chunk_bytes=2**20)
    assert main([*args[:-2], "--sample", "b9", "--out", str(tmp_path / "x")]) == 2
    assert "no sample 'b9' (3 samples); nearest ids: b0002, b0001, b0000" in capsys.readouterr().err
