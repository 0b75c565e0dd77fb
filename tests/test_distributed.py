"""Data-parallel evaluation: sharding, merging shard files, and real 2-process runs (torchrun, gloo on CPU)
whose rows equal a 1-process run's, including runs resumed under another number of processes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env_with, ext_config, quiet, write_yaml

from bsight.harness.cli import main
from bsight.harness.config import BenchmarkConfig, PluginRef, parse_config
from bsight.harness.distributed import Dist, LaunchError, session, shard_indices
from bsight.harness.jobs.accuracy import AccuracyRow
from bsight.harness.jobtypes import ResultRow, Unit
from bsight.harness.runner import PlanError, check_launch, execute, plan
from bsight.harness.store import RunFolder, RunStore, Shard, ShardWriter, StoreError, UnitRows

TIMING = {"prefill_s", "total_s", "overhead_ms"}  # wall-clock fields: the only ones that may differ between runs


class Row(ResultRow):
    value: float


def unit() -> Unit:
    return Unit(
        job="accuracy",
        type="accuracy",
        id="accuracy/m/dense/t",
        model="m",
        method="dense",
        task="t",
        fingerprint="abc123",
    )


def test_shards_partition_the_items():
    n, world = random.randrange(0, 40), random.randrange(1, 6)
    parts = [list(shard_indices(n, r, world)) for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert all(i % world == r for r, p in enumerate(parts) for i in p)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="rank 3 is outside a world of 3 processes"):
        shard_indices(n, 3, 3)
    d = Dist()
    assert (d.is_main, d.broadcast("x"), d.gather("y")) == (True, "x", ["y"])


def test_launch_environment_errors_name_the_variable(ext_registry, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(
        LaunchError, match="environment variable RANK is not set; start data-parallel runs with torchrun"
    ):
        with session():
            pass
    monkeypatch.setenv("RANK", "one")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write_yaml(tmp_path / "c.yaml", ext_config(tmp_path / "runs", n=2)))]) == 2
    assert "bsight: error: environment variable RANK='one' is not an integer" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")  # a launcher with one process: a plain single-process session
    with session() as d:
        assert (d.rank, d.world_size, d.backend) == (0, 1, None)


def test_a_model_spread_over_all_gpus_is_not_launched_data_parallel():
    def config(device_map):
        return BenchmarkConfig(models={"big": PluginRef(plugin="some-vlm", options={"device_map": device_map})})

    with pytest.raises(
        PlanError, match="models.big.options.device_map is 'auto': a model spread over several GPUs runs in one process"
    ):
        check_launch(config("auto"), Dist(rank=1, world_size=2))
    check_launch(config("auto"), Dist())  # one process: fine
    check_launch(config({"": 0}), Dist(rank=0, world_size=2))  # pinned to one device per rank: fine


def write_shard(folder: RunFolder, u: Unit, shard: Shard, rows: list[Row], torn: Row | None = None) -> Path:
    path = folder.shard_dir(u) / shard.file_name
    out = UnitRows(path, Row)
    for r in rows:
        out.append(r)
    out.close()
    if torn is not None:  # a rank killed in the middle of a write
        with open(path, "ab") as f:
            f.write(torn.model_dump_json().encode()[: random.randrange(1, 10)])
    return path


def test_merge_orders_rows_canonically_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random()
    rows = [Row(key=f"s{i}", value=rng.random()) for i in range(rng.randrange(12, 30))]
    order = [r.key for r in rows]
    u = unit()
    store = RunStore(tmp_path / "run")
    try:
        # an earlier one-process session stored a prefix; a 2-process session then stored the rest, except what a
        # kill tore; a 3-process session left one row that the unit file also holds (killed mid-merge)
        k = rng.randrange(1, 5)
        main = UnitRows(store.unit_path(u), Row)
        for r in rows[:k]:
            main.append(r)
        main.close()
        rest = rows[k:]
        write_shard(store, u, Shard(0, 2), rest[0::2][:-1], torn=rest[0::2][-1])
        write_shard(store, u, Shard(1, 2), rest[1::2])
        write_shard(store, u, Shard(2, 3), [rows[0]])
        stray = store.shard_dir(u) / "notes.txt"
        stray.write_text("not a shard")
        missing = rest[0::2][-1]
        seen = [r.key for r in store.rows(u, Row)]  # a report of the interrupted run shows every stored row once
        assert sorted(seen) == sorted(set(order) - {missing.key}) and len(seen) == len(set(seen))
        with pytest.raises(ValueError, match="rank 0 writes through the RunStore"):
            ShardWriter(store.root, Shard(0, 2))
        worker = ShardWriter(store.root, Shard(1, 2)).open_rows(u, Row)
        with pytest.raises(StoreError, match="already stored for this unit"):
            worker.append(rows[0])  # stored in another file of the unit
        worker.close()

        assert store.merge_shards(u, Row, order) == len(rows) - 1
        assert [r.key for r in store.rows(u, Row)] == [key for key in order if key != missing.key]
        assert store.shard_paths(u) == [] and stray.exists()  # only shard files are deleted
        kept = store.unit_path(u).read_bytes()

        # the torn row is redone by a later session (any world size), then merged in its canonical place;
        # a row for a key the order does not list keeps its place after the listed ones
        extra = Row(key="zz", value=1.0)
        write_shard(store, u, Shard(1, 3), [missing, extra])
        assert store.merge_shards(u, Row, order) == len(rows) + 1
        assert [r for r in store.rows(u, Row)] == rows + [extra]
        assert store.merge_shards(u, Row, order) == len(rows) + 1  # idempotent
        assert store.unit_path(u).read_bytes().startswith(kept[: kept.index(b"\n") + 1])
    finally:
        store.close()


def rows_of(run_dir: Path, job: str) -> dict[str, list[dict]]:
    """Each unit's rows without wall-clock fields, in stored order, by model/method/task."""
    folder = RunFolder.open(run_dir)
    return {
        rec.unit.id.split("/", 1)[1]: [
            {k: v for k, v in r.model_dump().items() if k not in TIMING} for r in folder.rows(rec.unit, AccuracyRow)
        ]
        for rec in folder.manifest().units
        if rec.unit.job == job
    }


