"""Issue 16: shape-robust fast paths. Bucketed FlexAttention lengths are exact; the dense SDPA policy per phase
and length; padded causal SDPA equals unpadded (CPU). GPU timings of these choices: reports/published/
sdpa_policy_h100.json and the in-model run (``bsight run gpu.yaml``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from bsight.kernels import dense_policy, dispatch
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.masks import materialize
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.sparsity.planted import realistic_layout
from bsight.plugins.methods.flex import FlexRunner, bucket_length, categories_mask, pad_meta
from bsight.plugins.methods.streaming import streaming_mask


def _meta(bidirectional: bool = False) -> LayoutMeta:
    layout = realistic_layout(
        3, 70, prefix_tokens=13, label_tokens=5, question_tokens=31, sinks=SinkPolicy(fraction=0.05),
        bidirectional=bidirectional,
    )  # fmt: skip
    return LayoutMeta.build(layout)


def test_bucket_lengths():
    assert [bucket_length(n) for n in (36_864, 73_728, 147_456)] == [36_864, 73_728, 147_456]
    for n in (1, 900, 5_000, 16_001, 35_000, 140_000, 290_000):
        b = bucket_length(n)
        assert n <= b <= max(n * 1.125, n + 1024)
    # at most 8 buckets per doubling (above the smallest granule)
    assert len({bucket_length(n) for n in range(65_537, 131_073, 97)}) <= 8


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_masks_match_on_real_rows(bidirectional):
    meta = _meta(bidirectional)
    S = meta.length
    padded = pad_meta(meta, S + 77)
    cats = torch.tensor([0, 1, 2, 3])
    for mod, pmod in (
        (categories_mask(meta, cats), categories_mask(padded, cats)),
        (streaming_mask(meta, 8, 40), streaming_mask(padded, 8, 40)),
    ):
        full = materialize(pmod, S + 77, num_heads=4)
        assert torch.equal(full[:, :S, :S], materialize(mod, S, num_heads=4))
        assert not full[:, :S, S:].any()  # real queries never see padded keys


def test_bucketed_flex_attention_is_exact():
    torch.manual_seed(0)
    meta = _meta()
    S, D = meta.length, 16
    q, k, v = torch.randn(4, S, D), torch.randn(2, S, D), torch.randn(2, S, D)
    cats = torch.tensor([0, 1, 2, 3])
    plain = FlexRunner(compile="never")
    ref = plain.attend(q, k, v, plain.block_mask(meta, "a", lambda m: categories_mask(m, cats), 4), D**-0.5)

    class Bucketed(FlexRunner):  # the compiled path's bucketing, run eagerly on CPU
        def bucketed(self, meta):
            return pad_meta(meta, bucket_length(meta.length, 16) + 16)

    runner = Bucketed(compile="never", block_size=16)
    bm = runner.block_mask(meta, "a", lambda m: categories_mask(m, cats), 4)
    assert int(bm.seq_lengths[0]) > S
    out = runner.attend(q, k, v, bm, D**-0.5)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_dense_policy_per_phase_and_length():
    p = dense_policy.DensePolicy(flash_below=16_384, cudnn_bucket=1024)
    assert p.order(1, 5_000)[0] == SDPBackend.FLASH_ATTENTION  # decode: no per-KV-length plan
    assert p.order(1, 300_000)[0] == SDPBackend.FLASH_ATTENTION
    assert p.order(4_000, 4_000)[0] == SDPBackend.FLASH_ATTENTION  # short prefill
    assert p.order(36_864, 36_864)[0] == SDPBackend.CUDNN_ATTENTION  # long prefill
    assert p.padded_length(4_000) == 4_000 and p.padded_length(36_000) == 36_864
    assert p.padded_length(36_864) == 36_864


def test_right_padded_causal_sdpa_is_exact():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 50, 8), torch.randn(1, 4, 50, 8), torch.randn(1, 4, 50, 8)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    pad = (0, 0, 0, 14)
    out = F.scaled_dot_product_attention(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), is_causal=True)[:, :, :50]
    torch.testing.assert_close(out, ref)
    # the policy's own entry point on CPU: plain SDPA, same result
    torch.testing.assert_close(dispatch.policy_causal_sdpa(q, k, v), ref)


def test_large_timings_print_in_full():
    from bsight.harness.report import fmt_num

    assert fmt_num(20_475.5, 1) == "20,476" and fmt_num(50_599.5, 1) == "50,600" and fmt_num(2475.55, 1) == "2475.6"


@pytest.mark.parametrize(("bidirectional", "window", "block"), [(False, None, 16), (True, None, 16), (True, 40, 32)])
def test_category_block_masks_equal_a_per_head_build(bidirectional, window, block):
    """The block masks built from the segment table, rows selected per head, have exactly the empty, partial and
    full tiles of ``create_block_mask`` evaluating the per-head mask over every pair."""
    from torch.nn.attention.flex_attention import create_block_mask

    from bsight.kernels.sparsity.masks import head_mask
    from bsight.plugins.methods.flex import CategoryBlockMasks

    meta = _meta(bidirectional)
    S = meta.length
    assert S % block  # an edge tile past the sequence's end is covered
    cats = torch.tensor([3, 0, 2, 1, 1, 3])
    got = CategoryBlockMasks(meta, len(cats), window, block).for_heads(cats)
    want = create_block_mask(
        head_mask(meta, cats, window), None, len(cats), S, S, device="cpu", BLOCK_SIZE=block, _compile=False
    )
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        n_got, n_want = getattr(got, num), getattr(want, num)
        assert torch.equal(n_got, n_want)
        for h in range(len(cats)):
            for qb in range(n_want.shape[-1]):
                n = int(n_want[0, h, qb])
                assert getattr(got, idx)[0, h, qb, :n].tolist() == getattr(want, idx)[0, h, qb, :n].tolist()
    assert got.seq_lengths == want.seq_lengths


def test_flex_layers_share_one_build_and_match_the_reference():
    """Two layers with different per-head categories on one prompt: one block-mask build, exact outputs."""
    from bsight.kernels.reference import reference_attention
    from bsight.plugins.methods.flex import CategoryBlockMasks

    torch.manual_seed(0)
    meta = _meta()
    S, D = meta.length, 16
    runner = FlexRunner(compile="never", block_size=16)
    for cats in (torch.tensor([0, 1, 2, 3]), torch.tensor([3, 3, 1, 0])):
        q, k, v = torch.randn(4, S, D), torch.randn(2, S, D), torch.randn(2, S, D)
        bm = runner.category_masks(meta, None, 4).for_heads(cats)
        out = runner.attend(q, k, v, bm, D**-0.5)
        torch.testing.assert_close(out, reference_attention(q, k, v, meta, cats, scale=D**-0.5), atol=1e-5, rtol=1e-5)
    built = [m for m in runner._masks.values() if isinstance(m, CategoryBlockMasks)]
    assert len(built) == 1
