"""Calibration transfer on the VLM path (issue 18, part 4; ``transfer_vlm.yaml``): every shipped config validates,
the VLM transfer config names what its header and the README promise (RANDOM weights, photos vs the MMIU fixture,
both head maps on the same held-out prompts), ``bsight random-model --tiny`` writes the checkpoint it loads, and
the config's two commands run end to end into a report that states the fidelity change of the transferred map
against the in-domain one and each calibration's wall time in total and per prompt."""

from __future__ import annotations

import math
import os
import re
import shutil
from types import SimpleNamespace

import pytest
from conftest import REPO

from bsight.harness.cli import main
from bsight.harness.config import load_config
from bsight.harness.jobs.tau_sweep import transfer_comparisons
from bsight.harness.plugins import default_registry, load_registry
from bsight.harness.report import fmt_num, fmt_seconds
from bsight.harness.runner import plan
from bsight.kernels.sparsity.headmap import DatasetInfo

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = REPO / "transfer_vlm.yaml"
CHECKPOINT = "runs/models/tiny-qwen2-vl"
COMMANDS = (
    f"bsight random-model qwen2-vl-7b --tiny --out {CHECKPOINT}",
    "OMP_NUM_THREADS=1 bsight run transfer_vlm.yaml",
)


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize("name", sorted(p.name for p in REPO.glob("*.yaml")))
def test_every_shipped_config_validates_and_plans(name, registry):
    assert plan(load_config(REPO / name, registry))


def test_transfer_vlm_config_names_what_it_promises(registry):
    config = load_config(CONFIG, registry)
    header = "".join(re.findall(r"^#.*\n", CONFIG.read_text(), re.M))
    assert "RANDOM" in header and "NOT evidence about transfer" in header and "none of them is accuracy" in header
    assert all(command in header for command in COMMANDS)

    (model,) = config.models.values()
    assert model.plugin == "qwen2_vl" and model.options["checkpoint"] == CHECKPOINT
    assert model.options["weights"] == "random"
    tasks = config.tasks
    assert tasks["photos-char"].plugin == "offline_images"
    for name in ("mmiu-char", "mmiu-heldout"):  # the local fixture in the upstream schema, read as the hub's copy
        assert tasks[name].plugin == "mmiu" and (REPO / tasks[name].options["source"] / "all.parquet").is_file()
    assert not set(tasks["mmiu-char"].options["subtasks"]) & set(tasks["mmiu-heldout"].options["subtasks"])

    jobs = {spec.name: (i, spec) for i, spec in enumerate(config.jobs)}
    sweeps = [spec for spec in config.jobs if spec.type == "tau_sweep"]
    assert len(sweeps) == 2 and {s.task for s in sweeps} == {"mmiu-heldout"}  # the same held-out prompts
    assert sweeps[0].taus == sweeps[1].taus
    assert {jobs[s.characterize][1].task for s in sweeps} == {"photos-char", "mmiu-char"}
    for i, sweep in enumerate(config.jobs):
        if sweep.type != "tau_sweep":
            continue
        j, char = jobs[sweep.characterize]
        assert j < i and char.tau in sweep.taus
        head_map = os.path.normpath(config.methods[sweep.method].options["head_map"])
        assert config.produced(i)[("head_map", head_map)].job == char.name  # its own characterization's map

    readme = (REPO / "README.md").read_text()
    paragraph = next(p for p in readme.split("\n\n") if "transfer_vlm.yaml" in p)
    assert "RANDOM" in paragraph and "reports/published/transfer_vlm_run/" in paragraph


