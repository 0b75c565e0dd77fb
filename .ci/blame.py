"""After a red test run: name the dependency release that broke us.

CI installs the newest versions ``pyproject.toml`` allows. ``constraints.txt`` holds the exact versions of
the last green CI. This script lists every installed package whose version differs from it, then, one at a
time, puts a package back at its green version (``--no-deps``), re-runs only the tests that failed and says
which package alone turns them green. Run after ``python -m pytest`` (it reads pytest's last-failed cache).
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def pinned(constraints: Path) -> dict[str, str]:
    out = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return out


def installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}


def direct_dependencies() -> set[str]:
    from importlib.metadata import requires

    return {canonicalize_name(Requirement(r).name) for r in requires("bsight") or []}


def pip(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *args])


def failed_tests_pass() -> bool:
    cmd = [sys.executable, "-m", "pytest", "-q", "--lf", "--lfnf=none", "-x", "-p", "no:randomly"]
    return subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def main() -> int:
    constraints = Path(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt")
    green, now = pinned(constraints), installed()
    changed = sorted((n, green[n], v) for n, v in now.items() if n in green and v != green[n])
    new = sorted(n for n in now if n not in green and n != "bsight")
    print(f"\n== dependency blame against {constraints} (versions of the last green CI) ==")
    if not changed and not new:
        print("no installed version differs from the last green CI: the failure is in bsight's own code or tests")
        return 0
    for name, old, cur in changed:
        print(f"  {name}: {old} (green) -> {cur} (now)")
    for name in new:
        print(f"  {name}: not in the green set -> {now[name]} (now)")
    direct = direct_dependencies()
    order = sorted(changed, key=lambda c: (c[0] not in direct, c[0]))
    culprits = []
    for name, old, cur in order:
        if pip(f"{name}=={old}") != 0:
            print(f"  {name}: could not reinstall {old}; not tested")
            continue
        if failed_tests_pass():
            culprits.append(f"{name} {cur}")
            print(f"BROKEN BY {name} {cur}: the failed tests pass with {name} {old} and every other package as now")
        pip(f"{name}=={cur}")
    if not culprits:
        print(
            "no single package explains the failure; try `pip install -c constraints.txt -e '.[test]'` to get "
            "the green set"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
