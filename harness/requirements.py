"""Installed versions checked against a distribution's declared requirements.

A plugin that fails to import because a dependency has the wrong version would otherwise show only the
dependency's own ImportError. ``bsight plugins`` and every command print these lines first, so the user reads
which package is off and what is needed.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version


def unmet_requirements(distribution: str = "bsight") -> list[str]:
    """One line per requirement of ``distribution`` (its base dependencies, not its extras) that the
    installed packages do not satisfy: missing, or a version outside the declared range."""
    try:
        declared = requires(distribution) or []
    except PackageNotFoundError:
        return []
    problems = []
    for text in declared:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra, or a requirement for another platform
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{req.name} is not installed; {distribution} needs {req}")
            continue
        try:
            ok = req.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            continue
        if not ok:
            problems.append(f"{req.name} {installed} is installed; {distribution} needs {req}")
    return problems
