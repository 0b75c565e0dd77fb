"""What a run was made of, so that its numbers can be traced and compared: code, environment, data, config.

A resumed run keeps one :class:`Provenance`; each process that worked on it adds a :class:`Session`, so a run
finished on another machine or commit than it started on says so.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

from bsight.harness.interfaces import ModelInfo

TRACKED_PACKAGES = (
    "bsight",
    "torch",
    "transformers",
    "triton",
    "numpy",
    "pydantic",
    "pluggy",
    "datasets",
    "jinja2",
    "matplotlib",
)
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the repository root in a source checkout


class Session(BaseModel):
    started: datetime
    ended: datetime | None = None  # None: the process was killed
    status: Literal["running", "completed", "failed", "interrupted"] = "running"
    host: str
    command: list[str]
    config_hash: str
    git_commit: str | None
    git_dirty: bool | None
    rows_written: int = 0
    world_size: int = 1  # processes of a data-parallel session (torchrun)
    devices: list[str] = []  # each rank's device, in rank order ("cuda:1 (NVIDIA H200) on host")


class Provenance(BaseModel):
    schema_version: int = 1
    run_name: str
    config_hash: str
    config_file: str
    git_commit: str | None
    git_dirty: bool | None
    python: str
    platform: str
    host: str
    packages: dict[str, str]
    torch: str
    cuda: str | None
    cudnn: str | None
    gpus: list[str]
    command: list[str]
    started: datetime
    ended: datetime | None = None
    datasets: dict[str, str] = {}  # task config name -> Task.revision()
    models: dict[str, ModelInfo] = {}  # model config name -> what was loaded
    sessions: list[Session] = []


def now() -> datetime:
    return datetime.now(timezone.utc)


def git_state(path: Path = SOURCE_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding ``path``; outside a git checkout ``$BSIGHT_GIT_COMMIT`` (a
    snapshot shipped to a GPU machine names its commit there; dirty unknown), else (None, None)."""
    outside = (os.environ.get("BSIGHT_GIT_COMMIT") or None, None)
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return outside
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return outside


def package_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Versions of the packages that shape results, plus the distributions the run's plugins came from."""
    out: dict[str, str] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    out.update(extra or {})
    return dict(sorted(out.items()))


def collect(
    run_name: str,
    config_hash: str,
    config_file: str,
    plugin_packages: dict[str, str] | None = None,
    devices: list[str] | None = None,
) -> Provenance:
    """Provenance of a run starting now in this process; ``devices``: every rank's device when the session
    is data-parallel (one entry per process)."""
    commit, dirty = git_state()
    started = now()
    host = socket.gethostname()
    command = list(sys.argv)
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return Provenance(
        run_name=run_name,
        config_hash=config_hash,
        config_file=config_file,
        git_commit=commit,
        git_dirty=dirty,
        python=platform.python_version(),
        platform=platform.platform(),
        host=host,
        packages=package_versions(plugin_packages),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=None if cudnn is None else str(cudnn),
        gpus=gpus,
        command=command,
        started=started,
        sessions=[
            Session(
                started=started,
                host=host,
                command=command,
                config_hash=config_hash,
                git_commit=commit,
                git_dirty=dirty,
                world_size=len(devices or ()) or 1,
                devices=devices or [],
            )
        ],
    )


def resume(previous: Provenance, current: Provenance) -> Provenance:
    """Provenance of a resumed run: this session's environment, the earlier sessions kept, models and data
    revisions carried over until this session records its own."""
    return current.model_copy(
        update={
            "started": previous.started,
            "sessions": previous.sessions + current.sessions,
            "datasets": previous.datasets,
            "models": previous.models,
        }
    )


def cli_command(benchmark: str, argv: Sequence[str], out: str | Path | None = None) -> list[str]:
    """The command line of ``python -m bsight.harness.benchmarks.<benchmark>`` given ``argv``, the output file
    ``out`` by its name only (a machine's paths do not belong in published results)."""
    out_name = None if out is None else str(out)
    return [
        "python",
        "-m",
        f"bsight.harness.benchmarks.{benchmark}",
        *(Path(a).name if a == out_name else a for a in argv),
    ]


def benchmark_provenance(
    benchmark: str,
    command: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Provenance of one GPU benchmark document (``bsight.harness.benchmarks.<benchmark>``): code, environment,
    device and command, with the keys the published documents and report templates read (``PROVENANCE_KEYS`` of
    :mod:`bsight.harness.jobs.published`), then ``extra``.

    ``command``: the CLI's command line (:func:`cli_command`); None where a job called the benchmark's
    ``run(spec)`` directly (recorded as ``[bsight.harness.benchmarks.<benchmark>.run]``). ``device``: where it
    ran (default: the first GPU if any, else the CPU); ``gpu`` is that GPU's name, ``device`` the GPU's name or
    ``cpu``. Versions come from package metadata (nothing is imported).
    """
    commit, dirty = git_state()
    if dirty is None and "BSIGHT_GIT_DIRTY" in os.environ:  # a copied tree whose state its sender recorded
        dirty = os.environ["BSIGHT_GIT_DIRTY"] == "1"
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" and torch.cuda.is_available() else None
    packages = package_versions()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    prov: dict[str, Any] = {
        "benchmark": benchmark,
        "git_commit": commit,
        "git_dirty": dirty,
        "date": now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": packages.get("triton"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "gpu": gpu,
        "device": gpu or dev.type,
        "packages": packages,
        "command": list(command) if command is not None else [f"bsight.harness.benchmarks.{benchmark}.run"],
    }
    prov.update(extra or {})
    return prov
