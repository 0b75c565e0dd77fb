"""Data-parallel evaluation: one process per GPU, started by ``torchrun`` (or any launcher that sets its variables).

``torchrun --nproc-per-node N -m bsight.harness.cli run CONFIG`` starts N copies of ``bsight run``; each
finds its rank in the environment the launcher sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and :func:`session` joins them: ``nccl`` between GPUs (each rank on ``cuda:<LOCAL_RANK>``),
``gloo`` on CPU-only machines. The runner's own coordination (who holds the run folder, which units to
run, per-unit status, the final outcome) travels over a separate gloo group, so it never occupies a GPU and
a rank that waits for slower ranks is bound by a long timeout (:data:`TIMEOUT_ENV`), not NCCL's default.

Without a launcher (or with one process) :func:`session` gives a single-process :class:`Dist` whose
collectives are identities, so the same code runs either way.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

T = TypeVar("T")

TIMEOUT_ENV = "BSIGHT_DIST_TIMEOUT_S"  # seconds a rank may wait for the others (a unit's imbalance); default 6 h
DEFAULT_TIMEOUT_S = 6 * 3600


class LaunchError(RuntimeError):
    """The launcher's environment cannot start a data-parallel session (bad variable, too few GPUs)."""


@dataclass
class Dist:
    """This process's place in a data-parallel run (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (a single process)
    _control: Any = None  # gloo process group for the runner's messages

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if self.world_size == 1:
            return obj
        box = [obj if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, obj, group=self._control)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier(group=self._control)


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """Indices of ``n`` items that rank ``rank`` of ``world_size`` takes: item i goes to rank i mod world size
    (deterministic, and balanced to within one item)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
    return range(rank, n, world_size)


def describe_device(device: torch.device) -> str:
    """``cuda:1 (NVIDIA H200)`` or ``cpu``, with the host: what provenance records for one rank."""
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"{device}{name} on {socket.gethostname()}"


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise LaunchError(f"environment variable {name} is not set; start data-parallel runs with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"environment variable {name}={raw!r} is not an integer") from None


def _timeout() -> timedelta:
    seconds = _env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    if seconds <= 0:
        raise LaunchError(f"environment variable {TIMEOUT_ENV}={seconds} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def launched() -> bool:
    """True in a process that a launcher started as one of several (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


@contextmanager
def session() -> Iterator[Dist]:
    """This process's :class:`Dist`: joins the launcher's process group when there is one (and leaves it on
    exit); otherwise a single process on the default device."""
    if not launched():
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        yield Dist(device=device)
        return
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK", 0)
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local >= count:
            raise LaunchError(
                f"LOCAL_RANK={local} but this host has {count} visible GPU(s): start at most {count} processes per node"
            )
        torch.cuda.set_device(local)  # adapters that ask for "cuda" get this rank's GPU
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    timeout = _timeout()
    torch_dist.init_process_group(backend=backend, timeout=timeout)
    try:
        control = torch_dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
        if backend == "nccl":  # fail fast, with a clear trace, if the GPUs cannot talk
            probe = torch.ones(1, device=device)
            torch_dist.all_reduce(probe)
            if int(probe.item()) != world:
                raise RuntimeError(f"nccl all_reduce over {world} ranks returned {probe.item()}")
        yield Dist(rank=rank, world_size=world, local_rank=local, device=device, backend=backend, _control=control)
    finally:
        torch_dist.destroy_process_group()
