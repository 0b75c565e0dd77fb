"""Prompt-level characterization: NMSE tables against brute force, the probe inside real transformers models,
selection, the stored result, sweeps, and the O(S x chunk) memory claim at 8K tokens."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from bsight.harness import attention_bridge
from bsight.harness.characterize import CharacterizationProbe, characterize_model, layer_nmse
from bsight.harness.figures import category_heatmap, pareto_figure
from bsight.harness.interfaces import AttentionMethod, ModelAdapter, ModelInfo, Prepared
from bsight.kernels.dispatch import dense_prefill
from bsight.kernels.sparsity.aggregate import build_head_map
from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES, Category
from bsight.kernels.sparsity.characterization import CharacterizationResult, nmse_of_categories, select_categories
from bsight.kernels.sparsity.flops import model_flops
from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo
from bsight.kernels.sparsity.layout import LayoutSpec, PromptLayout, SinkPolicy, layouts_from_batch
from bsight.kernels.sparsity.masks import head_mask, materialize
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.sparsity.param_sweep import pareto_front, sweep
from bsight.kernels.sparsity.strategies import layouts, windows

START, END, PAD_IMG = 90, 91, 92


def fresh_seed() -> int:
    """A new seed per run, printed so that a failure can be replayed."""
    seed = secrets.randbits(31)
    print(f"seed {seed}")
    return seed


SPEC = LayoutSpec(start_ids=(START,), end_ids=(END,), inner_ids=(PAD_IMG,), sinks=SinkPolicy(fraction=0.2))


pytestmark = pytest.mark.usefixtures("single_thread_module")  # many small tensor ops: a second thread only contends


def brute_nmse(q, k, v, lay: PromptLayout, window, scale) -> torch.Tensor:
    """float64 NMSE per head and sparse category from explicit S x S masks."""
    meta = LayoutMeta.build(lay)
    Hq, S, _ = q.shape
    G = Hq // k.shape[0]
    kk, vv = k.double().repeat_interleave(G, 0), v.double().repeat_interleave(G, 0)

    def attend(cat: Category) -> torch.Tensor:
        mask = materialize(head_mask(meta, torch.full((Hq,), cat.value), window), S, Hq)
        return F.scaled_dot_product_attention(q.double(), kk, vv, attn_mask=mask, scale=scale)

    rows = meta.seg_id >= 0
    dense = attend(Category.DENSE)[:, rows]
    return torch.stack(
        [(attend(c)[:, rows] - dense).pow(2).sum((1, 2)) / dense.pow(2).sum((1, 2)) for c in SPARSE_CATEGORIES], dim=1
    )


@settings(max_examples=40, deadline=None)
@given(
    layouts(max_tokens=60, max_images=5),
    windows(20),
    st.sampled_from([(2, 1), (4, 2), (3, 3)]),
    st.integers(1, 20),
    st.data(),
)
def test_layer_nmse_equals_brute_force(lay, window, heads, chunk, data):
    if lay.num_images == 0:
        lay = PromptLayout.from_segments([("text", 3), ("image", 5), ("image", 4), ("text", 2)])
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    Hq, Hkv = heads
    q, k, v = (torch.randn(h, lay.length, 8, generator=g, dtype=torch.float64) * 1.5 for h in (Hq, Hkv, Hkv))
    res = layer_nmse(q, k, v, LayoutMeta.build(lay), scale=0.5, window=window, chunk_size=chunk)
    assert res.image_queries == lay.num_image_tokens
    torch.testing.assert_close(res.nmse, brute_nmse(q, k, v, lay, window, 0.5), rtol=1e-9, atol=1e-12)


def test_shared_softmax_max_falls_back_when_a_category_underflows():
    """An image query whose visible maximum lies 200 logits above everything a mask keeps: float32 exp of the
    kept scores underflows to 0 against the shared max, so the category must be recomputed with its own max."""
    lay = PromptLayout.from_segments([("text", 2), ("image", 6), ("text", 1), ("image", 6)], SinkPolicy(fraction=0.2))
    g = torch.Generator().manual_seed(fresh_seed())
    q, k, v = (torch.randn(h, lay.length, 8, generator=g) * 0.1 for h in (2, 1, 1))
    u = torch.zeros(8)
    u[0] = 1.0
    q[:, 9:15] += 40 * u  # second image's queries ...
    k[:, 4:8] += 40 * u  # ... match the first image's non-sink tokens: logit ~ 200 after scale 1/8
    res = layer_nmse(q, k, v, LayoutMeta.build(lay), scale=1 / 8)
    assert torch.isfinite(res.nmse).all()
    torch.testing.assert_close(res.nmse, brute_nmse(q, k, v, lay, None, 1 / 8), rtol=2e-3, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_selection_picks_the_cheapest_passing_mask(data):
    H = data.draw(st.integers(1, 6))
    nmse = np.array(
        data.draw(
            st.lists(
                st.lists(st.sampled_from([0.0, 0.01, 0.05, 0.2, 3.0]), min_size=3, max_size=3), min_size=H, max_size=H
            )
        )
    )
    pairs = np.array([1000] + data.draw(st.lists(st.sampled_from([100, 200, 300, 1000]), min_size=3, max_size=3)))
    tau = data.draw(st.sampled_from([0.0, 0.01, 0.1, 1.0]))
    got = select_categories(nmse, pairs, tau)
    for h in range(H):
        passing = [(pairs[c.value], -c.value, c) for j, c in enumerate(SPARSE_CATEGORIES) if nmse[h, j] <= tau]
        assert got[h] == (min(passing)[2].value if passing else Category.DENSE.value)


# ----------------------------------------------------------------------------------- real model runs


def tiny_llama() -> torch.nn.Module:
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    cfg._attn_implementation = attention_bridge.register()
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma3_text() -> torch.nn.Module:
    """Sliding-window layers (window 5) next to a full-attention layer."""
    cfg = Gemma3TextConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=5,
        layer_types=["sliding_attention", "full_attention"],
    )
    cfg._attn_implementation = attention_bridge.register()
    return Gemma3ForCausalLM(cfg).eval()


def batch(generator: torch.Generator) -> Prepared:
    """Two rows, left padding, adjacent images and an image right after the padding."""
    t = lambda n: torch.randint(1, 80, (n,), generator=generator).tolist()  # noqa: E731
    img = lambda n: [START] + [PAD_IMG] * n + [END]  # noqa: E731
    rows = [[0, 0] + t(2) + img(4) + t(1) + img(3) + t(3), img(2) + img(5) + t(2) + img(1) + t(3)]
    mask = [[0, 0] + [1] * 17, [1] * 19]
    ids, mask = torch.tensor(rows), torch.tensor(mask)
    return Prepared({"input_ids": ids, "attention_mask": mask}, layouts_from_batch(ids, SPEC, mask))


class Recorder(AttentionMethod):
    """Test double: keeps every layer's q, k, v and returns dense attention."""

    name = "recorder"

    def __init__(self):
        super().__init__()
        self.calls = []

    def prefill(self, q, k, v, meta, call):
        self.calls.append((q.clone(), k.clone(), v.clone(), call))
        return dense_prefill(q, k, v, meta, call)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3_text])
