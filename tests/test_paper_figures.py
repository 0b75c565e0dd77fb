"""The paper's figures from a head map and from sink votes (issue 18 (c) and (f)): the numbers they draw, and the
characterize job's report section showing both on a tiny Gemma 3 whose sinks are discovered."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import quiet
from matplotlib.colors import to_hex

from bsight.harness.adapter_kit import tiny_vlms
from bsight.harness.config import parse_config
from bsight.harness.jobs.characterize import CharacterizeRow
from bsight.harness.paper_figures import category_choice, choice_shares, sink_votes
from bsight.harness.runner import execute
from bsight.harness.store import RunFolder
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.layout import SinkPolicy

pytestmark = pytest.mark.usefixtures("single_thread")


def head_map_with(histograms: list[list[dict[str, float]]]) -> HeadMap:
    hm = HeadMap.uniform("m", len(histograms), len(histograms[0]), "dense", SinkPolicy())
    return hm.model_copy(update={"histograms": histograms})


def test_choice_shares_average_the_heads_histograms():
    hm = head_map_with(
        [
            [{"dense": 1.0}, {"sink": 0.5, "intra_image": 0.5}],
            [{"intra_image_sink": 0.25, "dense": 0.75}, {"intra_image_sink": 1.0}],
        ]
    )
    np.testing.assert_allclose(choice_shares(hm), [[0.5, 0.25, 0.25, 0.0], [0.375, 0.0, 0.0, 0.625]])
    ax = category_choice(hm).axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if p.get_height() > 0)
    assert heights == [0.25, 0.25, 0.375, 0.5, 0.625]
    assert all(abs(s - 1) < 1e-9 for s in choice_shares(hm).sum(1))


def test_sink_votes_marks_the_chosen_offsets():
    ax = sink_votes([5, 0, 9, 1, 7], [2, 4]).axes[0]
    colors = [to_hex(p.get_facecolor()) for p in ax.patches]
    assert [i for i, c in enumerate(colors) if c == "#d55e00"] == [2, 4]
    assert [p.get_height() for p in ax.patches] == [5, 0, 9, 1, 7]
    assert sorted(t.get_text() for t in ax.texts) == ["2", "4"]


def test_characterize_report_shows_choice_and_sink_votes(registry, tmp_path):
    ckpt = tiny_vlms.gemma_checkpoint(tmp_path / "gemma")
    data = {
        "run": {"name": "r", "output_dir": str(tmp_path)},
        "models": {"gemma": {"plugin": "gemma3", "options": {"checkpoint": str(ckpt)}}},
        "methods": {"dense": {"plugin": "dense"}},
        "tasks": {"offline": {"plugin": "offline_images", "options": {"image_size": 64, "per_subtask": 2}}},
        "jobs": [{"type": "characterize", "limit": 3, "discover_sinks": {"top_k": 2, "prompts": 2}}],
    }
    out = execute(parse_config(data, registry), registry, tmp_path / "r", console=quiet())
    assert not out.failed
    folder = RunFolder.open(out.run_dir)
    rec = folder.manifest().units[0]
    setup = folder.rows(rec.unit, CharacterizeRow)[0].setup
    assert setup.sink_source == "discovered" and sum(setup.votes) > 0
    html = (out.run_dir / "index.html").read_text()
    section = re.search(r'<section id="characterization">(.*?)</section>', html, re.S).group(1)
    assert "per-prompt category choice" in section and "chosen sinks marked" in section
    plots = out.run_dir / "plots"
    votes_svg = (plots / "characterization-characterize-gemma-sink-votes.svg").read_text()
    assert (plots / "characterization-characterize-gemma-choice.svg").is_file()
    for o in setup.sink_policy.offsets:  # each chosen offset is labelled on the histogram
        assert re.search(rf">{o}<", votes_svg)
    md = (out.run_dir / "report.md").read_text()
    assert "plots/characterization-characterize-gemma-sink-votes.svg" in md
