"""A plugin cannot take the others down or silently replace a built-in: one that raises anything at import
(``SystemExit`` and ``KeyboardInterrupt`` included) or returns a class without a name is reported and skipped;
a third-party plugin named like a built-in is refused in a config until the config chooses one by package.
Before the fix each of these ended every command, or let the third-party ``dense`` replace the built-in."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from conftest import ext_config, write_dist_info

from bsight.harness.config import ConfigError, parse_config
from bsight.harness.plugins import load_registry

THIRD_PARTY_DENSE = """
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod


class ImpostorDense(AttentionMethod):
    name = "dense"
    description = "not the built-in"

    def prefill(self, q, k, v, meta, call):
        raise NotImplementedError


@hookimpl
def bsight_attention_methods():
    return [ImpostorDense]
"""

NAMELESS = """
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod


class Nameless(AttentionMethod):
    description = "forgot its name"

    def prefill(self, q, k, v, meta, call):
        raise NotImplementedError


@hookimpl
def bsight_attention_methods():
    return [Nameless]
"""


def install(site: Path, monkeypatch, dist: str, module: str, source: str) -> None:
    """An installed distribution (by metadata on sys.path) whose one entry point is ``module``."""
    (site / f"{module}.py").write_text(source)
    write_dist_info(site, dist, "1.0", {module: module})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.invalidate_caches()


@pytest.mark.parametrize(
    "source, error",
    [
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        ("raise SystemExit('bye')\n", "SystemExit: bye"),
    ],
)
def test_plugin_raising_anything_at_import_is_reported_and_skipped(tmp_path, monkeypatch, source, error):
    install(tmp_path, monkeypatch, "bsight-hostile", "bsight_hostile", source)
    registry = load_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "bsight_hostile"]
    assert failure.package == "bsight-hostile" and failure.error.startswith(error)
    assert "dense" in registry.names("method")  # the others loaded


def test_hook_raising_system_exit_is_reported_and_skipped(tmp_path, monkeypatch):
    source = (
        "import sys\nfrom bsight.harness.hookspecs import hookimpl\n\n\n"
        "@hookimpl\ndef bsight_tasks():\n    sys.exit(4)\n"
    )
    install(tmp_path, monkeypatch, "bsight-exits", "bsight_exits", source)
    registry = load_registry()
    assert any(f.plugin == "bsight_exits" and f.error.startswith("SystemExit") for f in registry.failures)


def test_plugin_class_without_a_name_is_reported_and_skipped(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "bsight-nameless", "bsight_nameless", NAMELESS)
    registry = load_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "bsight_nameless"]
    assert "Nameless" in failure.error and "no name" in failure.error
    assert "dense" in registry.names("method")


def test_third_party_cannot_take_a_builtin_name_without_opt_in(ext_registry, tmp_path, monkeypatch):
    (tmp_path / "site").mkdir()
    install(tmp_path / "site", monkeypatch, "bsight-impostor", "bsight_impostor", THIRD_PARTY_DENSE)
    registry = load_registry()
    builtin = registry.get("method", "dense")
    assert builtin.__name__ != "ImpostorDense" and builtin.__module__.startswith("bsight.")
    with pytest.raises(ConfigError) as exc:  # the default: an error naming both packages
        parse_config(ext_config(tmp_path / "runs"), registry, source="cfg.yaml")
    line = next(line for line in str(exc.value).splitlines() if "methods.dense.plugin" in line)
    assert "bsight" in line and "bsight-impostor" in line
    chosen = ext_config(tmp_path / "runs")  # the explicit opt-in: the package named in the config
    chosen["methods"]["dense"]["plugin"] = "bsight-impostor:dense"
    config = parse_config(chosen, registry)
    assert registry.get("method", config.methods["dense"].plugin).__name__ == "ImpostorDense"
    keep = ext_config(tmp_path / "runs")
    keep["methods"]["dense"]["plugin"] = "bsight:dense"
    assert registry.get("method", parse_config(keep, registry).methods["dense"].plugin) is builtin
