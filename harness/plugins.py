"""The plugin manager: loads every plugin registered under the ``bsight`` entry-point group.

Built-ins and third-party plugins take the same road. A plugin that fails to import, or whose hook raises,
is reported by name and skipped; the others load. Each registered class remembers the distribution
(package) it came from, which ``bsight plugins`` shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Literal

import pluggy

from bsight.harness import hookspecs
from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Plugin, Task
from bsight.harness.requirements import unmet_requirements

log = logging.getLogger(__name__)

Family = Literal["model", "task", "method"]
FAMILIES: dict[Family, tuple[str, type[Plugin]]] = {
    "model": ("bsight_model_adapters", ModelAdapter),
    "task": ("bsight_tasks", Task),
    "method": ("bsight_attention_methods", AttentionMethod),
}


class UnknownPluginError(KeyError):
    def __init__(self, family: str, name: str, allowed: list[str]) -> None:
        self.family, self.name, self.allowed = family, name, allowed
        super().__init__(f"unknown {family} {name!r}; allowed: {', '.join(sorted(allowed)) or '(none registered)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class PluginInfo:
    family: Family
    name: str
    cls: type[Plugin]
    plugin: str  # entry-point name of the plugin module that provided it
    package: str  # distribution that registered the entry point ("bsight" for built-ins)
    version: str


@dataclass(frozen=True)
class LoadFailure:
    plugin: str
    package: str
    error: str


@dataclass
class Registry:
    entries: dict[Family, dict[str, PluginInfo]] = field(default_factory=lambda: {f: {} for f in FAMILIES})
    failures: list[LoadFailure] = field(default_factory=list)
    # installed versions outside the declared requirements of a package that registered plugins
    unmet: list[str] = field(default_factory=list)

    def get(self, family: Family, name: str) -> type[Plugin]:
        try:
            return self.entries[family][name].cls
        except KeyError:
            raise UnknownPluginError(family, name, list(self.entries[family])) from None

    def names(self, family: Family) -> list[str]:
        return sorted(self.entries[family])

    def all(self) -> list[PluginInfo]:
        return [info for fam in FAMILIES for info in sorted(self.entries[fam].values(), key=lambda i: i.name)]


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(extra: dict[str, ModuleType | object] | None = None) -> Registry:
    """Load all entry-point plugins (plus ``extra`` objects, for tests and embedding) into a registry."""
    pm = new_manager()
    registry = Registry()
    origin: dict[str, tuple[str, str]] = {}
    checked: set[str] = set()
    for ep in sorted(entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name):
        package = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if ep.dist and package not in checked:
            checked.add(package)
            registry.unmet += unmet_requirements(package)
        try:
            pm.register(ep.load(), name=ep.name)
            origin[ep.name] = (package, version)
        except Exception as e:  # a broken plugin must not take the others down
            registry.failures.append(LoadFailure(ep.name, package, f"{type(e).__name__}: {e}"))
            log.warning("plugin %r from %s failed to load and was skipped: %s", ep.name, package, e)
    for name, obj in (extra or {}).items():
        pm.register(obj, name=name)
        origin[name] = ("(registered in-process)", "")
    for family, (hook_name, base) in FAMILIES.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            package, version = origin.get(impl.plugin_name, ("?", "?"))
            try:
                classes = impl.function()
                for cls in classes or []:
                    if not (isinstance(cls, type) and issubclass(cls, base)):
                        raise TypeError(f"{hook_name} returned {cls!r}, not a {base.__name__} subclass")
            except Exception as e:
                registry.failures.append(LoadFailure(impl.plugin_name, package, f"{type(e).__name__}: {e}"))
                log.warning(
                    "plugin %r from %s failed in %s and was skipped: %s", impl.plugin_name, package, hook_name, e
                )
                continue
            for cls in classes or []:
                prior = registry.entries[family].get(cls.name)
                if prior is not None:
                    registry.failures.append(
                        LoadFailure(
                            impl.plugin_name,
                            package,
                            f"{family} {cls.name!r} is already provided by {prior.package}; skipped",
                        )
                    )
                    continue
                registry.entries[family][cls.name] = PluginInfo(
                    family, cls.name, cls, impl.plugin_name, package, version
                )
    return registry
