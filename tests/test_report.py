"""Reports: self-contained HTML and Markdown with every section, numbers that match the rows, inline SVG."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from conftest import synthetic_accuracy_run

from bsight.harness import plots, stats
from bsight.harness.cli import main
from bsight.harness.jobs.accuracy import AccuracyJob
from bsight.harness.report import fmt_num, fmt_pct, render_report


def sections_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, re.S))


def test_real_run_report_is_self_contained(ext_run):
    html = (ext_run / "index.html").read_text()
    assert not re.search(r"<script|<link|<img|<iframe|@import|src=", html, re.I)  # nothing loads from anywhere
    assert not re.search(r'(href|url\()\s*=?\s*"?(https?:)?//', html)
    s = sections_of(html)
    assert list(s) == [
        "results",  # the combined table, from results.json
        "accuracy",
        "flops",
        "characterization",
        "timing",
        "tau_sweep",
        "baselines",
        "prompt_stats",  # the example plugin's own job type: a new section, after the built-ins'
        "units",
        "provenance",
    ]
    for key in ("flops", "characterization", "timing", "tau_sweep", "baselines", "prompt_stats"):
        assert "No data in this run." in s[key]
    assert "tiny on bright" in s["accuracy"] and "Random-weight model" in s["accuracy"]
    assert s["accuracy"].count("<svg") == 1 and "sw" in s["accuracy"]
    assert "bsight-tinyext" in s["provenance"] and "brightest-image@1:seed0" in s["provenance"]
    md = (ext_run / "report.md").read_text()
    link = re.search(r"!\[[^\]]*\]\((plots/[^)]+\.svg)\)", md).group(1)
    assert (ext_run / link).read_text().startswith("<svg")
    for title in (
        "## Accuracy",
        "## FLOPs",
        "## Characterization",
        "## Kernel timing",
        "## Tau sweep",
        "## Baseline comparison",
        "## Provenance",
    ):
        assert title in md
    assert md.count("_No data in this run._") == 6


def test_accuracy_numbers_match_the_rows(tmp_path):
    rng = np.random.default_rng()
    n = 40
    base = list(rng.random(n) < 0.5)
    meth = [b if rng.random() < 0.8 else not b for b in base]
    answers_b = [None if i % 7 == 0 else ("A" if c else "B") for i, c in enumerate(base)]
    answers_m = [None if i % 5 == 0 else ("A" if c else "B") for i, c in enumerate(meth)]
    subtasks = ["x" if i % 2 else "y" for i in range(n)]
    run = synthetic_accuracy_run(
        tmp_path / "r", {"dense": base, "fast": meth}, {"dense": answers_b, "fast": answers_m}, subtasks, seed=5
    )
    render_report(run)
    acc = sections_of((run.root / "index.html").read_text())["accuracy"]
    d = stats.paired_bootstrap(meth, base, resamples=2000, seed=5)
    row = re.search(r"<tr>\s*<td class=\"l\">fast</td>(.*?)</tr>", acc, re.S).group(1)
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
    # agreement over the pairs where both answers parsed, then the share of pairs with an unparsed side, then the
    # share of identical generations (the synthetic generation is the answer, "?" when unparsed)
    parsed = [(a, b) for a, b in zip(answers_m, answers_b) if a is not None and b is not None]
    same = [(a or "?") == (b or "?") for a, b in zip(answers_m, answers_b)]
    assert cells[:8] == [
        fmt_pct(stats.accuracy(meth)),
        fmt_pct(d.delta, signed=True),
        f"[{fmt_pct(d.lo, signed=True)}, {fmt_pct(d.hi, signed=True)}]",
        str(n),
        str(stats.unparsed(answers_m)),
        f"{fmt_pct(np.mean([a == b for a, b in parsed]))} (n={len(parsed)})",
        fmt_pct(1 - len(parsed) / n),
        fmt_pct(np.mean(same)),
    ]
    by = stats.by_group(subtasks, meth)
    assert f'{fmt_pct(by["x"][0])} <span class="muted">(n={by["x"][1]})</span>' in acc


def test_report_rerenders_from_the_folder_alone(ext_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ext_run, copy)
    (copy / "index.html").unlink()
    (copy / "report.md").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "index.html").read_text() == (ext_run / "index.html").read_text()


def test_report_on_something_else_is_a_usage_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a bsight run folder" in capsys.readouterr().err


def test_a_failing_section_does_not_sink_the_report(tmp_path, monkeypatch):
    run = synthetic_accuracy_run(tmp_path / "r", {"dense": [True, False], "fast": [True, True]})

    def boom(self, run, records):
        raise RuntimeError("section exploded")

    monkeypatch.setattr(AccuracyJob, "report", boom)
    render_report(run)
    s = sections_of((run.root / "index.html").read_text())
    assert "could not be built: RuntimeError: section exploded" in s["accuracy"]
    assert "<table" in s["provenance"]


def test_svg_ids_are_prefixed_per_plot():
    rng = np.random.default_rng()
    a = plots.make_plot("one", "t", plots.cdf_plot({"m": rng.random(20)}, "x"))
    b = plots.make_plot("two", "t", plots.cdf_plot({"m": rng.random(20)}, "x"))
    ids_a = set(re.findall(r'id="([^"]+)"', a.svg))
    ids_b = set(re.findall(r'id="([^"]+)"', b.svg))
    assert ids_a and all(i.startswith("one-") for i in ids_a) and not ids_a & ids_b
    refs = re.findall(r'href="#([^"]+)"', a.svg) + re.findall(r"url\(#([^)]+)\)", a.svg)
    assert refs and set(refs) <= ids_a  # every reference still resolves inside its own plot
    assert "<?xml" not in a.svg and "<dc:date>" not in a.svg


def test_generic_plots_carry_their_series():
    rng = np.random.default_rng()
    tokens = np.sort(rng.integers(1000, 300_000, 5))
    fig = plots.line_plot(
        {"dense": (tokens, rng.random(5)), "blindsight": (tokens, rng.random(5))}, "tokens", "ms", logx=True, hline=1.0
    )
    svg = plots.figure_to_svg(fig, "p")
    assert "dense" in svg and "blindsight" in svg and "tokens" in svg  # text kept as text
    cdf = plots.cdf_plot({"flops": rng.random(17)}, "reduction")
    ax = cdf.axes[0]
    x, y = ax.lines[0].get_data()
    assert np.all(np.diff(y) > 0) and y[-1] == pytest.approx(1.0) and len(x) == 17


@pytest.mark.parametrize(
    ("value", "num", "pct", "signed"),
    [
        (0.1234, "0.123", "12.3%", "+12.3 pp"),
        (-0.05, "-0.050", "-5.0%", "-5.0 pp"),
        (3, "3", "300.0%", "+300.0 pp"),
        (float("nan"), "–", "–", "–"),
    ],
)
def test_formatting(value, num, pct, signed):
    assert fmt_num(value) == num and fmt_pct(value) == pct and fmt_pct(value, signed=True) == signed