N = 7  # odd: the two ranks get 4 and 3 samples


@pytest.fixture(scope="module")
def reference(ext_registry, tmp_path_factory) -> tuple[dict, dict[str, list[dict]], list[AccuracyRow]]:
    """A one-process run of the example config (job ``accuracy``): the config, its rows without timings, and
    its full rows."""
    from conftest import torch_threads

    root = tmp_path_factory.mktemp("ref")
    data = ext_config(root / "runs", name="one", n=N, max_new_tokens=3)
    with torch_threads(1):
        out = execute(parse_config(data, ext_registry), ext_registry, root / "runs" / "one", console=quiet())
    assert not out.failed and out.rows_written == 2 * N
    folder = RunFolder.open(out.run_dir)
    full = [r for rec in folder.manifest().units for r in folder.rows(rec.unit, AccuracyRow)]
    return data, rows_of(out.run_dir, "accuracy"), full


def _interrupt(folder: RunFolder, units: list[Unit], rows: list[AccuracyRow], world: int, done: int) -> None:
    """Leave what a ``world``-process session killed after each rank stored ``done`` rows of each unit
    leaves: shard files, rank 0's with a torn last line."""
    for u in units:
        mine = [r for r in rows if r.method == u.method]
        for rank in range(world):
            share = [mine[i] for i in shard_indices(len(mine), rank, world)][: done + 1]
            path = folder.shard_dir(u) / Shard(rank, world).file_name
            out = UnitRows(path, AccuracyRow)
            for r in share[:done]:
                out.append(r)
            out.close()
            if rank == 0 and len(share) > done:
                with open(path, "ab") as f:
                    f.write(share[done].model_dump_json().encode()[:40])


def test_two_processes_give_the_rows_of_one_and_resume_any_run(reference, ext_registry, ext_paths, tmp_path):
    """One torchrun session, two jobs of the same work: ``fresh`` starts empty; ``resumed`` holds what a killed
    one-process session (2 rows, then a torn line) and a killed 3-process session (1 row per rank, sample 0
    also in the unit file, as if killed between merging and deleting) left."""
    data, expected, rows = reference
    job = data["jobs"][0]
    data = {
        **data,
        "run": {**data["run"], "name": "two", "output_dir": str(tmp_path / "runs")},
        "jobs": [{**job, "name": "fresh"}, {**job, "name": "resumed"}],
    }
    run_dir = tmp_path / "runs" / "two"
    folder = RunFolder(run_dir)
    resumed = [u for _, u in plan(parse_config(data, ext_registry)) if u.job == "resumed"]
    _interrupt(folder, resumed, rows, world=3, done=1)
    stored = 0
    for u in resumed:
        first = [r for r in rows if r.method == u.method][:3]
        out = UnitRows(folder.unit_path(u), AccuracyRow)
        for r in first[:2]:
            out.append(r)
        out.close()
        with open(folder.unit_path(u), "ab") as f:
            f.write(first[2].model_dump_json().encode()[:25])
        stored += len(folder.rows(u, AccuracyRow))

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "bsight.harness.cli",
        "run",
        str(write_yaml(tmp_path / "c.yaml", data)),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env_with(ext_paths), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        res.stdout.count("report: ") == 1 and f"report: {run_dir / 'index.html'}" in res.stdout
    )  # rank 0 alone prints
    assert "over 2 processes (gloo)" in res.stderr
    assert rows_of(run_dir, "fresh") == expected  # same generations, answers, scores and order as one process
    assert rows_of(run_dir, "resumed") == expected  # nothing lost or duplicated, canonical order restored
    keys = [json.loads(x)["key"] for p in (run_dir / "results").rglob("*.jsonl") for x in p.read_text().splitlines()]
    assert sorted(keys) == sorted(2 * [r.key for r in rows])  # every row once, in the unit files only (shards merged)
    assert not list((run_dir / "results").rglob("*.shards"))
    folder = RunFolder.open(run_dir)
    assert [(r.status, r.rows, r.expected) for r in folder.manifest().units] == [("done", N, N)] * 4
    session = folder.provenance().sessions[-1]
    assert (
        session.world_size == 2 and len(session.devices) == 2 and all(d.startswith("cpu on ") for d in session.devices)
    )
    assert session.rows_written == 4 * N - stored and session.status == "completed"
    assert "tiny on bright" in (run_dir / "index.html").read_text()


def test_interrupted_under_two_resumes_under_one(reference, ext_registry, tmp_path, single_thread):
    data, expected, rows = reference
    data = {**data, "run": {**data["run"], "name": "r21", "output_dir": str(tmp_path)}}
    config = parse_config(data, ext_registry)
    units = [u for _, u in plan(config)]
    folder = RunFolder(tmp_path / "r21")
    _interrupt(folder, units, rows, world=2, done=2)
    stored = sum(len(folder.rows(u, AccuracyRow)) for u in units)
    out = execute(config, ext_registry, tmp_path / "r21", console=quiet())
    assert not out.failed and out.rows_written == 2 * N - stored
    assert rows_of(tmp_path / "r21", "accuracy") == expected
    assert not list((tmp_path / "r21" / "results").rglob("*.shards"))
