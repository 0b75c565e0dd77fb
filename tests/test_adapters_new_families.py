"""Built-in adapters qwen3_vl, qwen3_5 (+ MoE) and gemma4 on tiny random checkpoints in the exact on-disk schema.

Each: the checkpoint loads through the adapter's real loader; layouts (images, video frames) match the
processor's counts; dense through the bsight bridge equals transformers' own attention (float32 logits);
``bsight check-adapter``'s full contract passes. Gemma 4 specifics, read from transformers' code: images are
bidirectional in sliding layers only, full layers are wider, and KV-shared layers are softmax attention with
their own queries (kind ``shared_kv``, characterized and counted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bsight.harness.adapter_kit import prompts, reference_masks, tiny_vlms
from bsight.harness.check_adapter import render, run_checks
from bsight.kernels.sparsity.flops import layer_pair_table, pair_counts
from bsight.kernels.sparsity.layout import LayoutError
from bsight.plugins.methods.dense import Dense
from bsight.plugins.models.gemma4 import Gemma4
from bsight.plugins.models.qwen3_5 import Qwen35
from bsight.plugins.models.qwen3_vl import Qwen3VL

pytestmark = pytest.mark.usefixtures("single_thread")
FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}


def _load(cls, path):
    adapter = cls({"checkpoint": str(path), "dtype": "float32", "device": "cpu"})
    adapter.load()
    return adapter


@pytest.fixture(scope="module")
def qwen3vl(tmp_path_factory):
    return _load(Qwen3VL, tiny_vlms.qwen_checkpoint(tmp_path_factory.mktemp("q3"), "qwen3_vl", seed=1))


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory):
    return _load(Qwen35, tiny_vlms.qwen_checkpoint(tmp_path_factory.mktemp("q35"), "qwen3_5", seed=2))


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    return _load(Gemma4, tiny_vlms.gemma4_checkpoint(tmp_path_factory.mktemp("g4"), seed=3))


def _own_logits(adapter, prep):
    with torch.no_grad(), reference_masks.text_attention(adapter.model, "sdpa"):
        return adapter.model(**prep.inputs).logits.float()


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "gemma4"])
def test_tiny_checkpoints_are_in_the_hub_schema(tmp_path, kind):
    path = tiny_vlms.BUILDERS[kind](tmp_path / kind)
    assert FILES <= {p.name for p in path.iterdir()} and (path / "preprocessor_config.json").is_file()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == kind and config["bsight_random_weights"] is True
    if kind.startswith("qwen3_5"):
        assert config["text_config"]["layer_types"] == list(tiny_vlms.QWEN35_LAYERS)
    if kind == "gemma4":
        text = config["text_config"]
        assert text["num_kv_shared_layers"] == 2 and text["use_bidirectional_attention"] == "vision"


def test_qwen3_images_are_segments_checked_against_the_grid(qwen3vl, qwen35):
    for adapter in (qwen3vl, qwen35):
        rng = np.random.default_rng(0)
        prep = adapter.prepare(prompts.interleaved_sample(rng, [(64, 96), (96, 64), (64, 64)]))
        (layout,) = prep.layouts
        merge = adapter.model.config.vision_config.spatial_merge_size
        counts = (prep.inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
        assert [s.length - 2 for s in layout.spans] == counts and layout.num_images == 3
        assert all(s.bidir is None for s in layout.spans)


def _qwen3_video_inputs(adapter, frames: int, hw: tuple[int, int]):
    """Ids as transformers' Qwen3-VL processor writes a video: per frame ``<t seconds>`` + start + pads + end."""
    tok, cfg = adapter.tokenizer, adapter.model.config
    merge = cfg.vision_config.spatial_merge_size
    per_frame = hw[0] * hw[1] // merge**2
    frame = [cfg.vision_start_token_id] + [cfg.video_token_id] * per_frame + [cfg.vision_end_token_id]
    ids = tok("a video:", add_special_tokens=False)["input_ids"]
    for i in range(frames):
        ids += tok(f"<{0.5 + i:.1f} seconds>", add_special_tokens=False)["input_ids"] + frame
    ids += tok(" what happens?", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids])
    patch = cfg.vision_config.patch_size
    channels = 3 * cfg.vision_config.temporal_patch_size * patch * patch
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == cfg.video_token_id).int() * 2,
        "pixel_values_videos": torch.randn(frames * hw[0] * hw[1], channels),
        "video_grid_thw": torch.tensor([[frames, *hw]]),
    }, per_frame


