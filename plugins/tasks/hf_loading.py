"""Load one split of a benchmark through ``datasets``: from its hub id, or from a local copy of it.

A local copy may be
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``state.json`` or
  ``dataset_dict.json`` inside; a per-config folder ``<source>/<config>/`` is looked into first),
- a hub snapshot or any folder of parquet files (``hf download <id> --repo-type dataset``): files are picked
  by split name from their folder or file name (``data/test-00000-of-00001.parquet``,
  ``Art_Style/val-00000-of-00001.parquet``); a folder whose files name no split at all holds one split
  (MMIU's ``all.parquet``),
- a single ``.parquet`` file, or the upstream ``.json``/``.jsonl`` records with image paths relative to the
  file's folder (or to ``image_root``).

Rows are read raw (images undecoded), so an image that cannot be decoded is reported with the sample and the
field it belongs to instead of failing somewhere inside ``datasets``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SPLIT_NAMES = ("train", "validation", "val", "test", "dev")
_SAVE_META = {"dataset_info.json", "state.json", "dataset_dict.json"}


class TaskDataError(ValueError):
    """A benchmark's data is missing, malformed or empty. The message names the source, sample and field."""


@dataclass
class LoadedSplit:
    """One loaded (config, split), read row by row without decoding images."""

    dataset: datasets.Dataset
    config: str | None
    where: str  # names the origin in messages: "hub BLINK-Benchmark/BLINK [Counting] split 'val'"
    image_root: Path | None  # where relative image paths resolve
    files: tuple[Path, ...] = ()  # local data files (hashed for provenance); empty for hub loads
    _raw: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._raw = self.dataset.with_format("arrow")

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def column(self, name: str) -> list[Any]:
        return self._raw[name].to_pylist()

    def row(self, index: int) -> dict[str, Any]:
        return self._raw[index].to_pylist()[0]

    def digest(self) -> str:
        """Content hash of the local data files, or the ``datasets`` fingerprint of a hub load."""
        if not self.files:
            return self.dataset._fingerprint
        h = hashlib.sha256()
        for path in self.files:
            h.update(path.name.encode() + b"\0")
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]


