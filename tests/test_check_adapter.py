"""``bsight check-adapter``: the pass/fail table, the exit status, the first failure's evidence, and the errors
for checkpoints no adapter (or another adapter) loads."""

from __future__ import annotations

import json

import pytest

from bsight.harness.adapter_kit import tiny_vlms
from bsight.harness.check_adapter import check_adapter, render, run_checks
from bsight.harness.cli import main
from bsight.kernels.sparsity.layout import PromptLayout, Span
from bsight.plugins.models.qwen3_vl import Qwen3VL

pytestmark = pytest.mark.usefixtures("single_thread")


def test_check_adapter_passes_on_a_built_in_adapter_and_exits_0(capsys):
    assert main(["check-adapter", "qwen3_vl", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("load", "hybrid_layers", "layout", "dense_equals_model", "category_masks", "generation"):
        assert any(line.startswith(name) and " PASS " in line for line in out.splitlines()), (name, out)
    assert "6/6 checks passed" in out and "first failing check" not in out


def test_check_adapter_on_a_given_checkpoint_reports_hybrid_layers(tmp_path, capsys):
    path = tiny_vlms.qwen_checkpoint(tmp_path / "q35", "qwen3_5")
    assert main(["check-adapter", "qwen3_5", "--checkpoint", str(path), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 layers: 2 attention, 2 linear" in out


class MiscountingQwen3VL(Qwen3VL):
    """A layout reader that assumes 4 tokens per image (a fixed count), whatever the processor wrote."""

    def read_layouts(self, inputs):
        ids = inputs["input_ids"][0].tolist()
        spans = [Span(p, p + 6, (p,)) for p, t in enumerate(ids) if t == self.model.config.vision_start_token_id]
        return [PromptLayout(len(ids), tuple(spans))]


def test_a_layout_reader_that_miscounts_fails_naming_the_sample_and_both_counts(tmp_path):
    adapter = MiscountingQwen3VL({"checkpoint": str(tiny_vlms.qwen_checkpoint(tmp_path / "q3", "qwen3_vl"))})
    adapter.options.dtype, adapter.options.device = "float32", "cpu"
    adapter.load()
    results = {r.name: r for r in run_checks(adapter)}
    layout = results["layout"]
    assert not layout.passed
    prep = adapter.prepare(__import__("bsight.harness.check_adapter", fromlist=["x"]).random_samples()[0])
    merge = adapter.model.config.vision_config.spatial_merge_size
    counts = (prep.inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
    assert "sample random-0" in layout.evidence
    assert f"processor's image tokens per image {counts}" in layout.evidence
    assert "layout reader's segments hold [4, 4, 4]" in layout.evidence
    text = render([*results.values()])
    assert "FAIL" in text and "first failing check: hybrid_layers" not in text


def test_a_checkpoint_no_adapter_loads_names_the_adapters_and_the_closest(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl_mo"}))
    assert main(["check-adapter", "qwen3_vl", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no registered adapter loads 'qwen3_vl_mo'" in err and "gemma4 (gemma4)" in err
    assert "closest model type: 'qwen3_vl_moe' (adapter 'qwen3_vl_moe')" in err


def test_a_checkpoint_of_another_family_names_the_adapter_that_loads_it(tmp_path):
    path = tiny_vlms.gemma4_checkpoint(tmp_path / "g4")
    with pytest.raises(ValueError, match="holds a 'gemma4' model, adapter 'qwen3_5' loads qwen3_5: adapter 'gemma4'"):
        check_adapter("qwen3_5", path)


def test_an_unknown_adapter_name_is_a_usage_error(capsys):
    assert main(["check-adapter", "gemma5"]) == 2
    assert "no model adapter 'gemma5'" in capsys.readouterr().err


def test_hybrid_layers_check_catches_an_adapter_that_hides_linear_layers(tmp_path):
    from bsight.plugins.models.qwen3_5 import Qwen35

    class Blind(Qwen35):
        def _model_info(self, config, model_id, revision, weights):
            info = super()._model_info(config, model_id, revision, weights)
            return info.model_copy(update={"layer_kinds": []})  # claims every layer is softmax attention

    adapter = Blind({"checkpoint": str(tiny_vlms.qwen_checkpoint(tmp_path / "q35", "qwen3_5")), "dtype": "float32"})
    adapter.options.device = "cpu"
    adapter.load()
    results = run_checks(adapter, samples=None)
    hybrid = next(r for r in results if r.name == "hybrid_layers")
    assert not hybrid.passed and "the model called attention in [1, 3]" in hybrid.summary
    assert all(r.name for r in results)


def test_loading_another_familys_checkpoint_names_the_adapter_that_loads_it(tmp_path):
    from bsight.plugins.models.qwen3_5 import Qwen35

    path = tiny_vlms.gemma4_checkpoint(tmp_path / "g4")
    with pytest.raises(ValueError, match=r"holds a 'gemma4' model; adapter 'qwen3_5' loads qwen3_5 \(adapter 'gemma4'"):
        Qwen35({"checkpoint": str(path), "device": "cpu"}).load()