@pytest.mark.parametrize("name", ["qwen3vl", "qwen35"])
def test_qwen3_video_frames_are_one_segment_each_and_dense_matches_the_model(request, name):
    adapter = request.getfixturevalue(name)
    inputs, per_frame = _qwen3_video_inputs(adapter, 3, (4, 4))
    prep = adapter.prepared(inputs)
    (layout,) = prep.layouts
    assert [s.length for s in layout.spans] == [per_frame + 2] * 3
    torch.testing.assert_close(adapter.logits(prep, Dense()), _own_logits(adapter, prep), rtol=1e-4, atol=1e-4)
    wrong = dict(inputs, video_grid_thw=torch.tensor([[2, 4, 4]]))  # the grid says 2 frames, the ids hold 3
    with pytest.raises(LayoutError, match="more video segments in the ids than grids"):
        adapter.read_layouts(wrong)


@pytest.mark.parametrize("name", ["qwen3vl", "qwen35", "gemma4"])
def test_dense_through_the_bridge_equals_the_models_own_attention(request, name):
    adapter = request.getfixturevalue(name)
    rng = np.random.default_rng(4)
    preps = [adapter.prepare(prompts.interleaved_sample(rng, s)) for s in ([(64, 96), (40, 40)], [(64, 64)])]
    batch = adapter.prepared(prompts.left_pad(preps, adapter.tokenizer.pad_token_id))
    for prep in (preps[0], batch):
        ours, theirs = adapter.logits(prep, Dense()), _own_logits(adapter, prep)
        for row, layout in enumerate(prep.layouts):
            lo, hi = layout.valid_start, layout.valid_end
            torch.testing.assert_close(ours[row, lo:hi], theirs[row, lo:hi], rtol=1e-4, atol=1e-4)


def test_gemma4_info_from_its_config(gemma4):
    info = gemma4.info
    # the model's own per-layer flags (transformers >= 5.23 also derives them as text.kv_sharing_modes, 5.17 does not):
    # the last two layers reuse the K/V that the last unshared layer of their type stores
    attn = [m for m in gemma4.model.modules() if hasattr(m, "is_kv_shared_layer")]
    assert [a.is_kv_shared_layer for a in attn] == [False, False, False, True, True]
    assert [a.store_full_length_kv for a in attn] == [False, True, True, False, False]
    assert info.kinds() == ["attention", "attention", "attention", "shared_kv", "shared_kv"]
    assert info.attention_layers() == [0, 1, 2, 3, 4]  # shared-KV layers have their own queries: characterized
    assert info.head_dims == [16, 32, 16, 16, 32] and info.head_dim == 16
    assert info.sliding_windows == [8, None, 8, 8, None]
    assert info.bidirectional_layers == [True, False, True, True, False]
    spec = gemma4.layout_spec()
    assert spec.bidirectional and spec.start_ids == (gemma4.model.config.boi_token_id,)


