"""What a unit's rows were computed from: a content hash per task sample, so a resumed run notices changed data.

A unit's rows are keyed by sample id. When the unit runs, the runner hashes every sample the job reads
(:func:`sample_digest`: text, options, gold answer, metadata and image pixels) and keeps, next to the unit's
file, the hash each stored row was computed from. On the next run a row whose sample hashes differently is
dropped and computed again (or, where that cannot be done safely, the unit is refused with a message), and
rows of samples outside the current selection (a lowered ``limit``) are kept on disk but not counted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bsight.harness.interfaces import Sample


def _image_bytes(image: Any) -> bytes:
    """Pixels of a decoded image (PIL or array-like); its repr when it offers neither."""
    for attr in ("tobytes", "numpy"):
        fn = getattr(image, attr, None)
        if callable(fn):
            try:
                data = fn()
                data = data if isinstance(data, bytes) else data.tobytes()
                shape = getattr(image, "size", None) or getattr(image, "shape", None)
                mode = getattr(image, "mode", "")
                return f"{shape}|{mode}|".encode() + data
            except Exception:  # an exotic image type: fall back to its description
                break
    return repr(image).encode()


def sample_digest(sample: Sample) -> str:
    """Stable short hash of everything a sample feeds a model or a score with."""
    h = hashlib.sha256()
    data = sample.model_dump(mode="json", exclude={"meta"})
    h.update(json.dumps(data, sort_keys=True, default=str, separators=(",", ":")).encode())
    h.update(json.dumps(sample.meta, sort_keys=True, default=repr, separators=(",", ":")).encode())
    for part in sample.parts:
        image = getattr(part, "image", None)
        if image is not None:
            h.update(_image_bytes(image))
    return h.hexdigest()[:16]


def changed_keys(stored: dict[str, str], current: dict[str, str], present: set[str]) -> set[str]:
    """Keys whose rows are stored (``present``) but were computed from a sample that hashes differently now."""
    return {k for k in present if k in stored and k in current and stored[k] != current[k]}


def selected_keys(row_keys: list[str], stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """The row keys that belong to the current selection: every key except those of samples known from an
    earlier session (``stored``) that this session did not select (``current``)."""
    return [k for k in row_keys if k in current or k not in stored]
