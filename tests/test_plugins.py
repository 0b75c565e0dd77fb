"""An external package adds a model adapter, a task and a method through package metadata alone; a plugin
that fails to load is named and skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import bsight, env_with, ext_config, write_dist_info, write_yaml

from bsight.harness.interfaces import ModelAdapter

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    """A second installed distribution whose plugin module raises on import."""
    site = tmp_path_factory.mktemp("broken_site")
    (site / "bsight_broken_demo.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    write_dist_info(site, "bsight-broken-demo", "9.9", {"broken_demo": "bsight_broken_demo"})
    return site


def test_registry_records_the_external_package(ext_registry):
    infos = {(i.family, i.name): i for i in ext_registry.all()}
    for key in (("model", "tiny-llama"), ("task", "brightest-image"), ("method", "sink-window")):
        assert (
            infos[key].package == "bsight-tinyext" and infos[key].version == "0.1.0" and infos[key].plugin == "tinyext"
        )
    assert infos[("method", "dense")].package == "bsight"  # built-ins take the same road


def test_cli_lists_plugins_and_failures(ext_paths, broken_site):
    res = bsight(["plugins"], env=env_with(ext_paths + [str(broken_site)]))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for family, name in (("model", "tiny-llama"), ("task", "brightest-image"), ("method", "sink-window")):
        assert any(family in ln and name in ln and "bsight-tinyext" in ln and "0.1.0" in ln for ln in lines), res.stdout
    assert any("method" in ln and " dense " in ln and "bsight " in ln for ln in lines)
    assert any("broken_demo" in ln and "bsight-broken-demo" in ln and "broken on purpose" in ln for ln in lines), (
        res.stdout
    )
    assert "Traceback" not in res.stdout + res.stderr


def test_run_goes_on_past_a_broken_plugin(ext_paths, broken_site, tmp_path):
    cfg = write_yaml(tmp_path / "ext.yaml", ext_config(tmp_path / "runs", n=2, max_new_tokens=2))
    res = bsight(["run", str(cfg)], env=env_with(ext_paths + [str(broken_site)]))
    assert res.returncode == 0, res.stderr
    assert "plugin 'broken_demo' from package bsight-broken-demo was skipped" in res.stderr
    report = Path(res.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report.is_file() and report.parent == tmp_path / "runs" / "t"
    assert "tiny on bright" in report.read_text()


def _prompt(adapter: ModelAdapter, ext_registry):
    task = ext_registry.get("task", "brightest-image")(
        {"n": 2, "max_images": 3, "seed": int(torch.randint(0, 1000, ()))}
    )
    sample = list(task.samples())[-1]  # three images: the longest prompt
    return adapter.prepare(sample)


def test_external_adapter_runs_attention_through_the_method(ext_registry):
    """The method really computes the prefill: a window covering the prompt reproduces dense logits, a
    short one changes them; and the dense method matches the model's own SDPA attention."""
    adapter = ext_registry.get("model", "tiny-llama")({"seed": int(torch.randint(0, 1000, ()))})
    adapter.load()
    prepared = _prompt(adapter, ext_registry)
    S = prepared.num_tokens
    assert prepared.layouts[0].num_images == 3
    dense = ext_registry.get("method", "dense")()
    wide = ext_registry.get("method", "sink-window")({"sinks": 0, "window": S})
    short = ext_registry.get("method", "sink-window")({"sinks": 2, "window": 6})
    for m in (dense, wide, short):
        m.setup(adapter.info)
    ref = adapter.logits(prepared, dense)
    torch.testing.assert_close(adapter.logits(prepared, wide), ref, atol=1e-5, rtol=1e-5)
    assert (adapter.logits(prepared, short) - ref).abs().max() > 1e-3
    assert short.overhead.take()["mask"] > 0  # the method reports its own overhead
    with torch.no_grad():
        adapter.model.set_attn_implementation("sdpa")
        try:
            plain = adapter.model(**prepared.inputs).logits
        finally:
            adapter.model.set_attn_implementation("bsight")
    torch.testing.assert_close(ref, plain, atol=1e-5, rtol=1e-5)


def test_external_adapter_generates_greedily(ext_registry):
    adapter = ext_registry.get("model", "tiny-llama")()
    adapter.load()
    dense = ext_registry.get("method", "dense")()
    dense.setup(adapter.info)
    prepared = _prompt(adapter, ext_registry)
    a = adapter.generate(prepared, dense, 5)
    b = adapter.generate(prepared, dense, 5)
    assert a.text == b.text and a.prompt_tokens == prepared.num_tokens
    assert 0 < a.prefill_s <= a.total_s
