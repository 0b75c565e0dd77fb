"""Head map schema and the dataset-level aggregation rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bsight.harness.figures import category_heatmap, layer_shares
from bsight.kernels.sparsity.aggregate import aggregate_categories, build_head_map, category_histograms
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.characterization import CharacterizationResult, PromptRecord
from bsight.kernels.sparsity.headmap import CharacterizationParams, DatasetInfo, HeadMap
from bsight.kernels.sparsity.layout import SinkPolicy

D, S, I, IS = (c.value for c in Category)


def rule(shares: list[float], delta: float, gamma: float) -> int:
    """DESIGN.md: dense share > delta -> dense; else the predominant sparse category (ties to the superset);
    if its share < gamma -> intra_image_sink."""
    if shares[D] > delta:
        return D
    best = max((shares[c], c) for c in (S, I, IS))
    return IS if best[0] < gamma else best[1]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=6),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_aggregation_rule(choices_per_head, delta, gamma):
    P = max(len(c) for c in choices_per_head)
    choices = np.array([[c[p % len(c)] for c in choices_per_head] for p in range(P)])[:, None, :]  # [P, 1, H]
    hist = category_histograms(choices)
    assert hist.shape == (1, len(choices_per_head), 4) and np.allclose(hist.sum(-1), 1)
    got = aggregate_categories(hist, delta, gamma)[0]
    assert got.tolist() == [rule(list(h), delta, gamma) for h in hist[0]]


def test_aggregation_examples():
    hist = np.array([[0.3, 0.7, 0, 0], [0.1, 0.5, 0.4, 0], [0.1, 0.3, 0.3, 0.3], [0.0, 0.45, 0.45, 0.1], [0, 0, 1, 0]])
    assert aggregate_categories(hist, delta=0.2, gamma=0.5).tolist() == [D, S, IS, IS, I]
    assert aggregate_categories(hist, delta=0.2, gamma=0.4).tolist() == [
        D,
        S,
        IS,
        I,
        I,
    ]  # tie sink/intra: superset side
    with pytest.raises(ValueError, match="prompts >= 1"):
        category_histograms(np.zeros((0, 2, 2)))


def result_with(choice_nmse: list[list[float]]) -> CharacterizationResult:
    """One layer, heads whose NMSE per sparse category is given; pairs make sink cheapest, then intra_image."""
    rec = PromptRecord(
        id="p", num_tokens=10, num_images=2, image_queries=6, nmse=[choice_nmse], pairs=[[55, 20, 30, 40]]
    )
    return CharacterizationResult(
        model_id="m",
        weights="random",
        num_layers=1,
        num_heads=len(choice_nmse),
        num_kv_heads=1,
        head_dim=8,
        sliding_windows=[None],
        dataset=DatasetInfo(name="d", size=1),
        sink_policy=SinkPolicy(fraction=0.1),
        prompts=[rec, rec.model_copy(update={"id": "q"})],
    )


def test_build_head_map_round_trip(tmp_path):
    res = result_with([[1.0, 1.0, 1.0], [0.01, 0.0, 0.0], [1.0, 0.02, 0.0], [1.0, 1.0, 0.03]])
    hm = build_head_map(res, CharacterizationParams(tau=0.05, delta=0.2, gamma=0.5))
    assert hm.categories == [["dense", "sink", "intra_image", "intra_image_sink"]]
    assert hm.histograms[0][1] == {"dense": 0.0, "sink": 1.0, "intra_image": 0.0, "intra_image_sink": 0.0}
    assert hm.weights == "random" and hm.dataset.size == 2 and hm.tool_version
    path = hm.save(tmp_path / "maps" / "m.json")
    assert HeadMap.load(path) == hm
    assert json.loads(path.read_text())["schema_version"] == 1
    assert hm.layer_categories(0).tolist() == [D, S, I, IS] and hm.category_array().tolist() == [[D, S, I, IS]]
    assert hm.shares() == {c.label: 0.25 for c in Category} and hm.layer_shares().tolist() == [[0.25] * 4]
    for fig in (category_heatmap(hm), layer_shares(hm)):
        assert fig.axes and fig.get_size_inches()[0] > 0


def test_invalid_head_maps_name_the_problem(tmp_path):
    good = HeadMap.uniform("m", 2, 3, "sink", SinkPolicy(fraction=0.1))
    assert good.layer_categories(1).tolist() == [S] * 3 and good.weights == "unknown"
    data = json.loads(good.model_dump_json())
    for change, message in [
        ({"categories": [["sink"] * 3]}, "2 layers x 3 heads"),
        ({"categories": [["sink"] * 3, ["sink", "diffuse", "sink"]]}, "unknown categories \\['diffuse'\\]"),
        ({"histograms": [[{"dense": 1.0}] * 3]}, "histograms must be 2 layers x 3 heads"),
        ({"histograms": [[{"blob": 1.0}] * 3] * 2}, "unknown categories \\['blob'\\] in histograms"),
        ({"weights": "pretrained"}, "weights"),
        ({"surprise": 1}, "surprise"),
    ]:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(ValueError, match=message) as err:
            HeadMap.load(path)
        assert "bad.json" in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        HeadMap.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="2 layers x 3 heads, the model has 2 x 4"):
        good.check_model(2, 4)
    with pytest.raises(ValueError, match="no characterized prompts"):
        build_head_map(result_with([[0.0, 0.0, 0.0]]).model_copy(update={"prompts": []}))
    assert torch.equal(
        HeadMap.uniform("m", 1, 2, Category.DENSE, SinkPolicy()).layer_categories(0), torch.zeros(2, dtype=torch.int32)
    )
