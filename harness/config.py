"""``benchmarks.yaml``: what a run does, validated completely before any heavy work starts.

Every level forbids unknown keys. Plugin names are checked against the registry and each plugin's
``Options`` model validates its options; every job entry is validated by its job type's ``Spec`` and
cross-checked against the named models, methods and tasks. All problems are collected into one
:class:`ConfigError` whose lines each name the field path (``models.qwen.options.dtype``) and what is allowed.

Relative paths inside plugin options are taken relative to the current directory.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, StringConstraints, ValidationError

from bsight.harness.jobs import JOB_TYPES
from bsight.harness.jobs.base import NAME_PATTERN, ConfigIssue, JobSpec
from bsight.harness.plugins import Family, Registry, UnknownPluginError

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Loc = tuple[str | int, ...]


class ConfigError(ValueError):
    """An invalid config. ``problems`` are ``(field path, message)`` pairs; ``str()`` gives one line each."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source, self.problems = source, problems
        super().__init__(
            "\n".join(f"{source}: {path}: {msg}" if path else f"{source}: {msg}" for path, msg in problems)
        )


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunBlock(StrictModel):
    name: Name = Field("default", description="run folder name under output_dir; the same name resumes")
    output_dir: Path = Field(Path("runs"), description="parent folder of run folders")
    seed: int = Field(0, description="seeds torch, numpy and the bootstrap")
    description: str = ""


class PluginRef(StrictModel):
    plugin: str = Field(description="registered plugin name (see `bsight plugins`)")
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the plugin's Options model")


class BenchmarkConfig(StrictModel):
    run: RunBlock = Field(default_factory=RunBlock)
    models: dict[Name, PluginRef] = Field(default_factory=dict)
    methods: dict[Name, PluginRef] = Field(default_factory=dict)
    tasks: dict[Name, PluginRef] = Field(default_factory=dict)
    jobs: list[SerializeAsAny[JobSpec]] = Field(default_factory=list)

    def config_hash(self) -> str:
        """Hash of everything that defines the run's work (the run block's name and folder excluded)."""
        data = self.model_dump(mode="json", exclude={"run": {"name", "output_dir", "description"}})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def job(self, name: str) -> JobSpec:
        for spec in self.jobs:
            if spec.name == name:
                return spec
        raise KeyError(name)


FAMILY_OF_SECTION: dict[str, Family] = {"models": "model", "methods": "method", "tasks": "task"}


# ------------------------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [("", "config file not found")]) from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [("", f"cannot read the config: {e}")]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(path), [("", f"{where}YAML syntax error: {problem}")]) from None


def load_config(path: Path | str, registry: Registry) -> BenchmarkConfig:
    path = Path(path)
    return parse_config(read_yaml(path), registry, source=str(path))


