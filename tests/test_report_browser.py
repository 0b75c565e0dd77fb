"""Open real runs' reports in headless Chromium: tables and SVG plots render, nothing is fetched, no
console errors, and the screenshot is not blank. One run is an accuracy run; the other fills the method's
sections (characterization with its sweep, planted structure, FLOPs, kernel timing and TTFT)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or DRIVER is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium and chromedriver must be installed in CI (.ci/run installs Debian's chromium and "
                "chromium-driver)"
            )
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--window-size=1200,2000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)  # no driver download
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def method_run(ext_registry, tmp_path_factory) -> Path:
    """A real run of every method job type on the example plugin's tiny model (random weights), the published
    kernel sweep and a tiny-configuration TTFT measurement."""
    from conftest import quiet, torch_threads

    from bsight.harness.config import parse_config
    from bsight.harness.runner import execute

    root = tmp_path_factory.mktemp("method-run")
    data = {
        "run": {"name": "methods", "output_dir": str(root)},
        "models": {"tiny": {"plugin": "tiny-llama", "options": {"layers": 3}}},
        "methods": {
            "dense": {"plugin": "dense"},
            "bs": {"plugin": "blindsight", "options": {"head_map": str(root / "maps" / "tiny.json")}},
        },
        "tasks": {"bright": {"plugin": "brightest-image", "options": {"n": 5}}},
        "jobs": [
            {"type": "characterize", "sweep_taus": [0.01, 0.05, 0.2], "publish": str(root / "maps" / "{model}.json")},
            {
                "type": "planted",
                "layers": 2,
                "heads": 8,
                "kv_heads": 2,
                "prompts": [{"images": 5, "image_tokens": 48, "label_tokens": 4}],
            },
            {"type": "flops", "methods": ["dense", "bs"]},
            {"type": "timing", "source": "published"},
            {"type": "ttft", "small": True, "lengths": [160]},
        ],
    }
    with torch_threads(1):
        outcome = execute(parse_config(data, ext_registry), ext_registry, root / "methods", console=quiet())
    assert not outcome.failed
    return outcome.run_dir


def load(driver, path):
    driver.get(path.resolve().as_uri())
    driver.get_log("browser")  # drop anything logged before this page
    driver.refresh()
    return driver


def test_report_renders_in_chromium(browser, ext_run):
    from selenium.webdriver.common.by import By

    load(browser, ext_run / "index.html")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    assert browser.title == "bsight run ext"
    # nothing but the page itself was loaded: no fonts, scripts, images or styles from anywhere
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    table = browser.find_element(By.CSS_SELECTOR, "#accuracy table.accuracy")
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["dense (baseline)", "sw"]
    assert table.size["width"] > 300 and table.size["height"] > 40

    svg = browser.find_element(By.CSS_SELECTOR, "#accuracy figure svg")
    assert svg.size["width"] > 200 and svg.size["height"] > 50
    drawn = browser.execute_script("return arguments[0].querySelectorAll('path, use, text').length", svg)
    assert drawn > 10
    for key in ("flops", "characterization", "timing"):
        assert browser.find_element(By.ID, key).find_element(By.CSS_SELECTOR, "p.empty").text == "No data in this run."
    assert len(browser.find_elements(By.CSS_SELECTOR, "#provenance table")) >= 3

    png = Image.open(io.BytesIO(svg.screenshot_as_png)).convert("L")
    pixels = np.asarray(png)
    assert (pixels < 200).mean() > 0.01 and len(np.unique(pixels)) > 8  # the plot has ink, not a blank box
    page = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"))
    assert pixels.size and (page < 128).mean() > 0.005


def test_comparison_renders_in_chromium(browser, ext_run, tmp_path):
    from selenium.webdriver.common.by import By

    from bsight.harness.compare import compare_runs, render_comparison
    from bsight.harness.store import RunFolder

    run = RunFolder.open(ext_run)
    html, _ = render_comparison(compare_runs(run, run), tmp_path)
    load(browser, html)
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
    cells = browser.find_elements(By.CSS_SELECTOR, "table.data tbody tr")
    assert cells and all(r.find_elements(By.TAG_NAME, "td")[-1].text == "within threshold" for r in cells)


def test_method_sections_render_in_chromium(browser, method_run):
    from selenium.webdriver.common.by import By

    load(browser, method_run / "index.html")
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    expected = {
        "flops": 1,
        "characterization": 5,
        "timing": 6,
    }  # CDF; heatmap, shares, per-layer choice distribution, Pareto, confusion; 2 x 2 sweep + 2 TTFT
    for key, n in expected.items():
        section = browser.find_element(By.ID, key)
        assert not section.find_elements(By.CSS_SELECTOR, "p.empty, p.error"), key
        svgs = section.find_elements(By.CSS_SELECTOR, "figure svg")
        assert len(svgs) == n, (key, len(svgs))
        for svg in svgs:
            assert svg.size["width"] > 150 and svg.size["height"] > 100
            assert browser.execute_script("return arguments[0].querySelectorAll('path, use, text').length", svg) > 10
        assert section.find_elements(By.CSS_SELECTOR, "table")
    assert (
        browser.find_element(By.ID, "accuracy").find_element(By.CSS_SELECTOR, "p.empty").text == "No data in this run."
    )
    confusion = browser.find_element(By.CSS_SELECTOR, "#characterization table.confusion")
    assert len(confusion.find_elements(By.CSS_SELECTOR, "tbody tr")) == 4
    heatmap = browser.find_element(By.CSS_SELECTOR, "#characterization figure svg")
    pixels = np.asarray(Image.open(io.BytesIO(heatmap.screenshot_as_png)).convert("L"))
    assert (pixels < 128).mean() > 0.05 and len(np.unique(pixels)) > 8  # the category grid is drawn, not blank
