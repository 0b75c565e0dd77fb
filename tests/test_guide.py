"""docs/adding-a-vlm.md cannot rot: its code blocks run, its file blocks are the example package verbatim, and that
package (tests/ext_internvl, InternVL: a family bsight does not ship), installed, registers its adapter through
the ``bsight`` entry-point group and passes every ``bsight check-adapter`` check."""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

from bsight.harness.check_adapter import check_adapter, render
from bsight.harness.plugins import load_registry

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "adding-a-vlm.md"
PACKAGE = REPO / "tests" / "ext_internvl"
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)

pytestmark = pytest.mark.usefixtures("single_thread")


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(GUIDE.read_text()) if kind == lang]


def test_the_guide_quotes_the_example_package_verbatim():
    files = [b for b in blocks("python") if b.startswith("# file: ")]
    assert len(files) == 2
    for body in files:
        header, rest = body.split("\n", 1)
        path = PACKAGE / header.removeprefix("# file: ").strip()
        assert rest == path.read_text(), f"{path} and its block in {GUIDE.name} differ"
    toml = blocks("toml")[0]
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert tomllib.loads(toml)["project"]["entry-points"] == project["entry-points"]


def test_the_guides_code_runs(monkeypatch, tmp_path):
    """Every python block, in order, in one namespace, as a reader would paste them (the file blocks define the
    package's module; the rest import it from the package)."""
    monkeypatch.syspath_prepend(str(PACKAGE))
    monkeypatch.chdir(tmp_path)
    for mod in [m for m in sys.modules if m.startswith("bsight_ext_internvl")]:
        monkeypatch.delitem(sys.modules, mod)
    module = types.ModuleType("bsight_guide")  # dataclasses look their module up in sys.modules
    monkeypatch.setitem(sys.modules, module.__name__, module)
    code = blocks("python")
    assert len(code) >= 3
    for body in code:
        exec(compile(body, str(GUIDE), "exec"), module.__dict__)  # noqa: S102 - the point of the test
    assert all(r.passed for r in module.results)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package as an installer leaves it: its code importable and a dist-info with its entry points."""
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("ext_internvl_site")
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["bsight"].items())
    (info / "entry_points.txt").write_text(f"[bsight]\n{eps}")
    return [str(site), str(PACKAGE)]


def test_the_installed_package_registers_its_adapter_and_passes_check_adapter(installed, monkeypatch, tmp_path):
    for path in reversed(installed):
        monkeypatch.syspath_prepend(path)
    importlib.invalidate_caches()
    registry = load_registry()
    info = next(i for i in registry.all() if i.family == "model" and i.name == "internvl")
    assert info.package == "bsight-ext-internvl" and info.plugin == "internvl"
    assert {"qwen3_vl", "qwen3_5", "gemma4"} <= set(registry.names("model"))
    assert not [f for f in registry.failures if f.plugin == "internvl"]
    results, checkpoint = check_adapter("internvl", registry=registry, workdir=tmp_path)
    assert checkpoint.parent == tmp_path  # built by the adapter's own tiny_checkpoint
    assert [r.name for r in results][0] == "load" and all(r.passed for r in results), render(results)
