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
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

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
