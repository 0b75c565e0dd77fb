"""Adapter gemma3 on a tiny random-weight checkpoint of transformers' Gemma3ForConditionalGeneration.

The tiny model has 16 soft tokens per image (bidirectional among themselves) and a sliding window of 6 on
two of its three layers, so windows cut through images and prompts. Equivalences (float32, CPU): bsight
outside a method and dense through the bridge == transformers' own sdpa path with its masks; blindsight
all-dense == dense; blindsight sparse == explicit per-head 4-D masks; generation runs, decode is dense.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsight.harness.adapter_kit import prompts, reference_masks, tiny_vlms  # noqa: E402
from bsight.kernels.sparsity.layout import SinkPolicy  # noqa: E402
from bsight.plugins.methods.blindsight import Blindsight  # noqa: E402
from bsight.plugins.methods.dense import Dense  # noqa: E402
from bsight.plugins.models.gemma3 import Gemma3  # noqa: E402

WINDOW = 6

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = tiny_vlms.gemma_checkpoint(tmp_path_factory.mktemp("gemma3"), seed=3, sliding_window=WINDOW)
    a = Gemma3({"checkpoint": str(path), "dtype": "float32", "device": "cpu"})
    a.load()
    return a


@pytest.fixture
def rng():
    return np.random.default_rng()


def test_info_has_the_sliding_windows_and_the_spec_is_bidirectional(adapter):
    info = adapter.info
    assert info.sliding_windows == [WINDOW, None, WINDOW]
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim, info.weights) == (3, 4, 2, 16, "random")
    cfg = adapter.model.config
    spec = adapter.layout_spec()
    assert spec.bidirectional and spec.start_ids == (cfg.boi_token_index,) and spec.end_ids == (cfg.eoi_token_index,)
    assert spec.inner_ids == (cfg.image_token_index,)
    assert spec.sinks == SinkPolicy(kind="offsets", offsets=(0,))
    assert cfg.get_text_config()._attn_implementation == "bsight" and cfg.vision_config._attn_implementation == "sdpa"


def test_layout_marks_the_soft_tokens_bidirectional(adapter, rng):
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(40, 60), (64, 32)], options=["yes", "no"]))
    ids = prep.inputs["input_ids"][0]
    tt = prep.inputs["token_type_ids"][0]
    (layout,) = prep.layouts
    assert layout.num_images == 2
    for span in layout.spans:
        assert span.length == 18 and span.bidir == (span.start + 1, span.end - 1) and span.sinks == (span.start,)
        assert bool(tt[span.start + 1 : span.end - 1].all()) and tt[span.start] == 0 and tt[span.end - 1] == 0
    assert int(tt.sum()) == 32
    text = adapter.tokenizer.decode(ids)
    assert (
        text.startswith("<bos><start_of_turn>user\n")
        and text.endswith("<start_of_turn>model\n")
        and text.count("A. yes\nB. no") == 1
        and text.count("A. ") == 1
    )
    assert layout.length > 4 * WINDOW


def test_sinks_override(adapter, tmp_path):
    a = Gemma3(
        {
            "checkpoint": adapter.options.checkpoint,
            "dtype": "float32",
            "device": "cpu",
            "sinks": {"kind": "offsets", "offsets": [0, 5, 9]},
        }
    )
    a.load()
    prep = a.prepare(prompts.interleaved_sample(np.random.default_rng(), [(40, 60)]))
    span = prep.layouts[0].spans[0]
    assert span.sinks == (span.start, span.start + 5, span.start + 9)


def test_bsight_outside_a_method_keeps_transformers_masks(adapter, rng):
    """If the mask function were not registered, transformers would drop the sliding-window and
    bidirectional-image masks and these logits would differ."""
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(40, 60), (64, 32)]))
    with torch.no_grad():
        ours = adapter.model(**prep.inputs).logits
        with reference_masks.text_attention(adapter.model, "sdpa"):
            theirs = adapter.model(**prep.inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_dense_matches_transformers_sdpa_with_windows_and_bidirectional_images(adapter, rng):
    preps = [
        adapter.prepare(prompts.interleaved_sample(rng, sizes, words=w))
        for sizes, w in (([(40, 60), (64, 32)], 3), ([(32, 32)], 10))
    ]
    for batch in (preps[0], adapter.prepared(prompts.left_pad(preps, adapter.tokenizer.pad_token_id))):
        ours = adapter.logits(batch, Dense())
        with torch.no_grad(), reference_masks.text_attention(adapter.model, "sdpa"):
            theirs = adapter.model(**batch.inputs).logits.float()
        for row, layout in enumerate(batch.layouts):
            lo, hi = layout.valid_start, layout.valid_end
            torch.testing.assert_close(ours[row, lo:hi], theirs[row, lo:hi], rtol=1e-4, atol=1e-4)


def test_blindsight_all_dense_equals_dense(adapter, rng):
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(40, 60), (64, 32), (32, 32)]))
    torch.testing.assert_close(
        adapter.logits(prep, Blindsight({"uniform": "dense"})), adapter.logits(prep, Dense()), rtol=1e-5, atol=1e-5
    )


def test_blindsight_sparse_equals_explicit_per_head_masks(adapter, rng):
    sinks = SinkPolicy(kind="offsets", offsets=(0, 3, 7, 12))
    info = adapter.info
    head_map = reference_masks.random_head_map(
        info.model_id, info.num_layers, info.num_heads, int(rng.integers(1 << 30)), sinks
    )
    method = Blindsight({"head_map": head_map})
    preps = [
        adapter.prepare(prompts.interleaved_sample(rng, sizes, words=w))
        for sizes, w in (([(40, 60), (64, 32), (32, 48)], 2), ([(32, 32), (50, 50)], 8))
    ]
    batch = adapter.prepared(prompts.left_pad(preps, adapter.tokenizer.pad_token_id))
    ours = adapter.logits(batch, method)
    masks = reference_masks.layer_masks(batch.layouts, head_map, info.sliding_windows, sinks)
    with torch.no_grad(), reference_masks.explicit_masks(adapter.model, masks):
        theirs = adapter.model(**batch.inputs).logits.float()
    dense = adapter.logits(batch, Dense())
    for row, layout in enumerate(batch.layouts):
        lo, hi = layout.valid_start, layout.valid_end
        torch.testing.assert_close(ours[row, lo:hi], theirs[row, lo:hi], rtol=1e-4, atol=1e-4)
        assert (ours[row, layout.spans[1].start : hi] - dense[row, layout.spans[1].start : hi]).abs().max() > 1e-3


def test_generation_runs_and_decode_is_dense(adapter, rng):
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(40, 60), (64, 32)]))
    dense_ids = adapter.generate_ids(prep, Dense(), 5)
    assert torch.equal(adapter.generate_ids(prep, Blindsight({"uniform": "dense"}), 5), dense_ids)
    calls = []

    class Counting(Blindsight):
        def prefill(self, q, k, v, meta, call):
            calls.append(call)
            return super().prefill(q, k, v, meta, call)

    gen = adapter.generate(prep, Counting({"uniform": "intra_image"}), 4)
    assert [c.layer_idx for c in calls] == [0, 1, 2] and [c.window for c in calls] == [WINDOW, None, WINDOW]
    assert gen.prompt_tokens == prep.layouts[0].num_valid and gen.prefill_s <= gen.total_s
