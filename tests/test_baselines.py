"""Baseline methods: MMInference-style dynamic sparsity, FlexAttention with BlindSight's masks, StreamingLLM.

Each method's output is checked against SDPA (or the reference attention) under the explicit mask of its own
kept set, in float64; the MMInference estimation against planted structure; the offline search against an
independent recomputation; and all three end to end through a tiny random-weight Qwen2-VL against
transformers' SDPA with explicit per-layer masks. Random weights: no accuracy is measured here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

if not torch.cuda.is_available():
    os.environ.setdefault(
        "TRITON_INTERPRET", "1"
    )  # as tests/test_vertical_slash.py, when this file imports triton first

from bsight.harness.adapter_kit import prompts, reference_masks, tiny_vlms  # noqa: E402
from bsight.harness.benchmarks import baselines_sweep  # noqa: E402
from bsight.harness.interfaces import ModelAdapter, ModelInfo, Prepared, Sample, TextPart  # noqa: E402
from bsight.harness.plugins import load_registry  # noqa: E402
from bsight.kernels.dispatch import LayerCall
from bsight.kernels.reference import reference_attention  # noqa: E402
from bsight.kernels.sparsity.categories import Category  # noqa: E402
from bsight.kernels.sparsity.headmap import HeadMap  # noqa: E402
from bsight.kernels.sparsity.layout import LayoutSpec, PromptLayout, SinkPolicy  # noqa: E402
from bsight.kernels.sparsity.masks import base_mask, materialize  # noqa: E402
from bsight.kernels.sparsity.metadata import LayoutMeta  # noqa: E402
from bsight.kernels.sparsity.planted import realistic_layout  # noqa: E402
from bsight.kernels.vertical_slash import keep_mask  # noqa: E402
from bsight.plugins.methods.blindsight import Blindsight  # noqa: E402
from bsight.plugins.methods.flex import Flex, categories_mask, chunked_block_mask  # noqa: E402
from bsight.plugins.methods.mminference import (  # noqa: E402
    HeadPattern,
    LayerPairs,
    MMInference,
    PatternConfig,
    PatternSearch,
    Plan,
    search_pattern_config,
)
from bsight.plugins.methods.streaming import Streaming, streaming_mask  # noqa: E402
from bsight.plugins.models.qwen2_vl import Qwen2VL  # noqa: E402

HQ, HKV = 4, 2


def _layout(gen: torch.Generator, bidirectional: bool = False) -> PromptLayout:
    n, img = int(torch.randint(2, 4, (1,), generator=gen)), int(torch.randint(50, 100, (1,), generator=gen))
    q = int(torch.randint(20, 70, (1,), generator=gen))
    return realistic_layout(
        n,
        img,
        prefix_tokens=13,
        label_tokens=5,
        question_tokens=q,
        sinks=SinkPolicy(fraction=0.05),
        bidirectional=bidirectional,
    )


def _qkv(S: int, D: int, gen: torch.Generator, dtype=torch.float64):
    return tuple(torch.randn(h, S, D, generator=gen, dtype=dtype) for h in (HQ, HKV, HKV))


def _info(layers: int, heads: int = HQ, kv: int = HKV, dim: int = 16) -> ModelInfo:
    return ModelInfo(
        model_id="test/model",
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=dim,
        sliding_windows=[None] * layers,
        weights="random",
    )


def plan_mask(plan: Plan, meta: LayoutMeta, num_heads: int, window: int | None) -> torch.Tensor:
    """The kept set of an MMInference plan in prompt order, ``[Hq, S, S]``."""
    S = meta.length
    mask = torch.zeros(num_heads, S, S, dtype=torch.bool)
    if plan.dense:
        mask[plan.dense] = materialize(base_mask(meta, window), S)[0]
    for launch, index in plan.launches:
        sp = launch.space
        keep = keep_mask(sp, index, torch.arange(sp.size, device=sp.pos.device)).cpu()
        if sp.coord is not None:
            keep = keep[:, sp.coord.cpu()][:, :, sp.coord.cpu()]
        mask[launch.heads] = keep
    return mask


def _sdpa(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(
        q, k.repeat_interleave(HQ // HKV, 0), v.repeat_interleave(HQ // HKV, 0), attn_mask=mask, scale=scale
    )


# ----------------------------------------------------------------------------------------- mminference

MIXED = [
    HeadPattern(pattern="vertical_slash", boundary="q_boundary", vertical_size=12, slash_size=40),
    HeadPattern(pattern="vertical_slash", boundary="2d_boundary", vertical_size=12, slash_size=40),
    HeadPattern(pattern="block_sparse", boundary="2d_boundary", top_k=2),
    HeadPattern(pattern="a_shape", boundary="none", vertical_size=20, slash_size=50),
]


@pytest.mark.parametrize("bidirectional,window", [(False, None), (True, 90)])
def test_mminference_equals_sdpa_under_its_kept_set(tmp_path, bidirectional, window):
    gen = torch.Generator().manual_seed(100 + bidirectional)
    meta = LayoutMeta.build(_layout(gen, bidirectional))
    S, D = meta.length, 16
    q, k, v = _qkv(S, D, gen)
    call = LayerCall(layer_idx=1, scale=0.3, window=window)
    second = [
        HeadPattern(pattern="vertical_slash", boundary="none", vertical_size=12, slash_size=40),
        HeadPattern(pattern="dense"),
        HeadPattern(pattern="block_sparse", boundary="none", top_k=3),
        HeadPattern(pattern="a_shape", boundary="2d_boundary", vertical_size=8, slash_size=30),
    ]
    cfg = PatternConfig(model_id="test/model", num_layers=2, num_heads=HQ, patterns=[MIXED, second]).save(
        tmp_path / "p.json"
    )
    method = MMInference({"pattern_config": str(cfg), "backend": "reference", "init_verticals": 3, "local_slashes": 5})
    method.setup(_info(2))
    plan = method.plan(second, q, k, v, meta, call)
    mask = plan_mask(plan, meta, HQ, window)
    out = method.prefill(q, k, v, meta, call)
    torch.testing.assert_close(out, _sdpa(q, k, v, mask, 0.3), rtol=1e-10, atol=1e-10)
    (log,) = method.take_kept()
    assert log.layer == 1 and torch.equal(log.pairs, mask.sum((1, 2))) and method.kept == []
    own = materialize(base_mask(meta, window), S)[0]
    assert not (mask & ~own).any()  # the model's own mask holds in every pattern
    assert torch.equal(mask[1], own)  # the dense head
    assert set(method.overhead.take()) >= {"pattern_estimation", "permutation", "index_metadata"}


def test_mminference_layer_zero_mixed_patterns_are_sparse_and_exact():
    gen = torch.Generator().manual_seed(7)
    meta = LayoutMeta.build(
        realistic_layout(5, 120, prefix_tokens=20, label_tokens=6, question_tokens=40, sinks=SinkPolicy(fraction=0.02))
    )
    S, D = meta.length, 16
    q, k, v = _qkv(S, D, gen)
    call = LayerCall(layer_idx=0, scale=0.25)
    method = MMInference({"backend": "reference", "init_verticals": 4, "local_slashes": 10})
    plan = method.plan(MIXED, q, k, v, meta, call)
    mask = plan_mask(plan, meta, HQ, None)
    out, kept = method.execute(plan, q, k, v, meta, call)
    torch.testing.assert_close(out, _sdpa(q, k, v, mask, 0.25), rtol=1e-10, atol=1e-10)
    assert torch.equal(kept, mask.sum((1, 2)))
    causal = S * (S + 1) // 2
    assert kept[2] < 0.5 * causal and kept[3] < 0.5 * causal  # block-sparse (2 tiles + cross) and A-shape budgets bite
    seg = meta.seg_id
    img, txt = seg >= 0, seg < 0
    # 2D boundary: the other modality is kept whole (image rows see every earlier text key and vice versa)
    own = materialize(base_mask(meta), S)[0]
    for h in (1, 2):
        cross = own & (img[:, None] != img[None, :])
        assert torch.equal(mask[h] & cross, cross)
    # a vertical-slash row keeps at most its slash tiles and columns (plus, in the 2D space, the other modality)
    for launch, index in plan.launches:
        for j, h in enumerate(launch.heads):
            pat = launch.patterns[j]
            if pat.pattern != "vertical_slash":
                continue
            for g, rows in ((0, txt), (1, img)):
                slot = g if pat.split else 0
                other = int((img if g == 0 else txt).sum()) if launch.space.two_d else 0
                bound = int(index.offset_count[j, slot]) * 64 + int(index.column_count[j, slot]) + other
                assert mask[h][rows].sum(1).max() <= bound


def test_estimation_reads_the_prompt():
    """Planted: text queries point at one text key, image queries at one image key, all queries at one key tile."""
    gen = torch.Generator().manual_seed(3)
    layout = realistic_layout(
        3, 120, prefix_tokens=70, label_tokens=6, question_tokens=70, sinks=SinkPolicy(fraction=0.02)
    )
    meta = LayoutMeta.build(layout)
    S, D = meta.length, 32
    u, w, z = torch.linalg.qr(torch.randn(D, 3, generator=gen, dtype=torch.float64)).Q.T
    img = (meta.seg_id >= 0)[:, None].double()
    text_key, image_key = 40, layout.spans[1].start + 30
    q = 0.1 * torch.randn(HQ, S, D, generator=gen, dtype=torch.float64) + 4 * (u * (1 - img) + w * img) + 3 * z
    k = 0.1 * torch.randn(HKV, S, D, generator=gen, dtype=torch.float64)
    v = torch.randn(HKV, S, D, generator=gen, dtype=torch.float64)
    k[:, text_key] += 6 * u
    k[:, image_key] += 6 * w
    hot_tile = 3
    k[:, hot_tile * 64 : hot_tile * 64 + 64] += 6 * z
    pats = [
        HeadPattern(pattern="vertical_slash", boundary=b, vertical_size=1, slash_size=1)
        for b in ("none", "q_boundary", "2d_boundary")
    ]
    pats.append(HeadPattern(pattern="block_sparse", boundary="none", top_k=2))
    method = MMInference({"backend": "reference", "init_verticals": 0, "local_slashes": 0})
    plan = method.plan(pats, q, k, v, meta, LayerCall(layer_idx=0, scale=D**-0.5))
    (orig, orig_index), (two_d, two_d_index) = plan.launches
    cols = lambda index, j, g: index.columns[j, g, : int(index.column_count[j, g])].tolist()  # noqa: E731
    assert cols(orig_index, 0, 0) == [text_key]  # none: the last queries are the question (text)
    assert cols(orig_index, 1, 0) == [text_key] and cols(orig_index, 1, 1) == [image_key]  # q_boundary: per modality
    coord = two_d.space.coord
    assert cols(two_d_index, 0, 0) == [int(coord[text_key])] and cols(two_d_index, 0, 1) == [int(coord[image_key])]
    blocks = orig_index.blocks[2]  # the block-sparse head: its own tile and the planted one
    for m in range(hot_tile + 1, blocks.shape[0]):
        assert set(blocks[m].tolist()) - {-1} == {m, hot_tile}
    forced = MMInference({"backend": "reference", "init_verticals": 5, "local_slashes": 1})
    index = forced.plan(
        [pats[0].model_copy(update={"vertical_size": 6})] * HQ, q, k, v, meta, LayerCall(0, D**-0.5)
    ).launches[0][1]
    assert cols(index, 0, 0) == [0, 1, 2, 3, 4, text_key]  # the first keys are always columns, the budget adds one
    assert 0 in index.offsets[0, 0, : int(index.offset_count[0, 0])].tolist()  # the diagonal is always a slash


def test_pattern_options_and_config_errors(tmp_path):
    with pytest.raises(ValidationError, match="q_boundary"):
        HeadPattern(pattern="block_sparse", boundary="q_boundary")
    with pytest.raises(ValidationError, match="extra"):
        MMInference({"vertical": 3})
    with pytest.raises(ValidationError, match="2 layers x 4 heads"):
        PatternConfig(model_id="m", num_layers=2, num_heads=HQ, patterns=[MIXED])
    cfg = PatternConfig(model_id="m", num_layers=1, num_heads=HQ, patterns=[MIXED])
    path = cfg.save(tmp_path / "c.json")
    assert PatternConfig.load(path).patterns == cfg.patterns
    with pytest.raises(ValueError, match="1 layers x 4 heads"):
        MMInference({"pattern_config": str(path)}).setup(_info(2))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        PatternConfig.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        MMInference({"pattern_config": str(tmp_path / "missing.json")}).setup(_info(1))
    with pytest.raises(ValueError, match="3 head patterns for 4"):
        MMInference().attend(
            MIXED[:3],
            *_qkv(300, 16, torch.Generator()),
            LayoutMeta.build(_layout(torch.Generator())),
            LayerCall(0, 1.0),
        )


class _Layers(ModelAdapter):
    """A stand-in adapter whose 'model' is a stack of recorded attention inputs (one per layer)."""

    name = "layers"

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], layout: PromptLayout) -> None:
        super().__init__()
        self.layers, self.layout = layers, layout

    def load(self) -> None: ...

    @property
    def info(self) -> ModelInfo:
        return _info(len(self.layers))

    def layout_spec(self) -> LayoutSpec:
        return LayoutSpec(start_ids=(1,), end_ids=(2,))

    def prepare(self, sample: Sample) -> Prepared:
        return Prepared({}, [self.layout])

    def generate(self, prepared, method, max_new_tokens):
        raise NotImplementedError

    def logits(self, prepared: Prepared, method) -> torch.Tensor:
        meta = LayoutMeta.build(prepared.layouts[0])
        return torch.stack(
            [method.prefill(q, k, v, meta, LayerCall(i, 0.25)) for i, (q, k, v) in enumerate(self.layers)]
        )


def test_pattern_search_keeps_the_lowest_nmse_within_budget(tmp_path):
    gen = torch.Generator().manual_seed(11)
    layout = realistic_layout(
        3, 100, prefix_tokens=20, label_tokens=6, question_tokens=30, sinks=SinkPolicy(fraction=0.02)
    )
    meta = LayoutMeta.build(layout)
    layers = [_qkv(meta.length, 16, gen) for _ in range(2)]
    z = torch.randn(16, generator=gen, dtype=torch.float64)
    for q, k, _ in layers:  # heads 2-3 read one far key tile, which only a block-sparse head can keep
        k[1, 128:192] += 2 * z
        q[2:] += 2 * z
    candidates = [
        HeadPattern(pattern="a_shape", boundary="none", vertical_size=16, slash_size=64),
        HeadPattern(pattern="block_sparse", boundary="none", top_k=2),
        HeadPattern(pattern="vertical_slash", boundary="q_boundary", vertical_size=30, slash_size=60),
    ]
    opts = {
        "candidates": [c.model_dump() for c in candidates],
        "max_density": 0.6,
        "backend": "reference",
        "local_slashes": 8,
    }
    adapter = _Layers(layers, layout)
    sample = Sample(id="one", task="t", parts=[TextPart(text="x")], answer="")
    config = search_pattern_config(adapter, sample, opts)
    assert config.search.sample == "one" and config.search.num_tokens == meta.length and len(config.patterns) == 2
    mm = MMInference({"backend": "reference", "local_slashes": 8})
    base = meta.length * (meta.length + 1) // 2
    densities = {}
    for layer, (q, k, v) in enumerate(layers):
        call = LayerCall(layer, 0.25)
        ref = reference_attention(q, k, v, meta, torch.zeros(HQ, dtype=torch.int32), scale=0.25)
        scores = []
        for cand in candidates:
            out, kept = mm.attend([cand] * HQ, q, k, v, meta, call)
            nmse = ((out - ref).pow(2).sum((1, 2)) / ref.pow(2).sum((1, 2))).tolist()
            scores.append((nmse, (kept.double() / base).tolist()))
        for h in range(HQ):
            fits = [i for i in range(len(candidates)) if scores[i][1][h] <= 0.6]
            want = (
                min(fits, key=lambda i: scores[i][0][h])
                if fits
                else min(range(len(candidates)), key=lambda i: scores[i][1][h])
            )
            got = config.patterns[layer][h]
            assert got.model_copy(update={"nmse": None, "density": None}) == candidates[want]
            assert got.nmse == pytest.approx(scores[want][0][h], rel=1e-6) and got.density == pytest.approx(
                scores[want][1][h]
            )
        densities[layer] = [min(range(len(candidates)), key=lambda i: scores[i][1][h]) for h in range(HQ)]
    chosen = {(p.pattern, p.boundary) for row in config.patterns for p in row}
    assert len(chosen) > 1  # the budget and the data make different heads choose differently
    tight = PatternSearch({**opts, "max_density": 0.01})
    tight.prefill(*layers[0], meta, LayerCall(0, 0.25))  # nothing fits: the sparsest candidate
    assert [p.model_copy(update={"nmse": None, "density": None}) for p in tight.choices[0]] == [
        candidates[i] for i in densities[0]
    ]
    path = config.save(tmp_path / "patterns.json")
    method = MMInference({"pattern_config": str(path), "backend": "reference"})
    method.setup(adapter.info)
    assert method.layer_patterns(1, HQ) == config.patterns[1]
    with pytest.raises(RuntimeError, match="layers \\[0, 1\\]"):
        search = PatternSearch()
        search.setup(adapter.info)
        search.result("x")


# ------------------------------------------------------------------------------------------------ flex


def _random_map(layers: int, seed: int, sinks: SinkPolicy) -> HeadMap:
    return reference_masks.random_head_map("test/model", layers, HQ, seed, sinks)


@pytest.mark.parametrize("bidirectional,window,layers", [(False, None, 2), (True, 40, 1)])
def test_flex_equals_the_reference_per_head(tmp_path, bidirectional, window, layers):
    gen = torch.Generator().manual_seed(20 + bidirectional)
    meta = LayoutMeta.build(_layout(gen, bidirectional))
    q, k, v = _qkv(meta.length, 16, gen)
    hm = _random_map(layers, int(torch.randint(1 << 20, (1,), generator=gen)), SinkPolicy(fraction=0.1))
    method = Flex({"head_map": str(hm.save(tmp_path / "map.json"))})
    method.setup(_info(layers))
    assert method.sink_policy == hm.sink_policy
    for layer in range(layers):
        cats = method.head_categories(layer)
        assert torch.equal(cats, hm.layer_categories(layer))
        out = method.prefill(q, k, v, meta, LayerCall(layer, 0.3, window))
        torch.testing.assert_close(
            out, reference_attention(q, k, v, meta, cats, scale=0.3, window=window), rtol=1e-10, atol=1e-10
        )
    assert "mask_building" in method.overhead.take()


def test_block_mask_in_query_chunks_equals_the_whole_one():
    """``create_block_mask`` over a long prompt runs in query chunks (whole, the mask materialized 81 GiB at 147K;
    the streaming baseline builds its masks so): the joined mask has the same blocks as one built whole."""
    from torch.nn.attention.flex_attention import create_block_mask

    gen = torch.Generator().manual_seed(int(torch.randint(1 << 20, (1,))))
    images = torch.randint(40, 120, (3,), generator=gen).tolist()
    S = 512
    layout = PromptLayout.from_segments(
        [
            ("text", 9),
            ("image", images[0]),
            ("text", 4),
            ("image", images[1]),
            ("image", images[2]),
            ("text", S - 13 - sum(images)),
        ],
        sinks=SinkPolicy(fraction=0.05),
    )
    meta = LayoutMeta.build(layout)
    hm = _random_map(1, int(torch.randint(1 << 20, (1,), generator=gen)), SinkPolicy(fraction=0.05))
    cats = hm.layer_categories(0)
    mod = categories_mask(meta, cats)
    whole = create_block_mask(mod, None, HQ, S, S, device="cpu", BLOCK_SIZE=128, _compile=False)
    chunked = chunked_block_mask(
        mod, HQ, S, torch.device("cpu"), create_block_mask, 128, max_bytes=HQ * 128 * S
    )  # 4 chunks
    assert chunked.shape == whole.shape and torch.equal(chunked.to_dense(), whole.to_dense())


def test_flex_options_and_uniform():
    with pytest.raises(ValidationError, match="exactly one of 'head_map'"):
        Flex({})
    with pytest.raises(ValidationError, match="exactly one of 'head_map'"):
        Flex({"head_map": "m.json", "uniform": "sink"})
    with pytest.raises(ValidationError, match="unknown head category"):
        Flex({"uniform": "sinks"})
    method = Flex({"uniform": "intra_image"})
    with pytest.raises(RuntimeError, match="setup"):
        method.head_categories(0)
    method.setup(_info(3))
    assert method.sink_policy is None and method.head_categories(2).tolist() == [Category.INTRA_IMAGE] * HQ
    with pytest.raises(ValueError, match="3 layers x 4 heads"):
        Flex({"head_map": _random_map(3, 0, SinkPolicy())}).setup(_info(2))


# ------------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("bidirectional,window", [(False, None), (True, 70)])
def test_streaming_equals_sdpa_under_its_mask(bidirectional, window):
    gen = torch.Generator().manual_seed(40 + bidirectional)
    meta = LayoutMeta.build(_layout(gen, bidirectional))
    S = meta.length
    q, k, v = _qkv(S, 16, gen)
    n_sink, local = int(torch.randint(1, 9, (1,), generator=gen)), int(torch.randint(10, 60, (1,), generator=gen))
    mask = materialize(streaming_mask(meta, n_sink, local, window), S)[0]
    i = torch.arange(S)
    assert torch.equal(
        mask, materialize(base_mask(meta, window), S)[0] & ((i[None] < n_sink) | ((i[:, None] - i[None]).abs() < local))
    )
    ref = _sdpa(q, k, v, mask, 0.3)
    for backend in ("chunked", "flex"):
        method = Streaming({"n_sink": n_sink, "window": local, "backend": backend, "chunk_size": 37})
        out = method.prefill(q, k, v, meta, LayerCall(2, 0.3, window))
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        (log,) = method.take_kept()
        assert log.layer == 2 and log.pairs.tolist() == [int(mask.sum())] * HQ


# ---------------------------------------------------------------------------- end to end, tiny Qwen2-VL


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    adapter = Qwen2VL(
        {
            "checkpoint": str(tiny_vlms.qwen_checkpoint(tmp_path_factory.mktemp("qwen"), "qwen2_vl", seed=5)),
            "dtype": "float32",
            "device": "cpu",
        }
    )
    adapter.load()
    return adapter


@pytest.fixture
def prepared(qwen) -> Prepared:
    rng = np.random.default_rng()
    return qwen.prepare(prompts.interleaved_sample(rng, [(112, 112), (84, 140), (112, 84)], words=8))


def _explicit(qwen, prepared: Prepared, masks: dict[int, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad(), reference_masks.explicit_masks(qwen.model, masks):
        return qwen.model(**prepared.inputs).logits.float()


def test_flex_runs_blindsight_masks_in_a_model(qwen, prepared, tmp_path):
    sinks = SinkPolicy(fraction=0.2)
    hm = _random_map(qwen.info.num_layers, int(np.random.default_rng().integers(1 << 20)), sinks).model_copy(
        update={"model_id": qwen.info.model_id}
    )
    path = str(hm.save(tmp_path / "map.json"))
    ours = qwen.logits(prepared, Flex({"head_map": path}))
    theirs = _explicit(
        qwen, prepared, reference_masks.layer_masks(prepared.layouts, hm, qwen.info.sliding_windows, sinks)
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, qwen.logits(prepared, Blindsight({"head_map": path})), rtol=1e-4, atol=1e-4)


def test_streaming_in_a_model(qwen, prepared):
    method = Streaming({"n_sink": 3, "window": 20})
    ours = qwen.logits(prepared, method)
    (layout,) = prepared.layouts
    meta = LayoutMeta.build(layout)
    S = layout.length
    mask = materialize(streaming_mask(meta, 3, 20), S)[0]
    masks = {layer: mask.expand(1, qwen.info.num_heads, S, S) for layer in range(qwen.info.num_layers)}
    torch.testing.assert_close(ours, _explicit(qwen, prepared, masks), rtol=1e-4, atol=1e-4)
    assert [log.layer for log in method.take_kept()] == list(range(qwen.info.num_layers))


class _RecordingMM(MMInference):
    """MMInference that keeps each layer's kept set, so the model can be rerun on explicit masks."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.masks: dict[int, torch.Tensor] = {}

    def prefill(self, q, k, v, meta, call):
        plan = self.plan(self.layer_patterns(call.layer_idx, q.shape[0]), q, k, v, meta, call)
        self.masks[call.layer_idx] = plan_mask(plan, meta, q.shape[0], call.window)[None]
        out, kept = self.execute(plan, q, k, v, meta, call)
        self.kept.append(LayerPairs(call.layer_idx, kept))
        return out


