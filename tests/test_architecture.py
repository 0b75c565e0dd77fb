"""The floors of the house (README, "Architecture"): each layer imports only the layers below it.

The import graph is built from the source with ``ast``, function-level imports included; imports under
``if TYPE_CHECKING:`` are annotations only (no run-time dependency) and are left out, as import-linter does
with ``exclude_type_checking_imports``. A violation fails with the offending import named.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bsight.harness.plugins import default_registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]

# Floor 3 inside harness/: the plugin interfaces, the plugin manager and the method's passes over them.
FLOOR3 = {"interfaces", "hookspecs", "plugins", "jobtypes", "attention_bridge", "characterize", "sinks",
          "requirements", "sparsity", "answers", "upstream_answers", "inspect_probe"}  # fmt: skip
FLOOR_NAMES = {
    1: "the method's data model",
    2: "kernels and the attention dispatch",
    3: "plugin interfaces and the plugin manager",
    4: "built-in plugins",
    5: "run machinery",
    6: "experiments (job types) and benchmark scripts",
}


def floor(module: str) -> int:
    """The floor of a ``bsight.*`` module."""
    parts = module.split(".")
    if parts[:3] == ["bsight", "kernels", "sparsity"]:
        return 1
    if parts[:2] == ["bsight", "kernels"]:
        return 2
    if parts[:2] == ["bsight", "plugins"]:
        return 4
    if parts[:2] == ["bsight", "harness"]:
        if len(parts) > 2 and parts[2] in ("jobs", "benchmarks"):
            return 6
        if len(parts) > 2 and parts[2] in FLOOR3:
            return 3
        return 5
    raise ValueError(f"{module} is on no floor")


def modules() -> dict[str, Path]:
    """Every bsight module of the source tree, by import name."""
    out = {}
    for name, folder in PACKAGE_DIRS.items():
        if name.count(".") != 1:
            continue
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = [p for p in rel if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported bsight module) for every run-time import in the file, function-level ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    known = set(modules())
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("bsight")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if not base.startswith("bsight"):
                continue
            for a in node.names:  # `from bsight.kernels import dispatch` imports the submodule
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if sub in known else base))
    return out


def graph() -> dict[str, list[tuple[int, str]]]:
    return {m: imports(m, p) for m, p in modules().items()}


def test_every_module_is_on_a_floor():
    for module in modules():
        assert 1 <= floor(module) <= 6


def test_each_floor_imports_only_floors_below_it():
    wrong = []
    for module, deps in graph().items():
        for line, dep in deps:
            if dep == "bsight" or dep.count(".") < 1:
                wrong.append(f"{modules()[module].relative_to(ROOT)}:{line}: imports {dep} (no floor)")
            elif floor(dep) > floor(module):
                wrong.append(
                    f"{modules()[module].relative_to(ROOT)}:{line}: {module} (floor {floor(module)}, "
                    f"{FLOOR_NAMES[floor(module)]}) imports {dep} (floor {floor(dep)}, {FLOOR_NAMES[floor(dep)]})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges = {m: {d for _, d in deps if d in modules() and d != m} for m, deps in graph().items()}
    # a package importing its own submodules (re-exports) is not a cycle of the design
    edges = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def job_modules() -> dict[str, Path]:
    """The modules that register built-in job types (entry points of the job family)."""
    registry = default_registry()
    names = {info.cls.__module__ for info in registry.entries["job"].values() if info.package == "bsight"}
    return {m: p for m, p in modules().items() if m in names}


def test_job_modules_never_import_another_job_module_or_a_plugin():
    jobs = job_modules()
    assert len(jobs) >= 8
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module} imports {dep}"
        for module, path in jobs.items()
        for line, dep in imports(module, path)
        if (dep in jobs and dep != module) or dep.startswith("bsight.plugins")
    ]
    assert not wrong, (
        "a job reads another job through a declared artifact or table, a plugin through its interface:\n"
        + "\n".join(wrong)
    )


def test_job_modules_name_no_built_in_plugin_and_none_of_its_options():
    """No ``x.plugin == "mminference"``, ``registry.get("method", "blindsight")`` or ``options.get("head_map")``
    in a job module: what a job needs from a method it asks through the method interface."""
    registry = default_registry()
    builtins = {
        i.name for fam in ("model", "task", "method") for i in registry.entries[fam].values() if i.package == "bsight"
    }
    wrong = []
    for module, path in job_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                named = [s.value for s in sides if isinstance(s, ast.Constant) and s.value in builtins]
                plugin_side = any(isinstance(s, ast.Attribute) and s.attr == "plugin" for s in sides)
                if named and plugin_side:
                    wrong.append(f"{where}: compares a plugin with {named[0]!r}")
            if isinstance(node, ast.Call):
                consts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "get" and "registry" in ast.unparse(func.value):
                    if any(c in builtins for c in consts):
                        wrong.append(f"{where}: looks up built-in plugin {consts}")
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "get"
                    and isinstance(func.value, ast.Attribute)
                    and func.value.attr == "options"
                ):
                    wrong.append(f"{where}: reads plugin option {consts}")
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "options"
            ):
                wrong.append(f"{where}: reads plugin option {ast.unparse(node.slice)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("bad", ["bsight.harness.jobs.accuracy", "bsight.plugins.methods.dense"])
def test_the_checker_catches_an_upward_import(tmp_path, bad):
    """The rule can fail: a floor-1 module importing upward is reported with its line."""
    fake = tmp_path / "bad.py"
    fake.write_text(f"def f():\n    from {bad} import x\n")
    ((line, dep),) = imports("bsight.kernels.sparsity.bad", fake)
    assert line == 2 and dep == bad and floor(dep) > floor("bsight.kernels.sparsity.bad")
