"""Method blindsight on its own: options, head map loading and checking, dispatch of heads to SDPA, kernel
and reference, and the kernel fallback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

import bsight.kernels.blindsight_attention  # noqa: E402
from bsight.harness.adapter_kit import reference_masks  # noqa: E402
from bsight.harness.interfaces import ModelInfo  # noqa: E402
from bsight.kernels import dispatch  # noqa: E402
from bsight.kernels.dispatch import LayerCall
from bsight.kernels.reference import reference_attention  # noqa: E402
from bsight.kernels.sparsity.categories import Category  # noqa: E402
from bsight.kernels.sparsity.headmap import HeadMap  # noqa: E402
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy  # noqa: E402
from bsight.kernels.sparsity.metadata import LayoutMeta  # noqa: E402
from bsight.plugins.methods.blindsight import Blindsight  # noqa: E402

HQ, HKV, D = 8, 2, 16

pytestmark = pytest.mark.usefixtures("single_thread")


def _info(layers: int = 3, model_id: str = "org/model") -> ModelInfo:
    return ModelInfo(
        model_id=model_id,
        num_layers=layers,
        num_heads=HQ,
        num_kv_heads=HKV,
        head_dim=D,
        sliding_windows=[None] * layers,
        weights="random",
    )


SINKS = SinkPolicy(fraction=0.25)


def _meta(bidirectional: bool = False, sinks: SinkPolicy = SINKS) -> LayoutMeta:
    segs = [("text", 5), ("image", 12), ("text", 3), ("image", 9), ("text", 2), ("image", 10), ("text", 4)]
    return LayoutMeta.build(PromptLayout.from_segments(segs, sinks=sinks, bidirectional=bidirectional))


def _qkv(S: int):
    return torch.randn(HQ, S, D), torch.randn(HKV, S, D), torch.randn(HKV, S, D)


def _map(rows: list[list[str]], sinks: SinkPolicy = SINKS, model_id: str = "org/model") -> HeadMap:
    return HeadMap.uniform(model_id, len(rows), HQ, "dense", sinks).model_copy(update={"categories": rows})


def test_options_are_validated():
    with pytest.raises(ValidationError, match="exactly one of 'head_map'"):
        Blindsight({})
    with pytest.raises(ValidationError, match="exactly one of 'head_map'"):
        Blindsight({"head_map": "x.json", "uniform": "sink"})
    with pytest.raises(ValidationError, match="unknown head category 'sinks'"):
        Blindsight({"uniform": "sinks"})
    with pytest.raises(ValidationError, match="extra"):
        Blindsight({"uniform": "sink", "tau": 0.1})


def test_setup_loads_and_checks_the_head_map(tmp_path, caplog):
    rows = [["dense", "sink", "intra_image", "intra_image_sink"] * 2] * 3
    path = _map(rows, SinkPolicy(fraction=0.5), model_id="org/other").save(tmp_path / "map.json")
    method = Blindsight({"head_map": str(path)})
    with caplog.at_level(logging.WARNING):
        method.setup(_info())
    assert "org/other" in caplog.text  # a map of another model id is applied, with a warning
    assert method.head_categories(2).tolist() == [0, 1, 2, 3] * 2
    assert method.sink_policy == SinkPolicy(fraction=0.5)  # the map's policy reaches the bridge
    assert "head_map_load" in method.overhead.take()
    override = Blindsight({"head_map": str(path), "sink_policy": {"fraction": 0.1}})
    override.setup(_info())
    assert override.sink_policy == SinkPolicy(fraction=0.1)
    with pytest.raises(ValueError, match="3 layers x 8 heads, the model has 4 x 8"):
        Blindsight({"head_map": str(path)}).setup(_info(layers=4))
    with pytest.raises(FileNotFoundError, match="head map not found"):
        Blindsight({"head_map": str(tmp_path / "none.json")}).setup(_info())
    uniform = Blindsight({"uniform": "intra_image"})
    uniform.setup(_info())
    assert uniform.sink_policy is None and uniform.head_categories(0).tolist() == [2] * HQ
    with pytest.raises(ValueError, match="layer index 3 outside"):
        uniform.prefill(*_qkv(45), _meta(), LayerCall(layer_idx=3, scale=0.25))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(
    "row",
    [
        [
            "dense",
            "sink",
            "intra_image",
            "intra_image_sink",
            "dense",
            "dense",
            "sink",
            "intra_image",
        ],  # mixed GQA groups
        ["dense"] * 4 + ["intra_image_sink"] * 4,  # whole groups: K/V not expanded
        ["sink"] * 8,
        ["dense"] * 8,
    ],
)
def test_prefill_equals_the_reference_per_head(row, bidirectional):
    meta = _meta(bidirectional)
    method = Blindsight({"head_map": _map([row])})
    method.setup(_info(layers=1))
    q, k, v = _qkv(meta.length)
    call = LayerCall(layer_idx=0, scale=D**-0.5)
    cats = torch.tensor([Category.parse(c).value for c in row], dtype=torch.int32)
    out = method.prefill(q, k, v, meta, call)
    torch.testing.assert_close(out, reference_attention(q, k, v, meta, cats, scale=call.scale), rtol=1e-5, atol=1e-5)
    if set(row) != {"dense"}:  # the sparse heads really are sparse
        sparse = cats != Category.DENSE
        dense = reference_attention(q, k, v, meta, torch.zeros_like(cats), scale=call.scale)
        assert (out[sparse] - dense[sparse]).abs().max() > 1e-3


def test_windows_and_prompts_without_images():
    row = ["dense", "sink", "intra_image", "intra_image_sink"] * 2
    method = Blindsight({"head_map": _map([row])})
    method.setup(_info(layers=1))
    meta = _meta()
    q, k, v = _qkv(meta.length)
    cats = method.head_categories(0)
    windowed = method.prefill(q, k, v, meta, LayerCall(layer_idx=0, scale=0.2, window=7))
    torch.testing.assert_close(
        windowed, reference_attention(q, k, v, meta, cats, scale=0.2, window=7), rtol=1e-5, atol=1e-5
    )
    text_only = LayoutMeta.build(PromptLayout(length=20))
    q, k, v = _qkv(20)
    torch.testing.assert_close(
        method.prefill(q, k, v, text_only, LayerCall(layer_idx=0, scale=0.2)),
        reference_attention(q, k, v, text_only, torch.zeros(HQ, dtype=torch.int32), scale=0.2),
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_kernel_gets_the_layer_and_missing_or_partial_kernels_fall_back(monkeypatch, caplog):
    dispatch._warned.clear()
    row = ["dense", "sink", "intra_image", "intra_image_sink", "dense", "dense", "sink", "intra_image"]
    meta = _meta()
    q, k, v = _qkv(meta.length)
    call = LayerCall(layer_idx=0, scale=0.25)
    expected = reference_attention(
        q, k, v, meta, torch.tensor([Category.parse(c).value for c in row], dtype=torch.int32), scale=0.25
    )
    seen = []

    def kernel(q_, k_, v_, meta_, cats_, *, scale=None, window=None):  # exactly the reference's signature
        seen.append((q_.shape[0], k_.shape[0], cats_.tolist(), scale))
        return reference_attention(q_, k_, v_, meta_, cats_, scale=scale, window=window)

    monkeypatch.setattr(bsight.kernels.blindsight_attention, "blindsight_attention", kernel, raising=False)
    method = Blindsight({"head_map": _map([row]), "kernel": "triton"})
    method.setup(_info(layers=1))
    torch.testing.assert_close(method.prefill(q, k, v, meta, call), expected, rtol=1e-5, atol=1e-5)
    assert seen == [
        (HQ, HKV, [0, 1, 2, 3, 0, 0, 1, 2], 0.25)
    ]  # every head, K/V not expanded: the kernel routes dense heads

    def unsupported(*args, **kwargs):
        raise NotImplementedError("sliding windows")

    def wrong_dtype(*args, **kwargs):
        raise TypeError("q, k, v must all be bfloat16 or float16")

    monkeypatch.setattr(bsight.kernels.blindsight_attention, "blindsight_attention", unsupported)
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(method.prefill(q, k, v, meta, call), expected, rtol=1e-5, atol=1e-5)
    assert "sliding windows" in caplog.text and "reference" in caplog.text
    monkeypatch.setattr(bsight.kernels.blindsight_attention, "blindsight_attention", wrong_dtype)
    torch.testing.assert_close(method.prefill(q, k, v, meta, call), expected, rtol=1e-5, atol=1e-5)
    assert "bfloat16 or float16" in caplog.text
    monkeypatch.setattr(bsight.kernels.blindsight_attention, "blindsight_attention", unsupported)

    strict = Blindsight({"head_map": _map([row]), "kernel": "triton", "fallback": False})
    strict.setup(_info(layers=1))
    with pytest.raises(NotImplementedError, match="sliding windows"):
        strict.prefill(q, k, v, meta, call)

    monkeypatch.delattr(bsight.kernels.blindsight_attention, "blindsight_attention")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(method.prefill(q, k, v, meta, call), expected, rtol=1e-5, atol=1e-5)
    assert "blindsight_attention is unavailable" in caplog.text
    with pytest.raises(RuntimeError, match="blindsight_attention is unavailable"):
        strict.prefill(q, k, v, meta, call)


def test_dense_heads_can_stay_in_the_kernel(monkeypatch):
    row = ["dense", "sink"] * 4
    seen = []

    def kernel(q, k, v, meta, cats, *, scale=None, window=None, dense_backend="auto"):
        seen.append((cats.tolist(), dense_backend))
        return reference_attention(q, k, v, meta, cats, scale=scale, window=window)

    monkeypatch.setattr(bsight.kernels.blindsight_attention, "blindsight_attention", kernel, raising=False)
    meta = _meta()
    for dense_heads, backend in (("kernel", "kernel"), ("sdpa", "auto")):
        method = Blindsight({"head_map": _map([row, ["dense"] * 8]), "kernel": "triton", "dense_heads": dense_heads})
        method.setup(_info(layers=2))
        q, k, v = _qkv(meta.length)
        method.prefill(q, k, v, meta, LayerCall(layer_idx=0, scale=0.25))
        all_dense = method.prefill(q, k, v, meta, LayerCall(layer_idx=1, scale=0.25))  # plain causal, all dense: SDPA
        torch.testing.assert_close(
            all_dense,
            reference_attention(q, k, v, meta, torch.zeros(HQ, dtype=torch.int32), scale=0.25),
            rtol=1e-5,
            atol=1e-5,
        )
        assert seen.pop() == ([0, 1] * 4, backend) and not seen


def test_random_head_maps_from_the_test_helper_validate():
    hm = reference_masks.random_head_map("m", 3, HQ, seed=int(torch.randint(1 << 30, ())), sinks=SinkPolicy())
    assert all(set(r) == {c.label for c in Category} for r in hm.categories)
    Blindsight({"head_map": hm}).setup(_info())


def test_plugin_is_registered():
    from bsight.harness.plugins import load_registry

    registry = load_registry()
    assert registry.get("method", "blindsight") is Blindsight and registry.get("method", "dense").name == "dense"


KERNEL_CHECK = """
import torch
from bsight.harness.interfaces import LayerCall, ModelInfo
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.reference import reference_attention
from bsight.plugins.methods.blindsight import Blindsight