def test_random_model_tiny_writes_a_loadable_random_checkpoint(tmp_path, capsys):
    from bsight.plugins.models.qwen2_vl import Qwen2VL

    for out in ("a", "b"):
        assert main(["random-model", "qwen2-vl-7b", "--tiny", "--out", str(tmp_path / out)]) == 0
    assert "RANDOM weights, seed 0" in capsys.readouterr().out
    weights = [(tmp_path / out / "model.safetensors").read_bytes() for out in ("a", "b")]
    assert weights[0] == weights[1]  # seeded: the same checkpoint on every machine
    assert "RANDOM weights" in (tmp_path / "a" / "README.md").read_text()
    adapter = Qwen2VL({"checkpoint": str(tmp_path / "a"), "device": "cpu"})
    adapter.load()
    assert adapter.info.weights == "random" and adapter.info.num_layers == 2 and adapter.tokenizer is not None
    assert main(["random-model", "qwen2-vl-7b", "--tiny", "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != weights[0]


def test_the_config_runs_and_reports_the_fidelity_change_and_calibration_cost(tmp_path, monkeypatch):
    """The header's two commands, in a folder holding only the config and the MMIU fixture it reads."""
    shutil.copy(CONFIG, tmp_path / CONFIG.name)
    shutil.copytree(REPO / "tests/fixtures/tasks/mmiu/hub", tmp_path / "tests/fixtures/tasks/mmiu/hub")
    monkeypatch.chdir(tmp_path)
    cached = default_registry.cache_info().currsize
    try:
        for command in COMMANDS:
            assert main(command.removeprefix("OMP_NUM_THREADS=1 ").split()[1:]) == 0, command
    finally:  # the report's registry is loaded once per process: leave it unloaded for later modules if it was
        if not cached:
            default_registry.cache_clear()
    report = (tmp_path / "runs/transfer_vlm/report.md").read_text()
    assert "/work" not in report and str(tmp_path) not in report

    block = report[report.index("### Calibration transfer: tiny-qwen2-vl on mmiu-heldout") :]
    block = block[: block.index("\n## ")]
    assert "RANDOM weights" in block and "In-domain: `mmiu-char`" in block
    calibrations = re.findall(r"^\| (\S+) \((\S+)\) \| (yes|no) \| (\d+) \| (.*?) \| `", block, re.M)
    assert [(c[0], c[2], c[3]) for c in calibrations] == [("mmiu-char", "yes", "1"), ("photos-char", "no", "15")]
    for *_, cost in calibrations:  # total for n; mean per prompt, as the characterization timed them
        assert re.fullmatch(r"[\d.]+ m?s for \d+; [\d.]+ m?s", cost), cost
        assert not cost.startswith("0.0 s"), cost
    rows = re.findall(r"^\| (0\.\d+) \| (\S+)(?: \(in-domain\))? \|(.*)\|$", block, re.M)
    taus = [0.1, 0.2, 0.3, 0.5]
    assert [(float(t), who) for t, who, _ in rows] == [(t, w) for t in taus for w in ("mmiu-char", "photos-char")]
    for tau, who, cells in rows:
        cells = [c.strip() for c in cells.split("|")]
        if who == "mmiu-char":
            assert cells[7] == "reference"
        else:  # the change at this tau against the in-domain row above it: FLOPs, same generation, KL, top-1
            assert cells[7].endswith(" pp") and cells[9].endswith(" pp") and cells[10] != "–"
    assert "calibration cost | " in report and "in total for 15 prompts; per prompt" in report
    # random weights parse no answer: the rule says why it picks no tau instead of advising smaller taus
    assert report.count("agreement with dense is undefined at every tau") == 2


def _unit(job: str, char_task: str, revision: str, points: list[dict], task: str = "held", model: str = "m"):
    dataset = DatasetInfo(name=char_task, size=3, revision=revision)
    setup = SimpleNamespace(dataset=dataset, characterize_unit=f"{job}-char/{model}")
    return {"model": model, "task": task, "job": job, "weights": "random", "setup": setup, "points": points}


def _point(tau: float, **values: float) -> dict:
    base = {k: 0.0 for k in ("sparse_share", "flops_heldout", "agreement", "exact_generation", "kl_mean", "top1_match")}
    return {"tau": tau, "n": 2, "either_unparsed": 0.0, **base, **values}


def test_transfer_comparison_is_against_the_one_in_domain_sweep():
    mine = _unit("in", "held-char", "rev-A", [_point(0.1, kl_mean=0.01, agreement=1.0), _point(0.3)])
    other = _unit("out", "photos", "rev-B", [_point(0.1, kl_mean=0.05, agreement=0.5), _point(0.2)])
    alone = _unit("solo", "x-char", "rev-X", [_point(0.1)], task="other-held")
    (t,) = transfer_comparisons([other, mine, alone], {"held": "rev-A", "other-held": "rev-X"}, {"in-char/m": {"n": 3}})
    assert t["reference"] == "held-char" and t["task"] == "held" and t["random_weights"]
    assert [(c["job"], c["in_domain"], c["cost"]) for c in t["calibrations"]] == [
        ("in", True, {"n": 3}),
        ("out", False, None),
    ]
    assert [(r["tau"], r["job"]) for r in t["rows"]] == [(0.1, "in"), (0.1, "out")]  # only the taus both swept
    ref, change = t["rows"][0], t["rows"][1]["change"]
    assert ref["change"] is None and ref["in_domain"]
    assert change["kl_mean"] == pytest.approx(0.04) and change["agreement"] == pytest.approx(-0.5)


@pytest.mark.parametrize("revisions", [{}, {"held": "rev-C"}, {"held": "rev-A"}])
def test_transfer_comparison_without_exactly_one_in_domain_sweep_computes_no_change(revisions):
    units = [_unit(j, f"{j}-char", "rev-A" if j != "b" else "rev-B", [_point(0.1)]) for j in ("a", "b", "c")]
    (t,) = transfer_comparisons(units, revisions)
    assert t["reference"] is None and all(r["change"] is None for r in t["rows"])
    assert t["in_domain_count"] == (2 if revisions.get("held") == "rev-A" else 0)


def test_one_characterization_task_is_no_transfer():
    units = [_unit(j, "same-char", "rev-A", [_point(0.1)]) for j in ("a", "b")]
    assert transfer_comparisons(units, {"held": "rev-A"}) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0318, "31.8 ms"), (0.00042, "0.42 ms"), (0.5, "500 ms"), (1.0, "1.0 s"), (96.34, "96.3 s"), (4321, "4,321 s")],
)
def test_wall_times_keep_their_digits(seconds, text):
    assert fmt_seconds(seconds) == text
    assert fmt_seconds(None) == fmt_seconds(math.nan) == "–"


def test_signed_numbers_show_a_plus_only_for_a_rise():
    assert fmt_num(0.018, signed=True) == "+0.018" and fmt_num(-0.018, signed=True) == "-0.018"
    assert fmt_num(0.0, signed=True) == "0.0" and fmt_num(0.018) == "0.018" and fmt_num(math.nan, signed=True) == "–"
