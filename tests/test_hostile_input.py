"""Hostile input is bounded: a YAML alias bomb is refused at once (it took 1 GB and 10 s, one level more did not
finish), and report.md escapes the HTML that data carries (it wrote ``<script>`` and ``<img onerror>`` raw)."""

from __future__ import annotations

import json
import time

import pytest
from conftest import synthetic_accuracy_run

from bsight.harness.config import ConfigError, read_yaml
from bsight.harness.report import render_report


def alias_bomb(levels: int) -> str:
    """The billion-laughs document: each level is a list of nine aliases of the level below."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "models:\n  m:\n    plugin: tiny-llama\n    options:\n      image_processor:\n" + "".join(
        f"        {line}\n" for line in lines
    )


@pytest.mark.parametrize("levels", [7, 10])
def test_alias_bomb_is_refused_quickly(tmp_path, levels):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(alias_bomb(levels))
    assert len(cfg.read_bytes()) < 1000
    start = time.monotonic()
    with pytest.raises(ConfigError, match="YAML refused: .*expand the document past"):
        read_yaml(cfg)
    assert time.monotonic() - start < 2


def test_too_many_aliases_are_refused_while_ordinary_anchors_load(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("shared: &opts {window: 8, sinks: 4}\nmethods:\n  a: {plugin: x, options: *opts}\n")
    assert read_yaml(ok)["methods"]["a"]["options"] == {"window": 8, "sinks": 4}
    cfg = tmp_path / "many.yaml"
    cfg.write_text("base: &b 1\nitems: [" + ", ".join(["*b"] * 1000) + "]\n")
    with pytest.raises(ConfigError, match="YAML refused: more than .* aliases"):
        read_yaml(cfg)


def test_recursive_alias_is_refused(tmp_path):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="YAML refused: a recursive alias"):
        read_yaml(cfg)


HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def test_report_md_escapes_html_from_data(tmp_path):
    run = synthetic_accuracy_run(
        tmp_path / "r",
        {"dense": [True, False, True], "fast": [True, True, False]},
        subtasks=[HOSTILE, "plain", HOSTILE],
    )
    manifest = json.loads((run.root / "units.json").read_text())
    manifest["units"][1]["status"] = "failed"
    manifest["units"][1]["error"] = f"ValueError: bad sample {HOSTILE}"
    (run.root / "units.json").write_text(json.dumps(manifest))
    html, md = render_report(run)
    text = md.read_text()
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown, as text
    assert "<script" not in html.read_text()  # (the HTML report escaped it already)