def test_mminference_in_a_model(qwen, prepared, tmp_path):
    info = qwen.info
    rows = [MIXED, [HeadPattern(pattern="dense")] + MIXED[1:]]
    path = PatternConfig(
        model_id=info.model_id, num_layers=info.num_layers, num_heads=info.num_heads, patterns=rows
    ).save(tmp_path / "p.json")
    method = _RecordingMM({"pattern_config": str(path), "local_slashes": 4, "init_verticals": 2})
    ours = qwen.logits(prepared, method)
    torch.testing.assert_close(ours, _explicit(qwen, prepared, method.masks), rtol=1e-4, atol=1e-4)
    logs = method.take_kept()
    assert [log.layer for log in logs] == [0, 1]
    for log in logs:
        assert torch.equal(log.pairs, method.masks[log.layer][0].sum((1, 2)))


# ------------------------------------------------------------------------------------ registry, sweep


def test_methods_are_registered():
    registry = load_registry()
    assert registry.get("method", "mminference") is MMInference
    assert registry.get("method", "flex") is Flex
    assert registry.get("method", "streaming") is Streaming


def test_sweep_small_writes_results_with_provenance(tmp_path):
    out = tmp_path / "sweep.json"
    baselines_sweep.main(
        ["--out", str(out), "--small", "--lengths", "560", "--reps", "1", "--mm-patterns", "block_sparse:none"]
    )
    text = out.read_text()
    repo = str(Path(baselines_sweep.__file__).resolve().parent.parent)
    assert str(tmp_path) not in text and repo not in text  # no paths of the machine that ran it
    data = json.loads(text)
    (row,) = data["rows"]
    assert data["provenance"]["torch"] == torch.__version__ and data["provenance"]["config"]["lengths"] == [560]
    methods = row["methods"]
    assert set(methods) == {
        "dense",
        "blindsight/intra_image_sink",
        "flex/intra_image_sink",
        "streaming",
        "mminference/block_sparse:none",
    }
    for name, rec in methods.items():
        assert "error" not in rec, (name, rec)
        assert rec["attention_ms"] > 0 and rec["flops_reduction"] == pytest.approx(
            1 - rec["kept_pairs_per_head"] / row["dense_pairs_per_head"]
        )
    assert (
        methods["blindsight/intra_image_sink"]["kept_pairs_per_head"]
        == methods["flex/intra_image_sink"]["kept_pairs_per_head"]
    )
    assert methods["dense"]["kept_pairs_per_head"] == row["dense_pairs_per_head"] == 560 * 561 // 2
    assert methods["mminference/block_sparse:none"]["flops_reduction"] > 0.3
    assert "pattern_estimation_and_permutation" in methods["mminference/block_sparse:none"]["overhead_ms"]
    assert methods["flex/intra_image_sink"]["flops_reduction"] > 0.2 and methods["streaming"]["flops_reduction"] > 0.2
    assert "mask_building" in methods["flex/intra_image_sink"]["overhead_ms"]
    baselines_sweep.main(
        ["--out", str(out), "--small", "--lengths", "300", "--reps", "1", "--methods", "dense", "--append"]
    )
    data = json.loads(out.read_text())
    assert [r["tokens"] for r in data["rows"]] == [300, 560] and len(data["earlier_provenance"]) == 1


