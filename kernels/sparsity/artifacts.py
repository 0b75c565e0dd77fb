"""Reading the JSON artifacts users hand to bsight (head maps, characterization results, pattern configs), and the
tool version every artifact records."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_json_model(model: type[M], path: Path | Traversable, what: str, shown: str | Path | None = None) -> M:
    """``model`` validated from the JSON file ``path``. A missing file is a FileNotFoundError and a malformed
    one a ValueError, both naming ``what`` the file should be and the file as the user gave it (``shown``)."""
    shown = path if shown is None else shown
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {shown}")
    try:
        return model.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as e:
        raise ValueError(f"invalid {what} {shown}: {e}") from None


def tool_version() -> str:
    """The installed bsight version, stamped into every artifact so a reader knows which code wrote it."""
    try:
        return version("bsight")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+unknown"
