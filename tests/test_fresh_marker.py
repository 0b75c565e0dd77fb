"""``--fresh`` deletes only in a bsight run folder: one bsight created (marker file) or, made by an older
version, one holding its ``units.json`` and ``provenance.json``. Before the fix ``--fresh`` emptied any folder's
``results/``, ``plots/`` and report files, and no marker was written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ext_config, write_yaml

from bsight.harness.cli import main
from bsight.harness.store import RunStore, StoreError

pytestmark = pytest.mark.usefixtures("single_thread")


def someones_folder(root: Path) -> dict[Path, str]:
    files = {
        root / "results" / "thesis.csv": "precious",
        root / "plots" / "figure.svg": "<svg/>",
        root / "report.md": "# my notes",
        root / "config.yaml": "mine: true",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def test_fresh_refuses_a_folder_that_is_not_a_run_folder(tmp_path):
    files = someones_folder(tmp_path / "mine")
    with pytest.raises(StoreError, match="not a bsight run folder"):
        RunStore(tmp_path / "mine", fresh=True)
    assert all(path.read_text() == text for path, text in files.items())


def test_cli_fresh_into_a_foreign_folder_is_bad_input(ext_registry, tmp_path, capsys):
    files = someones_folder(tmp_path / "mine")
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="f", n=2, max_new_tokens=2))
    assert main(["run", str(cfg), "--out", str(tmp_path / "mine"), "--fresh"]) == 2
    assert "not a bsight run folder" in capsys.readouterr().err
    assert all(path.read_text() == text for path, text in files.items())


def test_a_new_run_folder_gets_the_marker_and_fresh_works_there(ext_registry, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="f", n=2, max_new_tokens=2))
    run_dir = tmp_path / "runs" / "f"
    assert main(["run", str(cfg)]) == 0
    assert (run_dir / RunStore.MARKER).is_file()
    assert main(["run", str(cfg), "--fresh"]) == 0
    assert (run_dir / RunStore.MARKER).is_file() and (run_dir / "report.md").is_file()


def test_a_run_folder_of_an_older_version_is_recognised(tmp_path):
    """No marker (made before it existed), but the manifest and provenance an older bsight wrote: --fresh is
    allowed, and the folder gets its marker."""
    old = tmp_path / "old"
    (old / "results" / "accuracy").mkdir(parents=True)
    (old / "units.json").write_text('{"run_name": "x", "config_hash": "h", "units": []}')
    (old / "provenance.json").write_text("{}")
    (old / "results" / "accuracy" / "u.abc.jsonl").write_text("")
    store = RunStore(old, fresh=True)
    store.close()
    assert not (old / "results").exists() and not (old / "units.json").exists()
    assert (old / RunStore.MARKER).is_file()


def test_out_naming_a_file_is_one_line_exit_2(ext_registry, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", name="f", n=2, max_new_tokens=2))
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(cfg), "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a folder" in err
