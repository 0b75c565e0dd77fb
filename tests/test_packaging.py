"""The repository root must not shadow installed distributions (issue 13), and wrong dependency versions
are named.

``python -m ...`` and ``python -m pytest`` put the repository root first on ``sys.path``. The design card's
top-level folders (``harness/ plugins/ kernels/ reports/``) install as ``bsight.*``; at the root they must
never win over an installed package of the same name (transformers imports Hugging Face's ``kernels``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from bsight.harness.requirements import unmet_requirements

ROOT = Path(__file__).resolve().parent.parent


def _root_code_folders() -> list[str]:
    """The root folders pyproject installs as ``bsight.*``, plus any other root folder holding Python code."""
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    skip = {"tests", "docs"}
    coded = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in skip and any(p.rglob("*.py"))
    }
    return sorted({folder.split("/")[0] for folder in mapped} | coded)


def _python(code: str, cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = str(env_path)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_design_card_folders_are_the_code_folders():
    assert {"harness", "plugins", "kernels", "reports"} <= set(_root_code_folders())


@pytest.mark.parametrize("folder", _root_code_folders())
def test_root_folder_is_not_a_regular_package(folder):
    """A folder with ``__init__.py`` at the root would be imported before any installed package of that name."""
    assert not (ROOT / folder / "__init__.py").exists(), (
        f"{folder}/__init__.py makes the root folder importable as {folder!r}"
    )


def test_installed_distributions_win_over_root_folders(tmp_path):
    """Every root folder's name, provided by a (fake) installed distribution, resolves to that distribution
    when Python starts in the repository root, as ``python -m`` does."""
    folders = _root_code_folders()
    for name in folders:
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text("FROM_DISTRIBUTION = True\n")
    code = "import importlib, sys\n" + "".join(
        f"m = importlib.import_module({name!r}); print({name!r}, getattr(m, 'FROM_DISTRIBUTION', False))\n"
        for name in folders
    )
    proc = _python(code, cwd=ROOT, env_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [w for name in folders for w in (name, "True")], proc.stdout


def test_real_installed_names_are_not_shadowed():
    """The names installed distributions provide today (e.g. Hugging Face's ``kernels``) import from them."""
    provided = packages_distributions()
    clashing = [name for name in _root_code_folders() if name in provided]
    for name in clashing:
        code = f"import {name}; print(*getattr({name}, '__path__', [getattr({name}, '__file__', '')]), sep='\\n')"
        proc = _python(code, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        found = [Path(p).resolve() for p in proc.stdout.split()]
        # a virtualenv inside the checkout (CI's .venv) is fine; the root folder itself is not
        assert (ROOT / name).resolve() not in found, f"{name!r} resolved to the repository's folder: {found}"


def test_transformers_and_the_module_cli_load_from_the_root():
    proc = _python("import transformers; from transformers import AttentionInterface; print('ok')", cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    cli = subprocess.run(
        [sys.executable, "-m", "bsight.harness.cli", "plugins"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "failed to load" not in cli.stdout and "was skipped" not in cli.stderr, cli.stderr[-2000:]
    assert "qwen2_vl" in cli.stdout and "blindsight" in cli.stdout


def _fake_distribution(site: Path, name: str, requires: list[str], entry_points: str = "") -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"] + [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    if entry_points:
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_unmet_requirements_name_the_package_and_the_range(tmp_path, monkeypatch):
    _fake_distribution(
        tmp_path, "bsight_fake_needs", ["pluggy>=999", "no-such-package-bsight>=1", "pytest>=999; extra == 'test'"]
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    lines = unmet_requirements("bsight_fake_needs")
    import pluggy

    assert lines == [
        f"pluggy {pluggy.__version__} is installed; bsight_fake_needs needs pluggy>=999",
        "no-such-package-bsight is not installed; bsight_fake_needs needs no-such-package-bsight>=1",
    ]
    assert unmet_requirements("bsight") == []  # this environment satisfies bsight's own requirements


def test_plugins_command_names_a_wrong_dependency_version(tmp_path):
    _fake_distribution(tmp_path, "bsight_fake_plugin", ["pluggy>=999"], "[bsight]\nfake = bsight_fake_plugin_mod\n")
    (tmp_path / "bsight_fake_plugin_mod.py").write_text("")
    import os

    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "bsight.harness.cli", "plugins"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bsight_fake_plugin needs pluggy>=999" in proc.stderr