def test_gemma4_layout_counts_come_from_the_image_processor(gemma4):
    rng = np.random.default_rng(5)
    prep = gemma4.prepare(prompts.interleaved_sample(rng, [(40, 60), (32, 32), (64, 20)]))
    (layout,) = prep.layouts
    counts = ((prep.inputs["image_position_ids"] != -1).all(-1).sum(-1) // 4).tolist()
    assert [s.length - 2 for s in layout.spans] == counts and len(set(counts)) > 1  # sizes differ by aspect ratio
    assert all(s.bidir == (s.start + 1, s.end - 1) for s in layout.spans)
    mm = prep.inputs["mm_token_type_ids"][0]
    assert int(mm.sum()) == sum(counts)
    bad = dict(prep.inputs, image_position_ids=prep.inputs["image_position_ids"][:2])
    with pytest.raises(LayoutError, match="more image/video segments"):
        gemma4.read_layouts(bad)


def test_gemma4_images_are_bidirectional_in_sliding_layers_only(gemma4):
    """Giving every layer the bidirectional layout (as for Gemma 3) departs from the model; the adapter's
    per-layer flags match it. FLOPs count the full layers' image queries causally."""
    prep = gemma4.prepare(prompts.interleaved_sample(np.random.default_rng(6), [(40, 60), (32, 32)]))
    theirs = _own_logits(gemma4, prep)
    torch.testing.assert_close(gemma4.logits(prep, Dense()), theirs, rtol=1e-4, atol=1e-4)
    info = gemma4.info
    try:
        gemma4._info = info.model_copy(update={"bidirectional_layers": []})
        everywhere = gemma4.logits(prep, Dense())
    finally:
        gemma4._info = info
    assert (everywhere - theirs).abs().max() > 1e-3
    layout = prep.layouts[0]
    table = layer_pair_table(layout, info.sliding_windows, info.kinds(), info.bidirectional_layers)
    assert table[1].tolist() == list(pair_counts(layout.causal()))
    assert table[0].tolist() == list(pair_counts(layout, 8))


def test_gemma4_video_frames_are_segments(gemma4):
    cfg, tok = gemma4.model.config, gemma4.tokenizer
    frame = [cfg.boi_token_id] + [cfg.video_token_id] * 6 + [cfg.eoi_token_id]
    ids = tok("clip:", add_special_tokens=False)["input_ids"]
    for t in ("00:00", "00:01"):
        ids += tok(f" {t} ", add_special_tokens=False)["input_ids"] + frame
    ids = torch.tensor([ids])
    positions = torch.full((2, 40, 2), -1)
    positions[:, :24] = 0  # 24 real patches / pooling 2 x 2 = 6 soft tokens per frame
    layouts = gemma4.read_layouts({"input_ids": ids, "video_position_ids": positions})
    assert [s.length for s in layouts[0].spans] == [8, 8]
    with pytest.raises(LayoutError, match="more image/video frames|more image/video segments|encoded more"):
        gemma4.read_layouts({"input_ids": ids, "video_position_ids": torch.cat([positions, positions[:1]])})


def test_bsight_plugins_lists_the_new_adapters_as_built_ins(registry):
    infos = {i.name: i for i in registry.all() if i.family == "model"}
    for name in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "gemma4"):
        assert infos[name].package == "bsight", name


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "gemma3", "gemma4"]
)
def test_every_built_in_adapter_passes_the_contract_checks(registry, tmp_path, name):
    cls = registry.get("model", name)
    adapter = _load(cls, tiny_vlms.BUILDERS[cls.model_types[0]](tmp_path / name))
    results = run_checks(adapter)
    assert [r.name for r in results] == [
        "hybrid_layers",
        "layout",
        "dense_equals_model",
        "category_masks",
        "generation",
    ]
    assert all(r.passed for r in results), render(results)


def test_gemma4_kv_shared_layers_are_characterized_with_every_query(gemma4):
    """transformers (from 5.23) runs Gemma 4's KV-shared layers on the last ``logits_to_keep`` positions only when
    that is an int; the adapter's prefill keeps every query, so those layers get NMSE rows and categories of their
    own (transformers 5.17-5.22 run every query whatever ``logits_to_keep`` says)."""
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextModel

    from bsight.harness.characterize import characterize_model
    from bsight.kernels.sparsity.aggregate import build_head_map
    from bsight.kernels.sparsity.headmap import DatasetInfo

    rng = np.random.default_rng(7)
    preps = [("p0", gemma4.prepare(prompts.interleaved_sample(rng, [(40, 60), (32, 32)])))]
    result = characterize_model(gemma4, preps, dataset=DatasetInfo(name="t", size=1), run=gemma4.prefill)
    assert result.layer_kinds == ["attention", "attention", "attention", "shared_kv", "shared_kv"]
    assert [len(layer) for layer in result.prompts[0].nmse] == [4] * 5
    head_map = build_head_map(result)
    assert all(len(row) == 4 for row in head_map.categories)

    def generation_forward(prep, method):
        return gemma4.forward(prep, method, use_cache=False, logits_to_keep=1)

    if not hasattr(Gemma4TextModel, "_maybe_slice_kv_shared_inputs"):  # transformers < 5.23: no slicing to catch
        characterize_model(gemma4, preps, dataset=DatasetInfo(name="t", size=1), run=generation_forward)
        return
    with pytest.raises(ValueError, match=r"no attention call recorded for softmax-attention layers \[3, 4\]"):
        characterize_model(gemma4, preps, dataset=DatasetInfo(name="t", size=1), run=generation_forward)
