"""Reading the JSON artifacts users hand to bsight (head maps, characterization results, pattern configs), and the
tool version every artifact records."""

from __future__ import annotations

import importlib.util
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


PUBLISHED_PACKAGE = "bsight.reports"  # package data: the published results and head maps


def find_published(path: str) -> Traversable | None:
    """A published result file: ``path`` as given (absolute or relative to the working directory), else, for
    ``reports/...``, the same file inside the installed ``bsight.reports`` package (package data), so the
    default run renders published results outside a source checkout too. None when neither exists."""
    given = Path(path)
    if given.is_file():
        return given
    parts = given.parts
    if not given.is_absolute() and len(parts) > 1 and parts[0] == "reports":
        # bsight.reports is a namespace package (no __init__.py, see pyproject): look in its folders directly,
        # since importlib.resources handles namespace packages unevenly across Python versions
        spec = importlib.util.find_spec(PUBLISHED_PACKAGE)
        for folder in spec.submodule_search_locations or [] if spec else []:
            packaged = Path(folder).joinpath(*parts[1:])
            if packaged.is_file():
                return packaged
    return None
