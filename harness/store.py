"""The run folder on disk: per-unit JSONL rows that survive a kill, the unit manifest, provenance, config.

Layout of a run folder::

    config.json         the validated config the run used (plugin options with their defaults filled in)
    config.yaml         the config file as written
    provenance.json     :class:`~bsight.harness.provenance.Provenance`
    units.json          :class:`Manifest`: every unit of the current plan, its status and row count
    results/<job>/<unit>.<fingerprint>.jsonl   one row per line, appended, flushed and fsynced per row
    results/<job>/<unit>.<fingerprint>.shards/rank<r>-of-<n>.jsonl   rows rank r of an n-process
                        (data-parallel) session wrote; folded into the unit's file when the unit ends
    index.html, report.md, plots/*.svg          the rendered report
    errors.log          tracebacks of units that failed

Resume rules: a unit's file name carries its fingerprint, so changing what determines a unit's rows (a
plugin option, ``max_new_tokens``) starts a new file while unchanged units keep theirs. Inside a file each row
has a ``key``; keys already present are skipped, so nothing is redone or duplicated. A process killed in the
middle of a write leaves at most one partial last line, which the next writer cuts off.

Resume verifies the files, never the manifest alone (:meth:`RunFolder.check_unit`, run for every unit when a
session starts): a unit counts as done only when its files hold exactly the keys it recorded
(``UnitRecord.keys``), each once, each line parsing and each row naming the unit's model, method and task. A
line that does not parse (torn) or repeats a key is moved to ``<file>.rejected``, so its sample is redone; a
row whose key the unit does not list (foreign, or outside the current sample selection) is never counted
(:meth:`RunFolder.rows` leaves it out). ``<unit file>.inputs.json`` records a content hash of the task sample
each row was computed from; a row whose sample changed since is dropped and redone.

Data-parallel sessions: every file has exactly one writer. Rank r of n appends only to its own shard file;
rank 0 alone holds the folder's lock, writes the manifest and, once every rank has finished a unit, merges
the shards into the unit's file in the unit's canonical order and then deletes them (a merge cut short is
finished by the next one). A unit's rows are its file plus any shard files left over, whatever the number of
processes that wrote them, so a run interrupted under n processes resumes under any other number.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from bsight.harness.jobtypes import ResultRow, Unit

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
    # the row keys of the unit's current selection (set when the unit ends): only these rows are counted
    keys: list[str] | None = None
    info: dict[str, Any] = {}  # facts the job recorded while running (accuracy: the task's headline score kind)
    error: str | None = None
    updated: datetime | None = None


class Manifest(BaseModel):
    run_name: str
    config_hash: str
    units: list[UnitRecord]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace a file's content so that a reader (or a kill) never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, model: BaseModel) -> None:
    """Write a pydantic model as JSON so that a reader never sees a half-written file."""
    write_bytes_atomic(path, model.model_dump_json(indent=2).encode())


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path, model: type[M]) -> M:
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except ValidationError as e:
        raise StoreError(
            f"{path}: not a valid {model.__name__}: {e.errors()[0]['msg']} at {e.errors()[0]['loc']}"
        ) from None


def _read_lines(path: Path) -> tuple[list[bytes], int]:
    """Complete lines of a JSONL file and the byte length they cover (a partial last line is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


class _KeyedRows(Generic[R]):
    """A unit's stored rows by key (``rows``), as the runner and the jobs read them."""

    rows: dict[str, R]

    @property
    def done(self) -> set[str]:
        return set(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[R]:
        return iter(self.rows.values())


class UnitRows(_KeyedRows[R]):
    """The rows of one file (a unit's, or one shard of it): read on open, then appended one durable line at
    a time."""

    def __init__(self, path: Path, row_type: type[R], writable: bool = True) -> None:
        self.path, self.row_type = path, row_type
        lines, good_bytes = _read_lines(path)
        self.rows: dict[str, R] = {}
        self.bad_lines: list[str] = []  # "<line>: <why>" of lines that do not parse as a row (left out)
        self.duplicates: list[str] = []  # keys met again after their first row (left out)
        self.torn = path.exists() and path.stat().st_size != good_bytes  # a partial last line
        rejected: list[bytes] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = row_type.model_validate_json(line)
            except ValidationError as e:
                self.bad_lines.append(f"line {n}: {e.errors()[0]['msg']} at {e.errors()[0]['loc']}")
                rejected.append(line)
                continue
            if row.key in self.rows:
                self.duplicates.append(row.key)
                rejected.append(line)
                continue
            self.rows[row.key] = row
        self._file = None
        if writable:
            path.parent.mkdir(parents=True, exist_ok=True)
            if rejected:  # keep the file to the rows that count; what was cut out stays readable aside
                self._set_aside(rejected)
                self._rewrite()
            elif self.torn:
                with open(path, "r+b") as f:  # cut the line a killed writer left half-written
                    f.truncate(good_bytes)
            self._file = open(path, "ab")

    @property
    def problems(self) -> list[str]:
        """What reading the file left out, one phrase each (empty for a clean file)."""
        out = list(self.bad_lines)
        if self.duplicates:
            out.append(f"{len(self.duplicates)} repeated row(s) ({', '.join(map(repr, self.duplicates[:5]))})")
        if self.torn:
            out.append("a partial last line")
        return out

    def _set_aside(self, lines: list[bytes]) -> None:
        with open(self.path.with_name(self.path.name + ".rejected"), "ab") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self) -> None:
        write_bytes_atomic(self.path, b"".join(r.model_dump_json().encode() + b"\n" for r in self.rows.values()))

    def drop(self, keys: set[str]) -> None:
        """Remove the rows of ``keys`` from the file (atomically), so that they can be written again."""
        if not keys & set(self.rows):
            return
        was_open = self._file is not None
        self.close()
        self._set_aside([self.rows[k].model_dump_json().encode() for k in self.rows if k in keys])
        self.rows = {k: r for k, r in self.rows.items() if k not in keys}
        self._rewrite()
        if was_open:
            self._file = open(self.path, "ab")

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


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of a ``world_size``-process data-parallel session: the writer of one shard file per unit."""

    rank: int
    world_size: int

    PATTERN = re.compile(r"^rank(\d+)-of-(\d+)\.jsonl$")

    @property
    def file_name(self) -> str:
        return f"rank{self.rank}-of-{self.world_size}.jsonl"


class UnitRowSet(_KeyedRows[R]):
    """A unit's rows as one process sees them: every row stored for the unit (its file, then shard files
    that earlier or parallel sessions left, in a fixed order) plus the one file this process appends to."""

    def __init__(self, files: list[UnitRows[R]], writer: UnitRows[R] | None) -> None:
        self._files, self._writer = files, writer
        self.appended = 0  # rows this process wrote through it
        self.rows: dict[str, R] = {}
        for f in files:
            for row in f:
                self.rows.setdefault(row.key, row)

    def append(self, row: R) -> None:
        """Write one row durably to this process's file. A key stored anywhere in the unit is refused."""
        if self._writer is None:
            raise StoreError("this unit's rows were opened read-only")
        if row.key in self.rows:
            raise StoreError(f"{self._writer.path}: row {row.key!r} is already stored for this unit")
        self._writer.append(row)
        self.rows[row.key] = row
        self.appended += 1

    def discard(self, keys: set[str]) -> None:
        """Forget stored rows (their input changed) in every file of the unit, so they are computed again.
        Only for a unit one process writes (never while other ranks append to its shards)."""
        keys = keys & set(self.rows)
        if not keys:
            return
        for f in self._files:
            f.drop(keys)
        self.rows = {k: r for k, r in self.rows.items() if k not in keys}

    def close(self) -> None:
        for f in self._files:
            f.close()