def test_sweep_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        baselines_sweep.parse_args(["--out", str(tmp_path / "x.json"), "--methods", "dense,minference"])
    with pytest.raises(ValueError, match="unknown head category"):
        baselines_sweep.parse_args(["--out", str(tmp_path / "x.json"), "--categories", "doc"])


def test_sweep_run_returns_the_document_the_cli_writes(tmp_path):
    """``run(spec)`` (what the baselines job calls) returns the document the CLI writes, progress through ``log``."""
    spec = baselines_sweep.SweepSpec(small=True, lengths=[300], reps=1, methods=["dense", "blindsight"])
    lines: list[str] = []
    updates: list[int] = []
    doc = baselines_sweep.run(spec, log=lines.append, on_update=lambda d: updates.append(len(d["rows"])))
    out = tmp_path / "sweep.json"
    written = baselines_sweep.main(
        ["--out", str(out), "--small", "--lengths", "300", "--reps", "1", "--methods", "dense,blindsight"]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(written))
    assert doc.keys() == written.keys() == {"schema", "provenance", "setup", "rows"}
    assert doc["provenance"].keys() == written["provenance"].keys() and doc["setup"] == written["setup"]
    assert [set(r["methods"]) for r in doc["rows"]] == [set(r["methods"]) for r in written["rows"]]
    assert doc["provenance"]["config"] == written["provenance"]["config"] == spec.model_dump(mode="json")
    assert doc["provenance"]["command"] == ["bsight.harness.benchmarks.baselines_sweep.run"]
    assert written["provenance"]["command"][:4] == [
        "python",
        "-m",
        "bsight.harness.benchmarks.baselines_sweep",
        "--out",
    ]
    assert lines == ["[baselines_sweep] 300 tokens ..."] and updates == [1]