def parse_config(data: Any, registry: Registry, source: str = "<config>") -> BenchmarkConfig:
    """Validate a parsed config fully (structure, plugin names and options, jobs) or raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source,
            [
                (
                    "",
                    f"the config must be a mapping with keys {', '.join(BenchmarkConfig.model_fields)}; got {type(data).__name__}",
                )
            ],
        )
    problems: list[tuple[str, str]] = []
    raw_jobs = data.get("jobs", [])
    if raw_jobs is None:
        raw_jobs = []
    head = {k: v for k, v in data.items() if k != "jobs"}
    try:
        config = BenchmarkConfig.model_validate(head)
    except ValidationError as e:
        problems += format_errors(e, BenchmarkConfig)
        config = None
    if not isinstance(raw_jobs, list):
        problems.append(("jobs", f"must be a list of job entries, got {type(raw_jobs).__name__}"))
        raw_jobs = []
    specs = [_validate_job(i, raw, problems) for i, raw in enumerate(raw_jobs)]
    plugins = config if config is not None else _plugin_sections(head)
    if plugins is not None:  # check plugins even when another block failed, to report everything at once
        for section, family in FAMILY_OF_SECTION.items():
            for name, ref in getattr(plugins, section).items():
                ref.options = _validate_options(registry, family, (section, name), ref, problems)
    if problems:
        raise ConfigError(source, problems)
    assert config is not None
    config.jobs = [s for s in specs if s is not None]
    _check_jobs(config, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def _plugin_sections(head: dict) -> BenchmarkConfig | None:
    """Just the models/methods/tasks blocks, when they are well-formed on their own."""
    try:
        return BenchmarkConfig.model_validate({k: head[k] for k in FAMILY_OF_SECTION if k in head})
    except ValidationError:
        return None


def _validate_options(
    registry: Registry, family: Family, loc: Loc, ref: PluginRef, problems: list[tuple[str, str]]
) -> dict[str, Any]:
    try:
        cls = registry.get(family, ref.plugin)
    except UnknownPluginError as e:
        failed = ", ".join(f.plugin for f in registry.failures)
        problems.append(
            (dotted(loc + ("plugin",)), str(e) + (f" (plugins that failed to load: {failed})" if failed else ""))
        )
        return ref.options
    try:
        return cls.Options.model_validate(ref.options).model_dump(mode="json")
    except ValidationError as e:
        problems += format_errors(e, cls.Options, prefix=loc + ("options",))
    except Exception as e:  # an Options validator that raises something else must still give one clear line
        problems.append((dotted(loc + ("options",)), f"{type(e).__name__}: {e}"))
    return ref.options


def _validate_job(index: int, raw: Any, problems: list[tuple[str, str]]) -> JobSpec | None:
    loc: Loc = ("jobs", index)
    allowed = ", ".join(sorted(JOB_TYPES))
    if not isinstance(raw, dict):
        problems.append(
            (dotted(loc), f"a job entry must be a mapping with a 'type' (one of {allowed}); got {type(raw).__name__}")
        )
        return None
    kind = raw.get("type")
    if kind is None:
        problems.append((dotted(loc + ("type",)), f"missing; allowed: {allowed}"))
        return None
    if kind not in JOB_TYPES:
        problems.append((dotted(loc + ("type",)), f"unknown job type {kind!r}; allowed: {allowed}"))
        return None
    spec_cls = JOB_TYPES[kind].Spec
    try:
        spec = spec_cls.model_validate(raw)
    except ValidationError as e:
        problems += format_errors(e, spec_cls, prefix=loc)
        return None
    if not spec.name:
        spec.name = spec.type
    return spec


def _check_jobs(config: BenchmarkConfig, problems: list[tuple[str, str]]) -> None:
    seen: dict[str, int] = {}
    for i, spec in enumerate(config.jobs):
        if spec.name in seen:
            problems.append(
                (
                    dotted(("jobs", i, "name")),
                    f"duplicate job name {spec.name!r} (also jobs[{seen[spec.name]}]); give each job a distinct name",
                )
            )
        seen.setdefault(spec.name, i)
        issues: list[ConfigIssue] = JOB_TYPES[spec.type].check(spec, config)
        problems += [(dotted(("jobs", i) + issue.path), issue.message) for issue in issues]


# -------------------------------------------------------------------------------------- error lines


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_errors(error: ValidationError, root: type[BaseModel], prefix: Loc = ()) -> list[tuple[str, str]]:
    """pydantic errors as (field path, message) with the allowed keys for unknown ones."""
    out = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            keys = allowed_keys(root, loc[:-1])
            msg = "unknown key" + (f"; allowed: {', '.join(keys)}" if keys else "")
        else:
            msg = err["msg"]
            if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], (dict, list)):
                shown = repr(err["input"])
                msg += f" (got {shown if len(shown) <= 120 else shown[:50] + '...' + shown[-50:]})"
        out.append((dotted(prefix + loc), msg))
    return out


def allowed_keys(root: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model found at ``loc`` under ``root`` (walking fields, lists and dicts)."""
    ann: Any = root
    for part in loc:
        ann = _unwrap(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(str(part))
            if field is None:
                return []
            ann = field.annotation
            continue
        args = typing.get_args(ann)
        origin = typing.get_origin(ann)
        if origin in (list, tuple, set) and args:
            ann = args[0]
        elif origin is dict and len(args) == 2:
            ann = args[1]
        else:
            return []
    ann = _unwrap(ann)
    return list(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else []


def _unwrap(ann: Any) -> Any:
    """Strip Annotated and Optional; for other unions keep the first model member."""
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(ann) if a is not type(None)]
            models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
            ann = models[0] if models else members[0]
        else:
            return ann
