"""Hybrid models (issue 15): layers that are not softmax attention are recorded as such, skipped by
characterization, not counted in FLOPs, untouched by blindsight; head maps must agree on every layer's kind.

The end-to-end part runs a tiny Qwen3.5 (Gated DeltaNet linear layers 0 and 2, softmax layers 1 and 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsight.harness.adapter_kit import prompts, tiny_vlms
from bsight.harness.characterize import characterize_model, prompt_record
from bsight.kernels.sparsity.aggregate import build_head_map
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.flops import KeptPairs, layer_pair_table, model_flops, pair_counts
from bsight.kernels.sparsity.headmap import DatasetInfo, HeadMap
from bsight.kernels.sparsity.layerkinds import describe, first_mismatch, kinds_from_layer_types
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.plugins.methods.blindsight import Blindsight
from bsight.plugins.methods.dense import Dense
from bsight.plugins.models.qwen3_5 import Qwen35

KINDS = ["linear", "attention", "linear", "attention"]


def test_kinds_come_from_layer_types_and_unknown_types_are_refused():
    assert kinds_from_layer_types(["linear_attention", "full_attention", "sliding_attention"], 3) == [
        "linear",
        "attention",
        "attention",
    ]
    assert kinds_from_layer_types(None, 2, kv_shared=[False, True]) == ["attention", "shared_kv"]
    assert kinds_from_layer_types(["mamba", "full_attention"], 2) == ["linear", "attention"]
    with pytest.raises(ValueError, match="layer 1 has type 'hyena'"):
        kinds_from_layer_types(["full_attention", "hyena"], 2)
    assert describe(KINDS, 4) == "4 layers: 2 attention, 2 linear"
    assert first_mismatch(KINDS, ["linear", "linear", "linear", "attention"], 4) == 1
    assert first_mismatch([], ["attention"] * 4, 4) is None


def test_head_map_schema_has_linear_layers_without_categories():
    hm = HeadMap.uniform("m", 4, 2, "sink", SinkPolicy(), layer_kinds=KINDS)
    assert hm.layer_kinds == KINDS and hm.categories == [[], ["sink", "sink"], [], ["sink", "sink"]]
    again = HeadMap.model_validate_json(hm.model_dump_json())
    assert again.kinds() == KINDS and again.shares()["sink"] == 1.0
    assert np.isnan(hm.layer_shares()[0]).all() and hm.layer_shares()[1, Category.SINK] == 1.0
    with pytest.raises(ValueError, match="layer 0 of m is 'linear'"):
        hm.layer_categories(0)
    bad = hm.model_dump()
    bad["categories"][0] = ["dense", "dense"]  # a linear layer with categories
    with pytest.raises(ValueError, match="no categories for linear layers"):
        HeadMap.model_validate(bad)
    with pytest.raises(ValueError, match="has no softmax-attention layer"):
        HeadMap.uniform("m", 2, 2, "sink", SinkPolicy(), layer_kinds=["linear", "linear"])
    # old head maps (no layer_kinds) stay valid: every layer attention
    old = HeadMap.uniform("m", 2, 2, "dense", SinkPolicy())
    assert old.layer_kinds == [] and old.kinds() == ["attention", "attention"]


def test_a_head_map_whose_layer_kinds_differ_names_the_first_mismatching_layer():
    hm = HeadMap.uniform("m", 4, 2, "sink", SinkPolicy(), layer_kinds=KINDS)
    with pytest.raises(ValueError, match="layer 2 is 'linear' in the head map but 'attention' in the model"):
        hm.check_model(4, 2, ["linear", "attention", "attention", "attention"])
    hm.check_model(4, 2, KINDS)


def test_flops_count_softmax_layers_only():
    layout = PromptLayout.from_segments([("text", 10), ("image", 20), ("text", 5), ("image", 20), ("text", 8)])
    dense_pairs = pair_counts(layout).dense
    table = layer_pair_table(layout, [None] * 4, KINDS)
    assert table[0].tolist() == [0, 0, 0, 0] and table[2].tolist() == [0, 0, 0, 0]
    assert table[1, Category.DENSE] == dense_pairs
    cats = np.zeros((4, 2), dtype=np.int64)
    hybrid = model_flops(layout, cats, [None] * 4, 16, KINDS)
    everything = model_flops(layout, cats, [None] * 4, 16)
    assert hybrid["dense_flops"] == 4 * 16 * dense_pairs * 2 * 2  # 2 softmax layers x 2 heads
    assert everything["dense_flops"] == 2 * hybrid["dense_flops"]  # what counting linear layers overstated
    # per-layer head dims (Gemma 4's wide global layers)
    wide = model_flops(layout, cats, [None] * 4, [16, 32, 16, 64], KINDS)
    assert wide["dense_flops"] == 4 * dense_pairs * 2 * (32 + 64)


def test_prompt_record_skips_linear_layers_and_names_missing_softmax_layers():
    layout = PromptLayout.from_segments([("text", 4), ("image", 6), ("text", 3)])
    pairs = KeptPairs(*pair_counts(layout))
    nmse = torch.zeros(2, 3, dtype=torch.float64)
    rec = prompt_record("p", layout, {1: (nmse, pairs, 6), 3: (nmse, pairs, 6)}, 4, KINDS)
    assert rec.nmse[0] == [] and rec.pairs[0] == [0, 0, 0, 0] and rec.pairs[1] == list(pairs)
    with pytest.raises(ValueError, match=r"softmax-attention layers \[3\].*2 attention, 2 linear"):
        prompt_record("p", layout, {1: (nmse, pairs, 6)}, 4, KINDS)
    with pytest.raises(ValueError, match=r"layers \[0\].*'linear'"):
        prompt_record("p", layout, {0: (nmse, pairs, 6), 1: (nmse, pairs, 6), 3: (nmse, pairs, 6)}, 4, KINDS)


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory):
    path = tiny_vlms.qwen_checkpoint(tmp_path_factory.mktemp("q35"), "qwen3_5", seed=5)
    adapter = Qwen35({"checkpoint": str(path), "dtype": "float32", "device": "cpu"})
    adapter.load()
    return adapter


@pytest.mark.usefixtures("single_thread")
def test_qwen35_characterization_skips_linear_layers_and_the_head_map_records_them(qwen35, caplog):
    info = qwen35.info
    assert info.layer_kinds == KINDS and info.attention_layers() == [1, 3]
    rng = np.random.default_rng(0)
    preps = [(f"p{i}", qwen35.prepare(prompts.interleaved_sample(rng, [(64, 96), (96, 64)]))) for i in range(2)]
    with caplog.at_level("INFO", logger="bsight.harness.characterize"):
        result = characterize_model(qwen35, preps, dataset=DatasetInfo(name="t", size=2), run=qwen35.prefill)
    assert "skipping 2 layers that are not softmax attention: [0, 2]" in caplog.text
    assert result.layer_kinds == KINDS and len(result.prompts) == 2
    assert [len(layer) for layer in result.prompts[0].nmse] == [0, 4, 0, 4]
    hm = build_head_map(result)
    assert hm.layer_kinds == KINDS and hm.categories[0] == [] and len(hm.categories[1]) == 4
    assert all(h == [] for h in hm.histograms[0])
    hm.check_model(info.num_layers, info.num_heads, info.kinds())


@pytest.mark.usefixtures("single_thread")
def test_blindsight_leaves_linear_layers_untouched(qwen35):
    info = qwen35.info
    called = []

    class Recording(Blindsight):
        def prefill(self, q, k, v, meta, call):
            called.append(call.layer_idx)
            return super().prefill(q, k, v, meta, call)

    prep = qwen35.prepare(prompts.interleaved_sample(np.random.default_rng(1), [(64, 96), (64, 64)]))
    method = Recording({"uniform": "intra_image"})
    sparse = qwen35.logits(prep, method)
    assert sorted(set(called)) == [1, 3]
    assert method.head_map.layer_kinds == KINDS and method.head_categories(0) is None
    assert not torch.allclose(sparse, qwen35.logits(prep, Dense()))  # the softmax layers did change
    # a head map of the same model whose kinds differ is refused, naming the layer
    wrong = HeadMap.uniform(info.model_id, 4, info.num_heads, "sink", SinkPolicy(), layer_kinds=["attention"] * 4)
    with pytest.raises(ValueError, match="layer 0 is 'attention' in the head map but 'linear' in the model"):
        Blindsight({"head_map": wrong}).setup(info)


def test_a_model_without_softmax_attention_is_a_clear_error(tmp_path):
    path = tiny_vlms.qwen_checkpoint(tmp_path / "lin", "qwen3_5", layer_types=("linear_attention",) * 2)
    adapter = Qwen35({"checkpoint": str(path), "dtype": "float32", "device": "cpu"})
    with pytest.raises(ValueError, match=r"has no softmax-attention layer \(2 layers: 2 linear\)"):
        adapter.load()


def test_the_flops_job_counts_only_softmax_layers_of_a_hybrid_model(qwen35):
    """The FLOPs job's counting on Qwen3.5: dense FLOPs are those of its 2 softmax layers (counting its linear
    layers as attention overstated them 2x here), from static categories and from a measured prefill alike."""
    from bsight.harness.jobs.counting import prompt_flops

    info = qwen35.info
    prep = qwen35.prepare(prompts.interleaved_sample(np.random.default_rng(2), [(64, 96), (64, 64)]))
    layout = prep.layouts[0]
    method = Blindsight({"uniform": "intra_image"})
    method.setup(info)
    cats = method.static_categories(info)
    assert cats.shape == (4, info.num_heads)
    dense, sparse, source = prompt_flops(layout, info, cats, None, "test")
    per_layer = 4 * info.head_dim * pair_counts(layout).dense * info.num_heads
    assert source == "layout" and dense == 2 * per_layer and sparse < dense
    assert prompt_flops(layout, info.model_copy(update={"layer_kinds": []}), cats, None, "t")[0] == 4 * per_layer
