"""The transformers attention bridge: registration, per-row routing of prefill, what it leaves to sdpa."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from bsight.harness import attention_bridge  # noqa: E402
from bsight.harness.adapter_kit import prompts, tiny_vlms  # noqa: E402
from bsight.harness.attention_bridge import AttentionTimer, active_method, attention_forward, mask_function  # noqa: E402
from bsight.harness.interfaces import AttentionMethod  # noqa: E402
from bsight.kernels.dispatch import dense_prefill  # noqa: E402
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy  # noqa: E402
from bsight.kernels.sparsity.metadata import LayoutMeta  # noqa: E402
from bsight.plugins.methods.dense import Dense
from bsight.plugins.models.qwen2_vl import Qwen2VL  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


class Recording(AttentionMethod):
    """Dense attention that records what the bridge hands it."""

    name = "recording"

    def __init__(self, sink_policy: SinkPolicy | None = None) -> None:
        super().__init__()
        self.sink_policy = sink_policy
        self.seen: list[tuple[tuple, tuple, LayoutMeta, object]] = []

    def prefill(self, q, k, v, meta, call):
        self.seen.append((tuple(q.shape), tuple(k.shape), meta, call))
        return dense_prefill(q, k, v, meta, call)


class Module(torch.nn.Module):
    def __init__(self, layer_idx: int = 0, groups: int = 2, is_causal: bool = True) -> None:
        super().__init__()
        self.layer_idx, self.num_key_value_groups, self.is_causal = layer_idx, groups, is_causal


def _qkv(B: int, S: int, Hq: int = 4, Hkv: int = 2, D: int = 8):
    return torch.randn(B, Hq, S, D), torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)


def _layouts(S: int) -> list[PromptLayout]:
    full = PromptLayout.from_segments([("text", 3), ("image", 6), ("text", 2), ("image", 5), ("text", S - 16)])
    padded = PromptLayout.from_segments([("text", 2), ("image", 5), ("text", S - 11)])
    shift = 4  # left padding of the second row
    spans = tuple(type(s)(s.start + shift, s.end + shift, tuple(p + shift for p in s.sinks)) for s in padded.spans)
    return [full, PromptLayout(length=S, spans=spans, valid_start=shift, valid_end=S)]


def test_register_puts_bsight_in_both_registries():
    assert attention_bridge.register() == attention_bridge.register() == "bsight"
    assert ALL_ATTENTION_FUNCTIONS["bsight"] is attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["bsight"] is mask_function


def test_prefill_goes_per_unpadded_row_with_gqa_not_expanded():
    S = 24
    q, k, v = _qkv(2, S)
    layouts = _layouts(S)
    method = Recording()
    with active_method(method, layouts):
        out, weights = attention_forward(Module(layer_idx=3), q, k, v, None, scaling=0.3, sliding_window=7)
    assert weights is None and out.shape == (2, S, 4, 8)
    (q0, k0, m0, c0), (q1, k1, m1, c1) = method.seen
    assert q0 == (4, S, 8) and k0 == (2, S, 8) and q1 == (4, S - 4, 8) and k1 == (2, S - 4, 8)
    assert m1.length == S - 4 and m1.img_start.tolist() == [2]  # re-based on the first real token
    assert c0.layer_idx == 3 and c0.scale == 0.3 and c0.window == 7
    assert out[1, :4].abs().max() == 0  # padding rows are left at zero
    expected = dense_prefill(q[1, :, 4:], k[1, :, 4:], v[1, :, 4:], m1, c1).transpose(0, 1)
    torch.testing.assert_close(out[1, 4:], expected)


def test_metadata_is_built_once_per_row_and_measured_as_overhead(monkeypatch):
    S = 24
    built = []
    original = LayoutMeta.build.__func__
    monkeypatch.setattr(
        LayoutMeta,
        "build",
        classmethod(lambda cls, layout, device="cpu": built.append(layout) or original(cls, layout, device)),
    )
    method = Recording()
    with active_method(method, _layouts(S)):
        for layer in range(3):
            attention_forward(Module(layer), *_qkv(2, S), None)
    assert len(built) == 2 and len(method.seen) == 6
    assert method.overhead.take()["layout_metadata"] > 0


def test_the_methods_sink_policy_replaces_the_layouts_sinks():
    S = 24
    method = Recording(sink_policy=SinkPolicy(fraction=0.5))
    with active_method(method, _layouts(S)):
        attention_forward(Module(), *_qkv(2, S), None)
    meta = method.seen[0][2]
    assert meta.sink_idx.tolist() == [3, 4, 5, 11, 12, 13]  # ceil(0.5 * 6) and ceil(0.5 * 5) leading tokens
    plain = Recording()
    with active_method(plain, _layouts(S)):
        attention_forward(Module(), *_qkv(2, S), None)
    assert plain.seen[0][2].sink_idx.tolist() == [3, 11]


def test_decode_non_causal_and_out_of_context_calls_go_to_sdpa():
    S = 24
    method = Recording()
    q, k, v = _qkv(1, S)
    with active_method(method, _layouts(S)[:1]):
        dec, _ = attention_forward(Module(), q[:, :, -1:], k, v, None)  # a decode step: 1 query, S keys
        enc, _ = attention_forward(Module(is_causal=False), q, k, v, None)  # e.g. a vision tower
        enc2, _ = attention_forward(Module(), q, k, v, None, is_causal=False)
    assert method.seen == []
    kx, vx = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    torch.testing.assert_close(dec, F.scaled_dot_product_attention(q[:, :, -1:], kx, vx).transpose(1, 2))
    torch.testing.assert_close(enc, F.scaled_dot_product_attention(q, kx, vx).transpose(1, 2))
    torch.testing.assert_close(enc2, enc)
    out, _ = attention_forward(Module(), q, k, v, None)  # no active method: transformers' sdpa, causal
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, kx, vx, is_causal=True).transpose(1, 2))


def test_mask_function_returns_none_only_inside_a_prefill():
    S = 24
    kwargs = dict(batch_size=1, q_length=S, kv_length=S, attention_mask=torch.tensor([[0] * 3 + [1] * (S - 3)]).bool())
    outside = mask_function(**kwargs)
    assert outside is not None and outside.shape == (1, 1, S, S)
    with active_method(Recording(), _layouts(S)[:1]):
        assert mask_function(**kwargs) is None
        decode = mask_function(**dict(kwargs, q_length=1, kv_length=S + 1, attention_mask=torch.ones(1, S + 1).bool()))
        assert decode is None or decode.shape[-2:] == (1, S + 1)  # sdpa's own answer (None: is_causal skip)


def test_timer_counts_every_prefill_call():
    S = 24
    timer = AttentionTimer()
    with active_method(Dense(), _layouts(S), timer):
        for layer in range(4):
            attention_forward(Module(layer), *_qkv(2, S), None)
    assert timer.calls == 4 and timer.total_ms() > 0


def test_bad_inputs_are_clear_errors():
    S = 24

    class WrongShape(Recording):
        name = "wrong"

        def prefill(self, q, k, v, meta, call):
            return q[:, :-1]

    with pytest.raises(ValueError, match="one layout per batch row"):
        with active_method(Dense(), []):
            pass
    with pytest.raises(ValueError, match="one .padded. length"):
        with active_method(Dense(), [PromptLayout(length=3), PromptLayout(length=4)]):
            pass
    with active_method(Dense(), _layouts(S)), pytest.raises(ValueError, match="2 layouts for a batch of 1"):
        attention_forward(Module(), *_qkv(1, S), None)
    with active_method(WrongShape(), _layouts(S)), pytest.raises(ValueError, match="method 'wrong' returned"):
        attention_forward(Module(), *_qkv(2, S), None)
    with active_method(Dense(), _layouts(S)), pytest.raises(NotImplementedError, match="softcap"):
        attention_forward(Module(), *_qkv(2, S), None, softcap=50.0)
    with active_method(Dense(), _layouts(S)), pytest.raises(ValueError, match="precomputed attention mask"):
        attention_forward(Module(), *_qkv(2, S), torch.ones(2, 1, S, S, dtype=torch.bool))


def test_vision_tower_never_reaches_the_method_even_on_bsight(tmp_path):
    """The vision tower is loaded on sdpa; even switched to "bsight" its non-causal calls stay on sdpa."""
    adapter = Qwen2VL(
        {"checkpoint": str(tiny_vlms.qwen_checkpoint(tmp_path / "q", seed=5)), "dtype": "float32", "device": "cpu"}
    )
    adapter.load()
    prep = adapter.prepare(prompts.interleaved_sample(np.random.default_rng(), [(84, 84), (56, 112)]))
    reference = adapter.logits(prep, Dense())
    adapter.model.set_attn_implementation({"vision_config": "bsight"})
    method = Recording()
    torch.testing.assert_close(adapter.logits(prep, method), reference, rtol=0, atol=0)
    assert adapter.model.config.vision_config._attn_implementation == "bsight"
    assert [c.layer_idx for *_, c in method.seen] == list(range(adapter.info.num_layers))
