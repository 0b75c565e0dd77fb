"""``bsight characterize``: one model of a config on one of its tasks -> head map, heatmap and shares SVGs, the
sweep when asked; resumable; exit 2 with one clear line per problem on bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import write_yaml

from bsight.harness.adapter_kit import tiny_vlms  # noqa: E402
from bsight.harness.cli import main
from bsight.harness.store import RunFolder
from bsight.kernels.sparsity.headmap import HeadMap
from bsight.kernels.sparsity.param_sweep import SweepRow

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    ckpt = tiny_vlms.qwen_checkpoint(root / "qwen")
    return write_yaml(
        root / "bench.yaml",
        {
            "models": {"tiny_qwen": {"plugin": "qwen2_vl", "options": {"checkpoint": str(ckpt)}}},
            "methods": {"dense": {"plugin": "dense"}},
            "tasks": {
                "offline": {"plugin": "offline_images", "options": {"image_size": 64, "per_subtask": 1}},
                "other": {"plugin": "offline_images", "options": {"image_size": 64, "per_subtask": 1, "seed": 1}},
            },
            "jobs": [{"type": "accuracy", "limit": 1}],  # the command ignores the config's jobs
        },
    )


def printed(out: str) -> dict[str, Path]:
    return {k: Path(v) for k, v in (line.split(": ", 1) for line in out.strip().splitlines())}


def test_characterize_writes_head_map_plots_and_sweep_and_resumes(cfg, tmp_path, capsys):
    taus = sorted(random.sample([0.001, 0.01, 0.05, 0.2, 1.0], 3))
    out_dir = tmp_path / "char"
    args = [
        "characterize",
        str(cfg),
        "--model",
        "tiny_qwen",
        "--task",
        "offline",
        "--limit",
        "3",
        "--tau",
        str(taus[1]),
        "--sweep-taus",
        ",".join(map(str, taus)),
        "--out",
        str(out_dir),
        "--publish",
        str(tmp_path / "pub" / "qwen.json"),
    ]
    assert main(args) == 0
    paths = printed(capsys.readouterr().out)
    assert set(paths) == {
        "head map",
        "published head map",
        "heatmap",
        "layer shares",
        "sweep",
        "sweep plot",
        "per-prompt tables",
        "report",
    }
    hm = HeadMap.load(paths["head map"])
    assert hm.params.tau == taus[1] and hm.dataset.size == 3 and hm.weights == "random" and hm.num_layers == 2
    assert HeadMap.load(paths["published head map"]).categories == hm.categories
    for key in ("heatmap", "layer shares", "sweep plot"):
        assert paths[key].read_text().startswith("<svg") and paths[key].parent == out_dir / "plots"
    grid = [SweepRow.model_validate(r) for r in json.loads(paths["sweep"].read_text())]
    assert [r.tau for r in grid] == taus and all(0 <= r.flops_reduction_mean <= 1 for r in grid)
    assert paths["report"] == (out_dir / "index.html").resolve()

    assert main([*args[:8], "--tau", str(taus[2]), *args[10:]]) == 0  # resumed: nothing characterized again
    capsys.readouterr()
    prov = RunFolder.open(out_dir).provenance()
    assert [s.rows_written for s in prov.sessions] == [4, 0]
    assert HeadMap.load(out_dir / "headmaps" / "characterize" / "tiny_qwen.json").params.tau == taus[2]
    units = RunFolder.open(out_dir).manifest().units
    assert [u.unit.id for u in units] == ["characterize/tiny_qwen"]  # the config's accuracy job is not run


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--model", "nope", "--task", "offline"],
            "--model 'nope' is not defined under `models:` in {cfg}; defined: tiny_qwen",
        ),
        (["--model", "tiny_qwen"], "--task is required; tasks defined in {cfg}: offline, other"),
        (
            ["--model", "tiny_qwen", "--task", "offline", "--tau", "-1"],
            "--tau: Input should be greater than 0 (got -1.0)",
        ),
        (
            ["--model", "tiny_qwen", "--task", "offline", "--sweep-gammas", "0.5,2"],
            "--sweep-gammas: every value must lie in [0, 1], got [0.5, 2.0]",
        ),
        (
            ["--model", "tiny_qwen", "--task", "offline", "--sink-fraction", "3"],
            "--sink-fraction/--sink-offsets: Input should be less than or equal to 1",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_per_problem(cfg, tmp_path, capsys, extra, message):
    assert main(["characterize", str(cfg), *extra, "--out", str(tmp_path / "o")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bsight: error:")]
    assert any(message.format(cfg=cfg) in ln for ln in err), err
    assert not (tmp_path / "o").exists()


def test_argument_and_config_errors(cfg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(
            [
                "characterize",
                str(cfg),
                "--model",
                "tiny_qwen",
                "--task",
                "offline",
                "--sink-fraction",
                "0.1",
                "--discover-sinks",
                "2",
                "--out",
                "x",
            ]
        )
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(
            [
                "characterize",
                str(cfg),
                "--model",
                "tiny_qwen",
                "--task",
                "offline",
                "--sweep-taus",
                "0.1,x",
                "--out",
                "x",
            ]
        )
    assert e.value.code == 2 and "expected comma-separated numbers" in capsys.readouterr().err
    assert (
        main(
            ["characterize", str(tmp_path / "absent.yaml"), "--model", "m", "--task", "t", "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "config file not found" in capsys.readouterr().err
    assert (
        main(
            [
                "characterize",
                str(cfg),
                "--config",
                str(tmp_path / "other.yaml"),
                "--model",
                "m",
                "--task",
                "t",
                "--out",
                "o",
            ]
        )
        == 2
    )
    assert "two configs given" in capsys.readouterr().err
