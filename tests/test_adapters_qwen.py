"""Adapters qwen2_vl and qwen2_5_vl on tiny random-weight checkpoints of the real transformers classes.

Equivalences checked (float32, CPU): dense through the bridge == transformers' own sdpa path (incl. a
left-padded batch); blindsight with an all-dense head map == dense; blindsight with a random sparse head map
== the model on sdpa with the explicit per-head 4-D masks; greedy generation runs and its decode is dense.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bsight.harness.adapter_kit import prompts, reference_masks, tiny_vlms  # noqa: E402
from bsight.harness.interfaces import ImagePart, Sample, TextPart  # noqa: E402
from bsight.kernels.sparsity.layout import LayoutError, LayoutSpec, SinkPolicy  # noqa: E402
from bsight.plugins.methods.blindsight import Blindsight  # noqa: E402
from bsight.plugins.methods.dense import Dense  # noqa: E402
from bsight.plugins.models.qwen2_vl import Qwen2VL, Qwen25VL, qwen_layouts  # noqa: E402

ADAPTERS = {"qwen2_vl": Qwen2VL, "qwen2_5_vl": Qwen25VL}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def adapter(request, tmp_path_factory):
    kind = request.param
    path = tiny_vlms.qwen_checkpoint(tmp_path_factory.mktemp(kind), kind, seed=len(kind))
    a = ADAPTERS[kind]({"checkpoint": str(path), "dtype": "float32", "device": "cpu"})
    a.load()
    return a


@pytest.fixture
def rng():
    return np.random.default_rng()


def test_info_and_layout_spec_come_from_the_config(adapter):
    cfg = adapter.model.config
    info = adapter.info
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim) == (2, 4, 2, 16)
    assert info.weights == "random" and info.sliding_windows == [None, None]
    spec = adapter.layout_spec()
    assert spec.start_ids == (cfg.vision_start_token_id,) and spec.end_ids == (cfg.vision_end_token_id,)
    assert set(spec.inner_ids) == {cfg.image_token_id, cfg.video_token_id} and not spec.bidirectional
    assert spec.sinks.kind == "fraction"
    text = cfg.get_text_config()
    assert text._attn_implementation == "bsight" and cfg.vision_config._attn_implementation == "sdpa"


def test_prepare_builds_the_chat_prompt_and_one_segment_per_image(adapter, rng):
    sample = prompts.interleaved_sample(rng, [(60, 90), (100, 50), (56, 56)], options=["a cat", "a dog"])
    prep = adapter.prepare(sample)
    ids = prep.inputs["input_ids"][0]
    (layout,) = prep.layouts
    grids = prep.inputs["image_grid_thw"]
    assert layout.num_images == 3 and layout.length == ids.numel()
    cfg = adapter.model.config
    for span, grid in zip(layout.spans, grids):
        assert ids[span.start] == cfg.vision_start_token_id and ids[span.end - 1] == cfg.vision_end_token_id
        assert span.length - 2 == int(grid.prod()) // 4
        assert span.sinks[0] == span.start
    assert torch.equal(prep.inputs["mm_token_type_ids"][0].bool(), ids == cfg.image_token_id)
    text = adapter.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert text.count("\nA. a cat\nB. a dog") == 1 and text.count("A. ") == 1  # options once: the task's own


def test_bsight_outside_a_method_is_transformers_sdpa(adapter, rng):
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(60, 90), (84, 84)]))
    with torch.no_grad():
        ours = adapter.model(**prep.inputs).logits
        with reference_masks.text_attention(adapter.model, "sdpa"):
            theirs = adapter.model(**prep.inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_dense_matches_transformers_sdpa_on_a_padded_batch(adapter, rng):
    preps = [
        adapter.prepare(prompts.interleaved_sample(rng, sizes, words=w))
        for sizes, w in (([(60, 90)], 12), ([(84, 56), (56, 84)], 3))
    ]
    batch = adapter.prepared(prompts.left_pad(preps, adapter.tokenizer.pad_token_id))
    assert batch.layouts[0].valid_start > 0 or batch.layouts[1].valid_start > 0
    ours = adapter.logits(batch, Dense())
    with torch.no_grad(), reference_masks.text_attention(adapter.model, "sdpa"):
        theirs = adapter.model(**batch.inputs).logits
    for row, layout in enumerate(batch.layouts):
        lo, hi = layout.valid_start, layout.valid_end
        torch.testing.assert_close(ours[row, lo:hi], theirs[row, lo:hi].float(), rtol=1e-4, atol=1e-4)


def test_blindsight_all_dense_equals_dense(adapter, rng):
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(60, 90), (84, 84), (56, 112)]))
    torch.testing.assert_close(
        adapter.logits(prep, Blindsight({"uniform": "dense"})), adapter.logits(prep, Dense()), rtol=0, atol=0
    )


def test_blindsight_sparse_equals_explicit_per_head_masks(adapter, rng, tmp_path):
    sinks = SinkPolicy(fraction=0.3)
    info = adapter.info
    head_map = reference_masks.random_head_map(
        info.model_id, info.num_layers, info.num_heads, int(rng.integers(1 << 30)), sinks
    )
    method = Blindsight({"head_map": str(head_map.save(tmp_path / "map.json"))})
    preps = [
        adapter.prepare(prompts.interleaved_sample(rng, sizes, words=w))
        for sizes, w in (([(84, 84), (60, 90), (56, 56)], 4), ([(112, 56), (56, 84)], 9))
    ]
    batch = adapter.prepared(prompts.left_pad(preps, adapter.tokenizer.pad_token_id))
    ours = adapter.logits(batch, method)
    assert method.sink_policy == sinks
    masks = reference_masks.layer_masks(batch.layouts, head_map, info.sliding_windows, sinks)
    with torch.no_grad(), reference_masks.explicit_masks(adapter.model, masks):
        theirs = adapter.model(**batch.inputs).logits.float()
    dense = adapter.logits(batch, Dense())
    for row, layout in enumerate(batch.layouts):
        lo, hi = layout.valid_start, layout.valid_end
        torch.testing.assert_close(ours[row, lo:hi], theirs[row, lo:hi], rtol=1e-4, atol=1e-4)
        # the sparse map changes every position after the first image's second token (not a vacuous check)
        assert (ours[row, layout.spans[1].start : hi] - dense[row, layout.spans[1].start : hi]).abs().max() > 1e-3


class _Counting(Blindsight):
    """Blindsight that counts its prefill calls (decode steps must never reach a method)."""

    calls = 0

    def prefill(self, q, k, v, meta, call):
        type(self).calls += 1
        return super().prefill(q, k, v, meta, call)


def test_generation_runs_and_decode_is_dense(adapter, rng):
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(60, 90), (84, 84)]))
    dense_ids = adapter.generate_ids(prep, Dense(), 6)
    assert torch.equal(adapter.generate_ids(prep, Blindsight({"uniform": "dense"}), 6), dense_ids)
    _Counting.calls = 0
    gen = adapter.generate(prep, _Counting({"uniform": "intra_image_sink"}), 5)
    assert _Counting.calls == adapter.info.num_layers  # the prefill only
    assert gen.prompt_tokens == prep.layouts[0].num_valid and 0 < gen.prefill_s <= gen.total_s
    assert isinstance(gen.text, str)


def test_methods_swap_without_reloading(adapter, rng):
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(60, 90), (84, 84)]))
    weights = adapter.model.lm_head.weight.data_ptr()
    first = adapter.logits(prep, Dense())
    adapter.logits(prep, Blindsight({"uniform": "sink"}))
    torch.testing.assert_close(adapter.logits(prep, Dense()), first, rtol=0, atol=0)
    assert adapter.model.lm_head.weight.data_ptr() == weights


def test_image_part_without_pixels_is_a_clear_error(adapter):
    sample = Sample(id="s1", task="t", parts=[TextPart(text="x"), ImagePart(ref="missing.png")], answer="")
    with pytest.raises(ValueError, match="missing.png"):
        adapter.prepare(sample)


def test_video_frames_split_into_segments_and_grids_are_checked():
    class Cfg:
        image_token_id, video_token_id = 12, 13

        class vision_config:
            spatial_merge_size = 2

    spec = LayoutSpec(start_ids=(10,), end_ids=(11,), inner_ids=(12, 13), sinks=SinkPolicy(fraction=0.5))
    image = [10] + [12] * 4 + [11]  # grid (1, 4, 4) -> 4 pads
    video = [10] + [13] * 6 + [11]  # grid (3, 2, 4) -> 3 frames of 2 pads
    ids = torch.tensor([[1, 2] + image + [3] + video + [4]])
    (layout,) = qwen_layouts(
        ids, spec, Cfg, image_grid_thw=torch.tensor([[1, 4, 4]]), video_grid_thw=torch.tensor([[3, 2, 4]])
    )
    assert [(s.start, s.end) for s in layout.spans] == [(2, 8), (9, 12), (12, 14), (14, 17)]
    assert [s.sinks for s in layout.spans] == [(2, 3, 4), (9, 10), (12,), (14, 15)]
    with pytest.raises(LayoutError, match="grid says 6"):
        qwen_layouts(ids, spec, Cfg, image_grid_thw=torch.tensor([[1, 4, 6]]), video_grid_thw=torch.tensor([[3, 2, 4]]))
    with pytest.raises(LayoutError, match="more video segments"):
        qwen_layouts(ids, spec, Cfg, image_grid_thw=torch.tensor([[1, 4, 4]]))
    with pytest.raises(LayoutError, match="more image grids"):
        qwen_layouts(
            ids,
            spec,
            Cfg,
            image_grid_thw=torch.tensor([[1, 4, 4], [1, 2, 2]]),
            video_grid_thw=torch.tensor([[3, 2, 4]]),
        )


def test_missing_checkpoints_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        Qwen2VL({"checkpoint": str(tmp_path / "nope")}).load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Qwen2VL({"checkpoint": str(tmp_path / "empty")}).load()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'Qwen/Qwen2-VL-7B-Instruct' not found.*hub cache .*offline"):
        Qwen2VL({"checkpoint": "Qwen/Qwen2-VL-7B-Instruct", "cache_dir": str(tmp_path / "hub")}).load()


def test_a_checkpoint_of_another_model_is_refused(adapter, tmp_path):
    other = Qwen25VL if isinstance(adapter, Qwen2VL) and not isinstance(adapter, Qwen25VL) else Qwen2VL
    with pytest.raises(ValueError, match=f"adapter {other.name!r} loads"):
        other({"checkpoint": str(adapter.options.checkpoint)}).load()


def test_hub_snapshot_in_the_cache_loads_offline(adapter, tmp_path, monkeypatch):
    """A hub id resolves to its cached snapshot (HF cache layout) without network; the revision is recorded."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in Path(adapter.options.checkpoint).iterdir():
        (snap / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = type(adapter)(
        {"checkpoint": "org/tiny", "cache_dir": str(tmp_path / "hub"), "dtype": "float32", "device": "cpu"}
    )
    a.load()
    assert a.info.model_id == "org/tiny" and a.info.revision == "a" * 40


def test_ttft_script_runs_end_to_end_on_the_small_config(tmp_path):
    """`python -m bsight.harness.benchmarks.ttft --small`: the GPU benchmark's whole path on a tiny Qwen2-VL on
    the CPU."""
    import json

    from bsight.harness.benchmarks import ttft

    out = tmp_path / "ttft.json"
    assert (
        ttft.main(["--small", "--out", str(out), "--lengths", "260,500", "--warmup-tokens", "200", "--mlp-chunk", "64"])
        == 0
    )
    result = json.loads(out.read_text())
    assert "random" in result["model"]["weights"] and result["head_map"]["kind"].startswith("random")
    assert result["provenance"]["command"].startswith("python -m bsight.harness.benchmarks.ttft --small")
    assert result["provenance"]["packages"]["transformers"]
    assert abs(result["head_map"]["shares"]["dense"] - 0.3) < 0.1
    assert [e["tokens"] for e in result["lengths"]] == [260, 500]
    for entry in result["lengths"]:
        assert entry["images"] >= 2 and entry["image_tokens"] + entry["text_tokens"] == entry["tokens"]
        for name in ("dense", "blindsight"):
            run = entry[name]
            assert run["ttft_ms"] > run["attention_ms"] > 0 and run["runs"][0]["attention_calls"] == 2
        assert entry["speedup"]["ttft"] > 0


def test_chunked_mlps_keep_the_model_output():
    """The TTFT benchmark runs MLPs (vision blocks, merger, decoder layers) in token chunks to fit 300K
    tokens; the logits must not change."""
    from bsight.harness.benchmarks import ttft

    model = ttft.build_model(
        ttft.SMALL_CONFIG, torch.device("cpu"), torch.float32, seed=int(np.random.default_rng().integers(1000))
    )
    adapter = Qwen2VL({"checkpoint": ttft.MODEL_ID, "device": "cpu"})
    adapter.attach(model, None, model_id=ttft.MODEL_ID, weights="random")
    images = ttft.process_images(ttft.SMALL_IMAGE_SIZES, torch.float32, seed=1)
    inputs, stats = ttft.build_prompt(300, images, ttft.SMALL_CONFIG, seed=2)
    prep = adapter.prepared(inputs)
    whole = adapter.logits(prep, Dense())
    assert ttft.chunk_mlps(model, 13) == 4  # 2 decoder layers, 1 vision block, the vision merger
    assert stats["vision_patches"] > 4 * 13 and stats["tokens"] == 300
    torch.testing.assert_close(adapter.logits(prep, Dense()), whole, rtol=1e-5, atol=1e-5)
