"""Proof on planted structure: characterization recovers known head categories, discovery finds planted sinks."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
import torch

from bsight.harness.characterize import characterize_layers
from bsight.harness.figures import confusion_figure
from bsight.harness.sinks import SinkOffsetProbe, sink_offset_votes, top_offsets
from bsight.kernels.dispatch import LayerCall
from bsight.kernels.sparsity.aggregate import DEFAULT_PARAMS, build_head_map
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.characterization import CharacterizationResult
from bsight.kernels.sparsity.headmap import DatasetInfo
from bsight.kernels.sparsity.layout import SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.sparsity.planted import (
    confusion_matrix,
    format_confusion,
    planted_labels,
    planted_qkv,
    realistic_layout,
)

LAYERS, HEADS, KV_HEADS, HEAD_DIM = 4, 16, 4, 64


pytestmark = pytest.mark.usefixtures("single_thread_module")  # many small tensor ops: a second thread only contends


@pytest.fixture(scope="module")
def recovered():
    """Characterize two planted prompts (20 x 256-token images; 9 images of varying size) and aggregate."""
    seed = secrets.randbits(31)
    print(f"\nplanted categories, seed {seed}")
    g = torch.Generator().manual_seed(seed)
    labels = planted_labels(LAYERS, HEADS, g)
    sinks = SinkPolicy(fraction=0.01)
    prompts = [realistic_layout(20, 256, sinks=sinks), realistic_layout(9, 180, label_tokens=5, sinks=sinks)]
    records = []
    for i, lay in enumerate(prompts):
        layers = (
            (*planted_qkv(lay, labels[layer], KV_HEADS, HEAD_DIM, g), LayerCall(layer_idx=layer, scale=HEAD_DIM**-0.5))
            for layer in range(LAYERS)
        )
        records.append(characterize_layers(f"planted{i}", lay, layers))
    result = CharacterizationResult(
        model_id="planted",
        weights="synthetic",
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        sliding_windows=[None] * LAYERS,
        dataset=DatasetInfo(name="planted", size=len(prompts)),
        sink_policy=sinks,
        prompts=records,
    )
    return labels.numpy(), build_head_map(result, DEFAULT_PARAMS).category_array(), result


def test_characterization_recovers_planted_categories(recovered):
    planted, found, _ = recovered
    matrix = confusion_matrix(planted, found)
    print(
        f"\nplanted vs recovered, {LAYERS} layers x {HEADS} heads, "
        f"tau={DEFAULT_PARAMS.tau}:\n{format_confusion(matrix)}"
    )
    assert matrix.sum() == LAYERS * HEADS
    assert all(matrix[c].sum() > 0 for c in range(len(Category)))  # every category was planted
    assert np.trace(matrix) / matrix.sum() >= 0.98
    fig = confusion_figure(matrix)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [c.label for c in Category]


def test_planted_categories_pass_tau_and_the_others_do_not(recovered):
    """The margin behind the recovery: each planted sparse head's own mask is well below tau on every prompt,
    and diffuse heads are far above it for every sparse mask."""
    planted, _, result = recovered
    nmse = result.nmse_array()  # [prompts, layers, heads, 3]
    diffuse = planted == Category.DENSE
    assert (nmse[:, diffuse] > 10 * DEFAULT_PARAMS.tau).all()
    for c in (Category.SINK, Category.INTRA_IMAGE, Category.INTRA_IMAGE_SINK):
        assert (nmse[:, planted == c, c.value - 1] < DEFAULT_PARAMS.tau / 5).all()


def test_sink_offset_discovery_finds_planted_offsets():
    """Gemma-like prompt: equal-size bidirectional images whose sinks sit at fixed offsets inside the image."""
    seed = secrets.randbits(31)
    print(f"\nplanted sink offsets, seed {seed}")
    g = torch.Generator().manual_seed(seed)
    offsets = tuple(sorted(torch.randperm(60, generator=g)[:3].add(1).tolist()))
    lay = realistic_layout(
        8,
        66,
        prefix_tokens=10,
        label_tokens=4,
        question_tokens=8,
        sinks=SinkPolicy(kind="offsets", offsets=offsets),
        bidirectional=True,
    )
    probe = SinkOffsetProbe({"queries_per_image": 8, "top_per_query": 3})
    meta = LayoutMeta.build(lay)
    for layer in range(2):
        labels = torch.tensor(
            [Category.SINK.value] * 3 + [Category.INTRA_IMAGE_SINK.value] * 2 + [Category.DENSE.value]
        )
        q, k, v = planted_qkv(lay, labels, 2, 32, g)
        out = probe.prefill(q, k, v, meta, LayerCall(layer_idx=layer, scale=32**-0.5))
        assert out.shape == q.shape
    policy = top_offsets(probe.votes, top_k=3)
    assert policy.kind == "offsets" and policy.offsets == offsets
    one = realistic_layout(1, 66)  # a single image has no earlier image to vote for
    assert (
        int(
            sink_offset_votes(torch.randn(4, one.length, 8), torch.randn(2, one.length, 8), LayoutMeta.build(one)).sum()
        )
        == 0
    )
    with pytest.raises(ValueError, match="no sink votes"):
        top_offsets(torch.zeros(5, dtype=torch.int64), 2)