def test_probe_in_a_transformers_model(make):
    torch.manual_seed(fresh_seed())
    model = make()
    prepared = batch(torch.Generator().manual_seed(fresh_seed()))
    probe, rec = CharacterizationProbe({"chunk_size": 3}), Recorder()
    with torch.no_grad():
        with attention_bridge.active_method(probe, prepared.layouts):
            probed = model(**prepared.inputs).logits
        with attention_bridge.active_method(rec, prepared.layouts):
            recorded = model(**prepared.inputs).logits
    valid = prepared.inputs["attention_mask"].bool()
    torch.testing.assert_close(probed[valid], recorded[valid])  # the probe lets the model run on densely
    tables = probe.take()
    assert len(tables) == 2 and all(sorted(t) == [0, 1] for t in tables)
    assert {c[3].window for c in rec.calls} == ({None} if make is tiny_llama else {5, None})
    for i, (q, k, v, call) in enumerate(rec.calls):  # layer-major, row-minor
        layer, row = divmod(i, 2)
        lay = prepared.layouts[row].unpadded()
        want = brute_nmse(q, k, v, lay, call.window, call.scale)
        torch.testing.assert_close(tables[row][layer][0], want, rtol=1e-4, atol=1e-7)


class TinyAdapter(ModelAdapter):
    """Test double around a tiny random-weight model: only what characterization calls."""

    name = "tiny"

    def __init__(self, model):
        super().__init__()
        self.model = model

    def load(self):
        pass

    @property
    def info(self) -> ModelInfo:
        c = self.model.config
        return ModelInfo(
            model_id="tiny-llama",
            num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads,
            num_kv_heads=c.num_key_value_heads,
            head_dim=c.hidden_size // c.num_attention_heads,
            sliding_windows=[None] * c.num_hidden_layers,
            weights="random",
        )

    def layout_spec(self):
        return SPEC

    def prepare(self, sample):
        raise NotImplementedError("prompts are prepared by the test")

    def generate(self, prepared, method, max_new_tokens):
        raise NotImplementedError("characterization does not generate")

    def logits(self, prepared, method):
        with attention_bridge.active_method(method, prepared.layouts):
            return self.model(**prepared.inputs).logits


