"""The run folder on disk: per-unit JSONL rows that survive a kill, the unit manifest, provenance, config.

Layout of a run folder::

    config.json         the validated config the run used (plugin options with their defaults filled in)
    config.yaml         the config file as written
    provenance.json     :class:`~bsight.harness.provenance.Provenance`
    units.json          :class:`Manifest`: every unit of the current plan, its status and row count
    results/<job>/<unit>.<fingerprint>.jsonl   one row per line, appended, flushed and fsynced per row
    index.html, report.md, plots/*.svg          the rendered report
    errors.log          tracebacks of units that failed

Resume rules: a unit's file name carries its fingerprint, so changing what determines a unit's rows (a
plugin option, ``max_new_tokens``) starts a new file while unchanged units keep theirs. Inside a file each row
has a ``key``; keys already present are skipped, so nothing is redone or duplicated. A process killed in the
middle of a write leaves at most one partial last line, which the next writer cuts off.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from .jobs.base import ResultRow, Unit

R = TypeVar("R", bound=ResultRow)
M = TypeVar("M", bound=BaseModel)

UnitStatus = Literal["pending", "running", "done", "failed"]


class StoreError(RuntimeError):
    """A run folder or one of its files is missing or unreadable; the message names the file."""


class UnitRecord(BaseModel):
    unit: Unit
    spec: dict  # the job spec the unit came from (the report reads its parameters)
    status: UnitStatus = "pending"
    rows: int = 0
    expected: int | None = None  # rows the unit will hold when complete, when the job knows
    error: str | None = None
    updated: datetime | None = None


class Manifest(BaseModel):
    run_name: str
    config_hash: str
    units: list[UnitRecord]


def write_json_atomic(path: Path, model: BaseModel) -> None:
    """Write a pydantic model as JSON so that a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(model.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, model: type[M]) -> M:
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except ValidationError as e:
        raise StoreError(f"{path}: not a valid {model.__name__}: {e.errors()[0]['msg']} at {e.errors()[0]['loc']}") from None


def _read_lines(path: Path) -> tuple[list[bytes], int]:
    """Complete lines of a JSONL file and the byte length they cover (a partial last line is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


class UnitRows(Generic[R]):
    """The rows of one unit: read on open, then appended one durable line at a time."""

    def __init__(self, path: Path, row_type: type[R], writable: bool = True) -> None:
        self.path, self.row_type = path, row_type
        lines, good_bytes = _read_lines(path)
        self.rows: dict[str, R] = {}
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = row_type.model_validate_json(line)
            except ValidationError as e:
                raise StoreError(f"{path}:{n}: not a valid {row_type.__name__} row: {e.errors()[0]['msg']} at {e.errors()[0]['loc']}") from None
            self.rows.setdefault(row.key, row)
        self._file = None
        if writable:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size != good_bytes:
                with open(path, "r+b") as f:  # cut the line a killed writer left half-written
                    f.truncate(good_bytes)
            self._file = open(path, "ab")

    @property
    def done(self) -> set[str]:
        return set(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[R]:
        return iter(self.rows.values())

    def append(self, row: R) -> None:
        """Write one row durably. A key already present is a caller bug: it would duplicate a result."""
        if self._file is None:
            raise StoreError(f"{self.path}: opened read-only")
        if not isinstance(row, self.row_type):
            raise TypeError(f"expected a {self.row_type.__name__}, got {type(row).__name__}")
        if row.key in self.rows:
            raise StoreError(f"{self.path}: row {row.key!r} is already stored")
        self._file.write(row.model_dump_json().encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows[row.key] = row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RunFolder:
    """Read-only view of a run folder, used by reports and ``compare``."""

    CONFIG, CONFIG_SOURCE, PROVENANCE, MANIFEST = "config.json", "config.yaml", "provenance.json", "units.json"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def open(cls, root: Path | str) -> RunFolder:
        run = cls(root)
        if not (run.root / cls.MANIFEST).is_file():
            raise StoreError(f"{run.root}: not a bsight run folder (no {cls.MANIFEST}); pass the folder `bsight run` printed")
        return run

    def manifest(self) -> Manifest:
        return read_json(self.root / self.MANIFEST, Manifest)

    def provenance(self):  # -> Provenance (imported lazily: provenance imports torch)
        from .provenance import Provenance

        return read_json(self.root / self.PROVENANCE, Provenance)

    def config_data(self) -> dict:
        try:
            return json.loads((self.root / self.CONFIG).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{self.root / self.CONFIG}: not found") from None

    def unit_path(self, unit: Unit) -> Path:
        slug = unit.id.split("/", 1)[1].replace("/", "__") if "/" in unit.id else unit.id
        return self.root / "results" / unit.job / f"{slug}.{unit.fingerprint}.jsonl"

    def rows(self, unit: Unit, row_type: type[R]) -> list[R]:
        """A unit's rows in the order they were written (complete lines only)."""
        return list(UnitRows(self.unit_path(unit), row_type, writable=False))


class RunStore(RunFolder):
    """A run folder opened for writing by one process (an OS lock keeps a second ``bsight run`` out; the
    lock dies with the process, so a killed run never leaves a stale lock)."""

    def __init__(self, root: Path | str, fresh: bool = False) -> None:
        super().__init__(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"{self.root}: another bsight process is writing this run folder") from None
        if fresh:
            self.clear()

    def clear(self) -> None:
        """Forget every cached result and the old report (``--fresh``)."""
        for name in ("results", "plots"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in (self.MANIFEST, self.PROVENANCE, self.CONFIG, self.CONFIG_SOURCE, "index.html", "report.md", "errors.log"):
            (self.root / name).unlink(missing_ok=True)

    def open_rows(self, unit: Unit, row_type: type[R]) -> UnitRows[R]:
        return UnitRows(self.unit_path(unit), row_type, writable=True)

    def write_manifest(self, manifest: Manifest) -> None:
        write_json_atomic(self.root / self.MANIFEST, manifest)

    def write_model(self, name: str, model: BaseModel) -> None:
        write_json_atomic(self.root / name, model)

    def log_error(self, unit_id: str, text: str) -> None:
        with open(self.root / "errors.log", "a", encoding="utf-8") as f:
            f.write(f"==== {datetime.now().isoformat(timespec='seconds')} {unit_id}\n{text}\n")

    def close(self) -> None:
        self._lock.close()