def local_path(source: str) -> Path | None:
    """The local path ``source`` names, or None for a hub id. A path-like source that does not exist is an
    error (a hub id is ``owner/name`` and never starts with ``.``, ``/`` or ``~``)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if HUB_ID.match(source) and not source.startswith((".", "~")):
        return None
    raise TaskDataError(f"source {source!r} is neither an existing local path nor a hub dataset id (owner/name)")


def load_split(
    source: str,
    *,
    config: str | None,
    split: str,
    revision: str | None = None,
    image_root: str | None = None,
    required: tuple[str, ...] = (),
) -> LoadedSplit:
    """Load ``split`` of ``source`` (hub id or local copy), check it has rows and the ``required`` columns."""
    path = local_path(source)
    label = f" [{config}]" if config else ""
    if path is None:
        where = f"hub {source}{label} split {split!r}"
        try:
            ds = datasets.load_dataset(source, config, split=split, revision=revision)
        except Exception as e:  # network, unknown config/split, auth: all end here
            raise TaskDataError(
                f"could not load {where} from the Hugging Face hub ({type(e).__name__}: {e}); "
                f"offline, pass a local copy of the dataset as `source`"
            ) from e
        loaded = LoadedSplit(ds, config, where, Path(image_root).expanduser() if image_root else None)
    else:
        loaded = _load_local(path, config, split, image_root)
    if len(loaded) == 0:
        raise TaskDataError(f"{loaded.where}: the split has no rows")
    missing = [c for c in required if c not in loaded.columns]
    if missing:
        raise TaskDataError(f"{loaded.where}: missing column(s) {missing}; columns present: {loaded.columns}")
    return loaded


def _load_local(path: Path, config: str | None, split: str, image_root: str | None) -> LoadedSplit:
    root = Path(image_root).expanduser() if image_root else (path if path.is_dir() else path.parent)
    where = f"{path.name}{f' [{config}]' if config else ''} split {split!r}"
    if path.is_file():
        return LoadedSplit(_read_files([path]), config, f"{path.name}", root, (path,))
    base = path / config if config and (path / config).is_dir() else path
    if (base / "dataset_dict.json").exists():
        dd = datasets.load_from_disk(str(base))
        if split not in dd:
            raise TaskDataError(f"{where}: no split {split!r}; splits present: {sorted(dd)}")
        return LoadedSplit(dd[split], config, where, root, tuple(sorted((base / split).glob("*.arrow"))))
    if (base / "state.json").exists():
        return LoadedSplit(datasets.load_from_disk(str(base)), config, where, root, tuple(sorted(base.glob("*.arrow"))))
    files = _data_files(base, "*.parquet") or _data_files(base, "*.json") + _data_files(base, "*.jsonl")
    if not files:
        raise TaskDataError(
            f"{where}: no data under {base.name!r}: expected .parquet, .json or .jsonl files or a folder "
            "written by save_to_disk"
        )
    chosen = _files_for_split(files, base, split, where)
    return LoadedSplit(_read_files(chosen), config, where, root, tuple(chosen))


def _data_files(base: Path, pattern: str) -> list[Path]:
    return sorted(
        p
        for p in base.rglob(pattern)
        if p.name not in _SAVE_META and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )


def _split_of(path: Path, base: Path, names: tuple[str, ...]) -> str | None:
    tokens = [*path.relative_to(base).parts[:-1], path.stem]
    for token in tokens:
        for name in names:
            if token == name or re.match(rf"{re.escape(name)}[-_.]", token):
                return name
    return None


def _files_for_split(files: list[Path], base: Path, split: str, where: str) -> list[Path]:
    names = (split, *(s for s in SPLIT_NAMES if s != split))
    by_split = {f: _split_of(f, base, names) for f in files}
    chosen = [f for f, s in by_split.items() if s == split]
    if chosen:
        return chosen
    present = sorted({s for s in by_split.values() if s})
    if not present:
        return files  # no file names a split: the folder holds a single split
    raise TaskDataError(f"{where}: no data files for split {split!r}; splits present: {present}")


def _read_files(files: list[Path]) -> datasets.Dataset:
    tables = []
    for f in files:
        try:
            if f.suffix == ".parquet":
                tables.append(pq.read_table(f))
            else:
                tables.append(pa.Table.from_pylist(_json_records(f)))
        except TaskDataError:
            raise
        except Exception as e:
            raise TaskDataError(f"{f.name}: could not be read ({type(e).__name__}: {e})") from e
    try:
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    except pa.ArrowInvalid as e:
        raise TaskDataError(f"data files {[f.name for f in files]} do not share one schema: {e}") from e
    return datasets.Dataset(table)


def _json_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise TaskDataError(f"{path.name}: expected a list of records (JSON objects)")
    return records


def decode_image(value: Any, *, root: Path | None, what: str, missing_root_hint: str = "") -> tuple[Image.Image, str]:
    """Decode one image field value (datasets' ``{"bytes", "path"}``, a path string, raw bytes or a PIL image)
    to RGB. Returns the image and a reference naming it (its path, or "" when it only has bytes)."""
    path: str | None = None
    data: bytes | None = None
    if value is None:
        raise TaskDataError(f"{what}: the image is missing (null)")
    if isinstance(value, Image.Image):
        image = value
    else:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        elif isinstance(value, str):
            path = value
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        else:
            raise TaskDataError(
                f"{what}: expected an image (bytes, path or {{'bytes', 'path'}}), got {type(value).__name__}"
            )
        if data is None and not path:
            raise TaskDataError(f"{what}: the image has neither bytes nor a path")
        try:
            if data is not None:
                image = Image.open(io.BytesIO(data))
            else:
                file = Path(path)
                if not file.is_absolute():
                    if root is None:
                        raise TaskDataError(
                            f"{what}: relative image path {path!r} needs `image_root`. {missing_root_hint}".strip()
                        )
                    file = root / file
                if not file.is_file():
                    raise TaskDataError(
                        f"{what}: image file {path!r} not found under the image root. {missing_root_hint}".strip()
                    )
                image = Image.open(file)
            image.load()
        except TaskDataError:
            raise
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError ...
            raise TaskDataError(f"{what}: the image could not be decoded ({type(e).__name__}: {e})") from e
    return image.convert("RGB"), path or ""