def test_characterize_model_result_head_map_and_sweep(tmp_path):
    torch.manual_seed(fresh_seed())
    adapter = TinyAdapter(tiny_llama())
    g = torch.Generator().manual_seed(fresh_seed())
    text_only = torch.randint(1, 80, (1, 9), generator=g)
    prompts = [
        ("p0", batch(g)),
        ("text", Prepared({"input_ids": text_only}, layouts_from_batch(text_only, SPEC))),
        ("p1", batch(g)),
    ]
    seen = []
    result = characterize_model(
        adapter, prompts, dataset=DatasetInfo(name="unit", size=3), chunk_size=4, on_prompt=seen.append
    )
    assert [p.id for p in result.prompts] == ["p0#0", "p0#1", "p1#0", "p1#1"] == [r.id for r in seen]
    assert [s.id for s in result.skipped] == ["text"]
    assert result.nmse_array().shape == (4, 2, 4, 3) and result.weights == "random"
    assert CharacterizationResult.load(result.save(tmp_path / "r.json")) == result
    more_sinks = characterize_model(
        adapter, prompts[:1], dataset=DatasetInfo(name="unit", size=1), sinks=SinkPolicy(fraction=0.5)
    )
    assert more_sinks.sink_policy.fraction == 0.5
    assert more_sinks.pairs_array()[:, :, Category.SINK].sum() > result.pairs_array()[:2, :, Category.SINK].sum()

    params = CharacterizationParams(tau=0.1, delta=0.3, gamma=0.5)
    hm = build_head_map(result, params)
    assert hm.weights == "random" and hm.dataset.size == 4 and hm.sink_policy == SPEC.sinks
    assert all(abs(sum(h.values()) - 1) < 1e-9 for row in hm.histograms for h in row)
    assert category_heatmap(hm).axes

    layouts_ = [lay.unpadded() for _, prep in prompts[::2] for lay in prep.layouts]
    rows = sweep(result, [0.01, 0.1, 1.0], deltas=[0.3], gammas=[0.5])
    for row in rows:
        cats = build_head_map(result, CharacterizationParams(tau=row.tau, delta=0.3, gamma=0.5)).category_array()
        red = [model_flops(lay, cats, [None, None], 16)["reduction"] for lay in layouts_]
        assert row.flops_reduction_mean == pytest.approx(np.mean(red))
        chosen = [
            [[0.0 if cats[l, h] == 0 else p.nmse[l][h][cats[l, h] - 1] for h in range(4)] for l in range(2)]
            for p in result.prompts
        ]
        assert row.nmse_mean == pytest.approx(np.mean(chosen))
        assert row.agreement is None and row.sink_policy == SPEC.sinks
    np.testing.assert_allclose(nmse_of_categories(result.nmse_array(), cats), chosen)
    front = pareto_front(rows)
    assert front and all(
        not (o.nmse_mean < r.nmse_mean and o.flops_reduction_mean > r.flops_reduction_mean) for r in front for o in rows
    )
    assert pareto_figure(rows).axes


def test_characterizing_8k_tokens_stays_far_below_sequence_squared_memory():
    """28 query heads, 4 KV heads, head_dim 128, 8K tokens, in a fresh process. One float32 [28, S, S] score
    tensor would take 7.5 GiB and even one [4, S, S] 1 GiB: the measured growth must stay under 1 GiB."""
    cmd = [
        sys.executable,
        "-m",
        "bsight.harness.benchmarks.characterization_memory",
        "--tokens",
        "8192",
        "--layers",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    growth = out["peak_rss_bytes"] - out["baseline_rss_bytes"]
    print(
        f"8K-token characterization, 1 layer of 28x128 heads: peak RSS {out['peak_rss_bytes'] / 2**20:.0f} "
        f"MiB, growth {growth / 2**20:.0f} MiB"
    )
    assert out["tokens"] == 8192 and out["heads"] == 28
    assert growth < 2**30


def test_characterization_memory_run_returns_the_document_the_cli_prints(capsys):
    """``run(spec)`` of the memory benchmark returns what its CLI prints: the measurement and its provenance."""
    from bsight.harness.benchmarks import characterization_memory as cm

    argv = ["--tokens", "1200", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "16"]
    doc = cm.run(cm.MemorySpec(tokens=1200, layers=1, heads=2, kv_heads=1, head_dim=16))
    printed = cm.main(argv)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(printed))
    assert doc.keys() == printed.keys() and doc["provenance"].keys() == printed["provenance"].keys()
    assert doc["tokens"] == printed["tokens"] == 1200 and doc["heads"] == 2 and doc["provenance"]["device"] == "cpu"
    assert printed["provenance"]["command"] == ["python", "-m", cm.__name__, *argv]