def row_matches(unit: Unit, row: ResultRow) -> bool:
    """False when the row names another model, method or task than its unit (it came from another unit)."""
    for attr in ("model", "method", "task"):
        mine, theirs = getattr(unit, attr), getattr(row, attr, None)
        if mine is not None and isinstance(theirs, str) and theirs != mine:
            return False
    return True


@dataclass
class UnitCheck:
    """A unit's files against its expected keys: ``present`` (valid rows that count), ``missing`` keys,
    ``foreign`` rows (not expected, or naming another unit) and ``problems`` (unparseable, repeated or torn
    lines, which the next writer sets aside)."""

    present: set[str]
    missing: list[str]
    foreign: list[str]
    problems: list[str]
    mismatched: list[str] = field(default_factory=list)  # foreign rows naming another model, method or task

    @property
    def clean(self) -> bool:
        return not (self.missing or self.foreign or self.problems)


class RunFolder:
    """Read-only view of a run folder, used by reports and ``compare``."""

    CONFIG, CONFIG_SOURCE, PROVENANCE, MANIFEST = "config.json", "config.yaml", "provenance.json", "units.json"
    MARKER = ".bsight-run"  # written when bsight creates (or first writes) the folder; --fresh needs it

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def open(cls, root: Path | str) -> RunFolder:
        run = cls(root)
        if not (run.root / cls.MANIFEST).is_file():
            raise StoreError(
                f"{run.root}: not a bsight run folder (no {cls.MANIFEST}); pass the folder `bsight run` printed"
            )
        return run

    def manifest(self) -> Manifest:
        return read_json(self.root / self.MANIFEST, Manifest)

    def provenance(self):  # -> Provenance (imported lazily: provenance imports torch)
        from bsight.harness.provenance import Provenance

        return read_json(self.root / self.PROVENANCE, Provenance)

    def config_data(self) -> dict:
        try:
            return json.loads((self.root / self.CONFIG).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{self.root / self.CONFIG}: not found") from None

    def unit_path(self, unit: Unit) -> Path:
        slug = unit.id.split("/", 1)[1].replace("/", "__") if "/" in unit.id else unit.id
        return self.root / "results" / unit.job / f"{slug}.{unit.fingerprint}.jsonl"

    def shard_dir(self, unit: Unit) -> Path:
        path = self.unit_path(unit)
        return path.with_name(path.name.removesuffix(".jsonl") + ".shards")

    def shard_paths(self, unit: Unit) -> list[Path]:
        """The unit's shard files not merged yet, ordered by (world size, rank)."""
        folder = self.shard_dir(unit)
        found = []
        for path in folder.iterdir() if folder.is_dir() else ():
            m = Shard.PATTERN.match(path.name)
            if m:
                found.append(((int(m.group(2)), int(m.group(1))), path))
        return [path for _, path in sorted(found)]

    def rows(self, unit: Unit, row_type: type[R]) -> list[R]:
        """A unit's rows that count: its file in the order written, then rows of shards not merged yet
        (complete lines only; an interrupted data-parallel session's rows are shown too). Rows the unit's
        manifest record does not list (foreign, or outside its current sample selection) and rows naming
        another model, method or task than the unit are left out."""
        keys = self.counted_keys(unit)
        return [
            r for r in self._row_set(unit, row_type, None) if (keys is None or r.key in keys) and row_matches(unit, r)
        ]

    def counted_keys(self, unit: Unit) -> set[str] | None:
        """The keys the manifest lists for ``unit`` (None: the record lists none, every key counts)."""
        path = self.root / self.MANIFEST
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if getattr(self, "_keys_stamp", None) != stamp:
            self._keys_cache = {r.unit: r.keys for r in self.manifest().units}
            self._keys_stamp = stamp
        keys = self._keys_cache.get(unit)
        return None if keys is None else set(keys)

    def inputs_path(self, unit: Unit) -> Path:
        """Content hashes of the samples the unit's rows were computed from: ``{key: hash}``."""
        path = self.unit_path(unit)
        return path.with_name(path.name.removesuffix(".jsonl") + ".inputs.json")

    def read_inputs(self, unit: Unit) -> dict[str, str]:
        try:
            data = json.loads(self.inputs_path(unit).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def check_unit(self, unit: Unit, row_type: type[R], keys: Sequence[str] | None) -> UnitCheck:
        """What the unit's files hold against the keys it should hold (read only; see :class:`UnitCheck`)."""
        rows = self._row_set(unit, row_type, None)
        wanted = None if keys is None else set(keys)
        present, foreign, mismatched = set(), [], []
        for r in rows:
            if not row_matches(unit, r):
                mismatched.append(r.key)
                foreign.append(r.key)
            elif wanted is not None and r.key not in wanted:
                foreign.append(r.key)
            else:
                present.add(r.key)
        problems = [f"{f.path.name}: {p}" for f in rows._files for p in f.problems]
        missing = [] if keys is None else [k for k in keys if k not in present]
        return UnitCheck(present=present, missing=missing, foreign=foreign, problems=problems, mismatched=mismatched)

    def _row_set(self, unit: Unit, row_type: type[R], target: Path | None) -> UnitRowSet[R]:
        """Every stored row of a unit, appending to ``target`` (one of its files) when given."""
        paths = [self.unit_path(unit), *self.shard_paths(unit)]
        if target is not None and target not in paths:
            paths.append(target)
        files = [UnitRows(p, row_type, writable=p == target) for p in paths]
        return UnitRowSet(files, next((f for f in files if f.path == target), None))


class RunStore(RunFolder):
    """A run folder opened for writing by one process (an OS lock keeps a second ``bsight run`` out; the
    lock dies with the process, so a killed run never leaves a stale lock)."""

    def __init__(self, root: Path | str, fresh: bool = False) -> None:
        super().__init__(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: exists and is not a folder; pass a folder for the run (--out)")
        ours = self.is_run_folder(self.root)
        empty = not self.root.exists() or all(p.name == ".lock" for p in self.root.iterdir())
        if fresh and not ours and not empty:
            raise StoreError(
                f"{self.root}: not a bsight run folder (no {self.MARKER}), refusing --fresh, which would delete "
                "its results/, plots/, report and config files; pass an empty or new folder with --out"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.root / ".lock", "w")
        except OSError as e:
            raise StoreError(f"{self.root}: cannot write the run folder: {e.strerror or e}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"{self.root}: another bsight process is writing this run folder") from None
        try:
            if (ours or empty) and not (self.root / self.MARKER).is_file():
                (self.root / self.MARKER).write_text("bsight run folder\n", encoding="utf-8")
            if fresh:
                self.clear()
        except OSError as e:
            self._lock.close()
            raise StoreError(f"{self.root}: cannot write the run folder: {e.strerror or e}") from None

    @classmethod
    def is_run_folder(cls, root: Path) -> bool:
        """Made by bsight: it holds the marker, or (made before the marker existed) a manifest and provenance."""
        return (root / cls.MARKER).is_file() or ((root / cls.MANIFEST).is_file() and (root / cls.PROVENANCE).is_file())

    def clear(self) -> None:
        """Forget every cached result and the old report (``--fresh``)."""
        for name in ("results", "plots"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in (
            self.MANIFEST,
            self.PROVENANCE,
            self.CONFIG,
            self.CONFIG_SOURCE,
            "index.html",
            "report.md",
            "errors.log",
        ):
            (self.root / name).unlink(missing_ok=True)

    def open_rows(self, unit: Unit, row_type: type[R], shard: Shard | None = None) -> UnitRowSet[R]:
        """A unit's rows for this process to extend: appends go to the unit's file, or to ``shard``'s own
        file when the unit is split over a data-parallel session."""
        return self._row_set(
            unit, row_type, self.unit_path(unit) if shard is None else self.shard_dir(unit) / shard.file_name
        )

    def merge_shards(self, unit: Unit, row_type: type[R], order: Sequence[str] | None = None) -> int:
        """Fold the unit's shard files into its file and delete them; returns the unit's row count.

        The file ends up in canonical ``order`` (keys it does not list keep their place after it): rows are
        appended when the file already starts that way, else the file is rewritten atomically. Shards are
        deleted only once the file holds their rows durably, so a merge cut short loses nothing and the next
        one finishes it without duplicating a row. Call it while no process writes this unit.
        """
        path, shards = self.unit_path(unit), self.shard_paths(unit)
        target = UnitRows(path, row_type, writable=False)
        stored = UnitRowSet([target, *(UnitRows(p, row_type, writable=False) for p in shards)], None)
        listed = [k for k in dict.fromkeys(order or ()) if k in stored.rows]
        known = set(listed)
        wanted = listed + [k for k in stored.rows if k not in known]
        present = list(target.rows)
        if wanted[: len(present)] == present:
            if len(wanted) > len(present):
                rows = UnitRows(path, row_type, writable=True)  # cuts a torn last line first
                try:
                    for key in wanted[len(present) :]:
                        rows.append(stored.rows[key])
                finally:
                    rows.close()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, b"".join(stored.rows[k].model_dump_json().encode() + b"\n" for k in wanted))
        for p in shards:
            p.unlink()
        folder = self.shard_dir(unit)
        if folder.is_dir():
            if not any(folder.iterdir()):
                folder.rmdir()
            _fsync_dir(folder.parent)
        return len(wanted)

    def clean_unit(self, unit: Unit, row_type: type[R], drop: Sequence[str] = ()) -> None:
        """Set aside the torn, unparseable and repeated lines of the unit's existing files, and the rows of
        ``drop`` (no process may be writing the unit)."""
        for path in [self.unit_path(unit), *self.shard_paths(unit)]:
            if path.exists():
                rows = UnitRows(path, row_type, writable=True)
                rows.close()
                rows.drop(set(drop))

    def write_inputs(self, unit: Unit, inputs: dict[str, str]) -> None:
        path = self.inputs_path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, json.dumps(inputs, sort_keys=True, indent=0).encode())

    def write_manifest(self, manifest: Manifest) -> None:
        write_json_atomic(self.root / self.MANIFEST, manifest)

    def write_model(self, name: str, model: BaseModel) -> None:
        write_json_atomic(self.root / name, model)

    def log_error(self, unit_id: str, text: str) -> None:
        with open(self.root / "errors.log", "a", encoding="utf-8") as f:
            f.write(f"==== {datetime.now().isoformat(timespec='seconds')} {unit_id}\n{text}\n")

    def close(self) -> None:
        self._lock.close()


class ShardWriter(RunFolder):
    """The run folder as a rank other than 0 of a data-parallel session uses it: it appends to its own shard
    files only. Rank 0 holds the folder (a :class:`RunStore` and its lock), writes the manifest and merges."""

    def __init__(self, root: Path | str, shard: Shard) -> None:
        super().__init__(root)
        if shard.rank == 0:
            raise ValueError("rank 0 writes through the RunStore, which holds the run folder's lock")
        self.shard = shard

    def open_rows(self, unit: Unit, row_type: type[R]) -> UnitRowSet[R]:
        return self._row_set(unit, row_type, self.shard_dir(unit) / self.shard.file_name)
