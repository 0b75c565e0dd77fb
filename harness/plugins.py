"""The plugin manager: loads every plugin registered under the ``bsight`` entry-point group.

Four families: model adapters, tasks, attention methods and job types (the last keyed by their ``type``).

Built-ins and third-party plugins take the same road. A plugin that fails to import or whose hook raises
(``SystemExit`` and ``KeyboardInterrupt`` included), or that returns a class without a name, is reported by
name and skipped; the others load. A third-party plugin named like a built-in does not replace it: it is
registered as ``<package>:<name>`` only, and a config naming the plain name is refused with an error naming
both packages until it chooses one (``plugin: <package>:<name>``). Each registered class remembers the distribution
(package) it came from, which ``bsight plugins`` shows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Literal

import pluggy

from bsight.harness import hookspecs
from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Plugin, Task
from bsight.harness.jobtypes import JobType
from bsight.harness.requirements import unmet_requirements

log = logging.getLogger(__name__)

BUILTIN_PACKAGE = "bsight"  # the distribution of the built-in plugins

Family = Literal["model", "task", "method", "job"]
FAMILIES: dict[Family, tuple[str, type]] = {
    "model": ("bsight_model_adapters", ModelAdapter),
    "task": ("bsight_tasks", Task),
    "method": ("bsight_attention_methods", AttentionMethod),
    "job": ("bsight_job_types", JobType),
}


def plugin_name(cls: type) -> str:
    """The name a class is registered under: a job type's ``type``, any other plugin's ``name``."""
    return cls.type if isinstance(cls, type) and issubclass(cls, JobType) else cls.name


def plugin_description(cls: type) -> str:
    return getattr(cls, "description", "") or getattr(cls, "title", "")


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
    _job_instances: dict[str, JobType] = field(default_factory=dict, repr=False)
    # (family, name) -> packages providing it, the built-in first: a third-party plugin named like a built-in
    # is registered only as "<package>:<name>", and a config naming the plain name must choose one
    conflicts: dict[tuple[Family, str], list[str]] = field(default_factory=dict)

    def conflict(self, family: Family, name: str) -> str | None:
        """The error for a config naming ``name`` while several packages provide it (None when only one)."""
        packages = self.conflicts.get((family, name))
        if not packages:
            return None
        choices = " or ".join(f"`plugin: {p}:{name}`" for p in packages)
        return (
            f"{family} {name!r} is provided by both {packages[0]} (built-in) and {', '.join(packages[1:])}; "
            f"choose one explicitly: {choices}"
        )

    def get(self, family: Family, name: str) -> type[Plugin]:
        try:
            return self.entries[family][name].cls
        except KeyError:
            raise UnknownPluginError(family, name, list(self.entries[family])) from None

    def job_type(self, kind: str) -> JobType:
        """An instance of the registered job type ``kind`` (one per registry: job types hold no state)."""
        cached = self._job_instances.get(kind)
        if cached is None:
            cached = self._job_instances[kind] = self.get("job", kind)()
        return cached

    def job_types(self) -> list[JobType]:
        """Every registered job type, in report order (``report_order``, then type)."""
        kinds = sorted(self.entries["job"].values(), key=lambda i: (i.cls.report_order, i.name))
        return [self.job_type(info.name) for info in kinds]

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
        except (Exception, SystemExit, KeyboardInterrupt) as e:  # a broken plugin must not take the others down
            registry.failures.append(LoadFailure(ep.name, package, f"{type(e).__name__}: {e}"))
            log.warning("plugin %r from %s failed to load and was skipped: %s", ep.name, package, e)
    for name, obj in (extra or {}).items():
        pm.register(obj, name=name)
        origin[name] = ("(registered in-process)", "")
    for family, (hook_name, base) in FAMILIES.items():
        impls = getattr(pm.hook, hook_name).get_hookimpls()
        # built-ins first, then the others by name: a third-party plugin never silently takes a built-in's name
        impls = sorted(impls, key=lambda i: (origin.get(i.plugin_name, ("?",))[0] != BUILTIN_PACKAGE, i.plugin_name))
        for impl in impls:
            package, version = origin.get(impl.plugin_name, ("?", "?"))
            try:
                classes = list(impl.function() or [])
                for cls in classes:
                    if not (isinstance(cls, type) and issubclass(cls, base)):
                        raise TypeError(f"{hook_name} returned {cls!r}, not a {base.__name__} subclass")
                    if not isinstance(getattr(cls, "type" if family == "job" else "name", None), str):
                        raise TypeError(
                            f"{hook_name} returned {cls.__name__}, which has no name (a str class attribute)"
                        )
            except (Exception, SystemExit, KeyboardInterrupt) as e:
                registry.failures.append(LoadFailure(impl.plugin_name, package, f"{type(e).__name__}: {e}"))
                log.warning(
                    "plugin %r from %s failed in %s and was skipped: %s", impl.plugin_name, package, hook_name, e
                )
                continue
            for cls in classes or []:
                name = plugin_name(cls)
                prior = registry.entries[family].get(name)
                if prior is not None:
                    if prior.package == BUILTIN_PACKAGE and package != BUILTIN_PACKAGE:
                        # reachable only by an explicit choice in the config: plugin: <package>:<name>
                        qualified = f"{package}:{name}"
                        registry.entries[family].setdefault(
                            qualified, PluginInfo(family, qualified, cls, impl.plugin_name, package, version)
                        )
                        registry.entries[family].setdefault(
                            f"{BUILTIN_PACKAGE}:{name}", dataclasses.replace(prior, name=f"{BUILTIN_PACKAGE}:{name}")
                        )
                        registry.conflicts.setdefault((family, name), [prior.package]).append(package)
                        continue
                    registry.failures.append(
                        LoadFailure(
                            impl.plugin_name,
                            package,
                            f"{family} {name!r} is also provided by {prior.package} (loaded first); skipped",
                        )
                    )
                    continue
                registry.entries[family][name] = PluginInfo(family, name, cls, impl.plugin_name, package, version)
    return registry


@functools.cache
def default_registry() -> Registry:
    """The entry-point plugins, loaded once per process (reports and compare of a finished run need only the
    job types, and rendering must not reload every plugin each time)."""
    return load_registry()