info = ModelInfo(
    model_id="m", num_layers=1, num_heads=8, num_kv_heads=2, head_dim=16, sliding_windows=[None], weights="random"
)
row = ["dense", "sink", "intra_image", "intra_image_sink", "sink", "dense", "intra_image", "dense"]
head_map = HeadMap.uniform("m", 1, 8, "dense", SinkPolicy()).model_copy(update={"categories": [row]})
method = Blindsight({"head_map": head_map, "kernel": "triton", "fallback": False})
method.setup(info)
worst = 0.0
for bidirectional, window in ((False, None), (True, None), (False, 7)):
    segs = [("text", 5), ("image", 12), ("text", 3), ("image", 9), ("text", 4)]
    layout = PromptLayout.from_segments(segs, sinks=SinkPolicy(fraction=0.25), bidirectional=bidirectional)
    meta = LayoutMeta.build(layout)
    q = torch.randn(8, meta.length, 16, dtype=torch.bfloat16)
    k, v = torch.randn(2, meta.length, 16, dtype=torch.bfloat16), torch.randn(2, meta.length, 16, dtype=torch.bfloat16)
    out = method.prefill(q, k, v, meta, LayerCall(layer_idx=0, scale=0.25, window=window))
    cats = method.head_categories(0)
    ref = reference_attention(q.float(), k.float(), v.float(), meta, cats, scale=0.25, window=window)
    worst = max(worst, (out.float() - ref).abs().max().item())
print(worst)
"""


def test_the_real_kernel_through_the_method_under_the_triton_interpreter():
    """bsight.kernels.blindsight_attention called by the method (no fallback) agrees with the reference."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 0.03  # bf16 inputs, float32 reference
