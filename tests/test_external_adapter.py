"""An adapter shipped in a separate package (tests/ext_adapter: Qwen3-VL) is found through the ``bsight``
entry-point group once that package is installed, and runs end to end like a built-in one."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "checkpoints"))
import prompts  # noqa: E402
import reference_masks  # noqa: E402
import tiny_vlms  # noqa: E402

from bsight.harness.plugins import load_registry  # noqa: E402
from bsight.kernels.sparsity.layout import SinkPolicy  # noqa: E402
from bsight.plugins.methods.blindsight import Blindsight  # noqa: E402
from bsight.plugins.methods.dense import Dense  # noqa: E402

PACKAGE = Path(__file__).parent / "ext_adapter"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package as an installer leaves it: its code importable and an installed-distribution record with
    the name, version and entry points its pyproject.toml declares (what importlib.metadata reads)."""
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("ext_adapter_site")
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["bsight"].items())
    (info / "entry_points.txt").write_text(f"[bsight]\n{eps}")
    return [str(site), str(PACKAGE)]


@pytest.fixture
def registry(installed, monkeypatch):
    for path in reversed(installed):
        monkeypatch.syspath_prepend(path)
    importlib.invalidate_caches()
    return load_registry()


def test_the_installed_package_registers_its_adapter(registry):
    info = next(i for i in registry.all() if i.family == "model" and i.name == "qwen3_vl")
    assert info.package == "bsight-ext-qwen3vl" and info.version == "0.1.0" and info.plugin == "qwen3_vl"
    assert {"qwen2_vl", "qwen2_5_vl", "gemma3"} <= set(registry.names("model"))  # built-ins still there
    assert not [f for f in registry.failures if f.plugin == "qwen3_vl"]


def test_the_external_adapter_runs_dense_and_blindsight(registry, tmp_path):
    cls = registry.get("model", "qwen3_vl")
    assert cls.__module__ == "bsight_ext_qwen3vl"
    adapter = cls(
        {
            "checkpoint": str(tiny_vlms.qwen_checkpoint(tmp_path / "q3", "qwen3_vl", seed=7)),
            "dtype": "float32",
            "device": "cpu",
        }
    )
    adapter.load()
    assert adapter.info.weights == "random" and adapter.model.config.model_type == "qwen3_vl"
    rng = np.random.default_rng()
    prep = adapter.prepare(prompts.interleaved_sample(rng, [(64, 96), (96, 64), (64, 64)]))
    assert prep.layouts[0].num_images == 3

    dense = adapter.logits(prep, Dense())
    with torch.no_grad(), reference_masks.text_attention(adapter.model, "sdpa"):
        torch.testing.assert_close(dense, adapter.model(**prep.inputs).logits.float(), rtol=1e-4, atol=1e-4)

    info = adapter.info
    sinks = SinkPolicy(fraction=0.3)
    head_map = reference_masks.random_head_map(
        info.model_id, info.num_layers, info.num_heads, int(rng.integers(1 << 30)), sinks
    )
    ours = adapter.logits(prep, Blindsight({"head_map": head_map}))
    masks = reference_masks.layer_masks(prep.layouts, head_map, info.sliding_windows, sinks)
    with torch.no_grad(), reference_masks.explicit_masks(adapter.model, masks):
        torch.testing.assert_close(ours, adapter.model(**prep.inputs).logits.float(), rtol=1e-4, atol=1e-4)
    assert (ours - dense).abs().max() > 1e-3

    assert adapter.generate(prep, Blindsight({"uniform": "dense"}), 3).prompt_tokens == prep.layouts[0].num_valid
