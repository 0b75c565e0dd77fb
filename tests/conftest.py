"""Shared fixtures: the external example plugin (tests/ext_plugin) registered through package metadata, real
runs of it, and small run folders with chosen per-sample outcomes for report and compare tests."""

from __future__ import annotations

import importlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads this when first imported: set it before any test module imports a kernel, so that the
    # kernel tests run under the interpreter on CPU whatever the test order.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import yaml
from rich.console import Console

from bsight.harness import provenance as prov
from bsight.harness.config import BenchmarkConfig, PluginRef, RunBlock, parse_config
from bsight.harness.jobs.accuracy import AccuracyRow, AccuracySpec
from bsight.harness.jobtypes import Unit
from bsight.harness.plugins import Registry, default_registry, load_registry
from bsight.harness.runner import execute
from bsight.harness.store import Manifest, RunFolder, RunStore, UnitRecord

REPO = Path(__file__).resolve().parent.parent
EXT_SRC = REPO / "tests" / "ext_plugin"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine extra threads only
    contend (10-50x slower); restore the setting so other test modules keep theirs."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The installed plugins: built-ins and whatever else is registered through the entry-point group."""
    return load_registry()


@pytest.fixture(scope="module")
def single_thread_module() -> Iterator[None]:
    """``single_thread`` for a whole module of many small tensor ops."""
    with torch_threads(1):
        yield


def write_dist_info(site: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """Make ``site`` hold an installed-distribution record whose ``bsight`` entry points are given, as pip
    would write it: importlib.metadata (hence bsight's plugin loader) finds it on sys.path."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[bsight]\n{eps}")


@pytest.fixture(scope="session")
def ext_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("ext_site")
    write_dist_info(site, "bsight-tinyext", "0.1.0", {"tinyext": "bsight_tinyext"})
    return site


@pytest.fixture(scope="session")
def ext_paths(ext_site: Path) -> list[str]:
    return [str(ext_site), str(EXT_SRC)]


@pytest.fixture(scope="session")
def ext_registry(ext_paths: list[str]) -> Registry:
    """The registry with the example plugin installed (by metadata on sys.path) in this process."""
    for p in reversed(ext_paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    importlib.invalidate_caches()
    default_registry.cache_clear()  # installed plugins changed mid-process: reports must see the example plugin
    registry = load_registry()
    assert "tiny-llama" in registry.names("model"), registry.failures
    return registry


def env_with(paths: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"
    return env


def bsight(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run the ``bsight`` command in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "bsight.harness.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def ext_config(
    output_dir: Path, name: str = "t", n: int = 6, window: int = 8, max_new_tokens: int = 4, limit: int | None = None
) -> dict:
    """A config over the example plugin: tiny-llama x {dense, sink-window} x brightest-image."""
    job: dict = {"type": "accuracy", "max_new_tokens": max_new_tokens}
    if limit is not None:
        job["limit"] = limit
    return {
        "run": {"name": name, "output_dir": str(output_dir), "seed": 0},
        "models": {"tiny": {"plugin": "tiny-llama"}},
        "methods": {"dense": {"plugin": "dense"}, "sw": {"plugin": "sink-window", "options": {"window": window}}},
        "tasks": {"bright": {"plugin": "brightest-image", "options": {"n": n}}},
        "jobs": [job],
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="session")
def ext_run(ext_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, finished run of the example plugin (random weights)."""
    root = tmp_path_factory.mktemp("runs")
    config = parse_config(ext_config(root, name="ext", n=6), ext_registry)
    with torch_threads(1):
        outcome = execute(config, ext_registry, root / "ext", console=quiet())
    assert not outcome.failed
    return outcome.run_dir


def synthetic_accuracy_run(
    root: Path,
    outcomes: dict[str, list[bool]],
    extracted: dict[str, list[str | None]] | None = None,
    subtasks: list[str] | None = None,
    seed: int = 0,
    headline: str | None = None,
) -> RunFolder:
    """A run folder whose accuracy rows have the given per-sample outcomes (method -> correct per sample),
    written through the store exactly as a run writes them; for report and compare tests that need chosen
    numbers. The first method is the baseline; ``headline`` is what the task declared (default: none
    recorded, which reads as micro)."""
    methods = list(outcomes)
    spec = AccuracySpec(type="accuracy", name="accuracy", baseline=methods[0])
    config = BenchmarkConfig(
        run=RunBlock(name=root.name, seed=seed),
        models={"m": PluginRef(plugin="tiny-llama")},
        methods={m: PluginRef(plugin=m) for m in methods},
        tasks={"t": PluginRef(plugin="brightest-image")},
        jobs=[spec],
    )
    store = RunStore(root)
    records = []
    try:
        (root / store.CONFIG).write_text(config.model_dump_json(), encoding="utf-8")
        store.write_model(store.PROVENANCE, prov.collect(root.name, config.config_hash(), "synthetic"))
        for method, correct in outcomes.items():
            unit = Unit(
                job="accuracy",
                type="accuracy",
                id=f"accuracy/m/{method}/t",
                model="m",
                method=method,
                task="t",
                fingerprint="f0",
            )
            rows = store.open_rows(unit, AccuracyRow)
            answers = (extracted or {}).get(method) or ["A" if c else "B" for c in correct]
            for i, (c, a) in enumerate(zip(correct, answers)):
                rows.append(
                    AccuracyRow(
                        key=f"s{i}",
                        sample_id=f"s{i}",
                        task="t",
                        subtask=(subtasks or [""] * len(correct))[i],
                        model="m",
                        method=method,
                        weights="random",
                        prompt_tokens=10,
                        generation=a or "?",
                        extracted=a,
                        rule="letter" if a else "none",
                        gold="A",
                        correct=c,
                        prefill_s=0.001,
                        total_s=0.002,
                        overhead_ms={},
                    )
                )
            rows.close()
            info = {"headline": headline} if headline else {}
            records.append(
                UnitRecord(
                    unit=unit,
                    spec=spec.model_dump(mode="json"),
                    status="done",
                    rows=len(correct),
                    expected=len(correct),
                    info=info,
                )
            )
        store.write_manifest(Manifest(run_name=root.name, config_hash=config.config_hash(), units=records))
    finally:
        store.close()
    return RunFolder.open(root)


def kill_run_when(config: Path, env: dict[str, str], ready: Callable[[], bool], timeout: float = 240) -> None:
    """Start ``bsight run CONFIG`` in a subprocess and SIGKILL it once ``ready()`` holds: a real interruption
    midway (no clean shutdown), for the tests that check what a resumed run redoes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bsight.harness.cli", "run", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished (or died) before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
