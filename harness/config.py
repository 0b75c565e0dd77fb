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
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SerializeAsAny, StringConstraints, ValidationError

from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Task
from bsight.harness.jobtypes import NAME_PATTERN, Artifact, ConfigIssue, JobSpec, JobType
from bsight.harness.plugins import Family, Registry, UnknownPluginError
from bsight.harness.validation import non_finite, value_problems
from bsight.harness.yamlsafe import YAMLBoundError, load_yaml
from bsight.kernels.sparsity.artifacts import find_published

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
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds torch, numpy and the bootstrap (0 to 2**32 - 1)")
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

    # The registry the config was validated against: job types and plugin classes are looked up through it,
    # so nothing above the plugin manager names a built-in.
    _registry: Registry | None = PrivateAttr(default=None)

    def job_type(self, kind: str) -> JobType:
        """The registered job type of ``type: kind``."""
        assert self._registry is not None, "parse_config() sets the registry"
        return self._registry.job_type(kind)

    def method_class(self, name: str) -> type[AttentionMethod]:
        """The plugin class of the method defined as ``name`` under ``methods:``."""
        assert self._registry is not None, "parse_config() sets the registry"
        return self._registry.get("method", self.methods[name].plugin)  # type: ignore[return-value]

    def produced(self, before: int) -> dict[tuple[str, str], Artifact]:
        """Artifacts the first ``before`` jobs write, by (kind, normalized path); a later producer wins."""
        out: dict[tuple[str, str], Artifact] = {}
        for spec in self.jobs[:before]:
            for artifact in self.job_type(spec.type).produces(spec, self):
                out[artifact.key] = artifact
        return out

    def artifact_identity(self, kind: str, path: str | None, before: int) -> str | None:
        """What decides the content of a file a job reads, for its units' fingerprints: the identity its
        producer among the first ``before`` jobs declares, else the file's content hash (``absent`` when it is
        missing); None for no file."""
        if path is None:
            return None
        producer = self.produced(before).get((kind, os.path.normpath(path)))
        if producer is not None:
            return producer.identity
        file = find_published(path)
        return hashlib.sha256(file.read_bytes()).hexdigest()[:16] if file is not None else "absent"


FAMILY_OF_SECTION: dict[str, Family] = {"models": "model", "methods": "method", "tasks": "task"}


# ------------------------------------------------------------------------------------------- loading


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [("", "config file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [("", f"cannot read the config: {e}")]) from None
    try:
        return load_yaml(text)  # bounded alias expansion, duplicate keys refused
    except YAMLBoundError as e:
        raise ConfigError(str(path), [("", f"YAML refused: {e.problem}")]) from None
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
                    f"the config must be a mapping with keys {', '.join(BenchmarkConfig.model_fields)}; got "
                    f"{type(data).__name__}",
                )
            ],
        )
    problems: list[tuple[str, str]] = []
    raw_jobs = data.get("jobs", [])
    if raw_jobs is None:
        raw_jobs = []
    head = {k: v for k, v in data.items() if k != "jobs"}
    if isinstance(raw_jobs, list) and not raw_jobs:
        problems.append(
            (
                "jobs",
                "the config lists no jobs; add at least one entry under `jobs:`" if data else "the config is empty",
            )
        )
    checked = [(RunBlock, "run")] if isinstance(head.get("run"), dict) else []
    for model, key in checked:
        problems += [(dotted(where), msg) for where, msg in value_problems(model, head[key], (key,))]
    for section in FAMILY_OF_SECTION:  # plugin options: NaN and infinity are never a setting
        problems += [(dotted(where), msg) for where, msg in non_finite(head.get(section), (section,))]
    try:
        config = BenchmarkConfig.model_validate(head)
    except ValidationError as e:
        problems += format_errors(e, BenchmarkConfig)
        config = None
    if not isinstance(raw_jobs, list):
        problems.append(("jobs", f"must be a list of job entries, got {type(raw_jobs).__name__}"))
        raw_jobs = []
    specs = [_validate_job(registry, i, raw, problems) for i, raw in enumerate(raw_jobs)]
    plugins = config if config is not None else _plugin_sections(head)
    if plugins is not None:  # check plugins even when another block failed, to report everything at once
        for section, family in FAMILY_OF_SECTION.items():
            for name, ref in getattr(plugins, section).items():
                ref.options = _validate_options(registry, family, (section, name), ref, problems)
    if problems:
        raise ConfigError(source, problems)
    assert config is not None
    config._registry = registry
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
    clash = registry.conflict(family, ref.plugin)  # a third-party plugin named like a built-in: choose one
    if clash is not None:
        problems.append((dotted(loc + ("plugin",)), clash))
        return ref.options
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


def _validate_job(registry: Registry, index: int, raw: Any, problems: list[tuple[str, str]]) -> JobSpec | None:
    loc: Loc = ("jobs", index)
    kinds = registry.names("job")
    allowed = ", ".join(kinds)
    if not isinstance(raw, dict):
        problems.append(
            (dotted(loc), f"a job entry must be a mapping with a 'type' (one of {allowed}); got {type(raw).__name__}")
        )
        return None
    kind = raw.get("type")
    if kind is None:
        problems.append((dotted(loc + ("type",)), f"missing; allowed: {allowed}"))
        return None
    if kind not in kinds:
        problems.append((dotted(loc + ("type",)), f"unknown job type {kind!r}; allowed: {allowed}"))
        return None
    spec_cls = registry.job_type(kind).Spec
    strict = [(dotted(where), msg) for where, msg in value_problems(spec_cls, raw, loc)]  # true as 1, NaN, ...
    problems += strict
    try:
        spec = spec_cls.model_validate(raw)
    except ValidationError as e:
        named = {where for where, _ in strict}
        problems += [(where, msg) for where, msg in format_errors(e, spec_cls, prefix=loc) if where not in named]
        return None
    if strict:
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
        issues: list[ConfigIssue] = config.job_type(spec.type).check(spec, config)
        problems += [(dotted(("jobs", i) + issue.path), issue.message) for issue in issues]
        if not issues:
            problems += [(dotted(("jobs", i) + path), msg) for path, msg in _unproduced(config, i, spec)]


def _unproduced(config: BenchmarkConfig, index: int, spec: JobSpec) -> list[tuple[Loc, str]]:
    """Files a job reads that neither exist nor are written by an earlier job (or by itself, before)."""
    out = []
    produced = config.produced(index + 1)
    for path, wanted in config.job_type(spec.type).consumes(spec, config):
        if wanted.key in produced or find_published(wanted.path) is not None:
            continue
        writers = sorted({a.job for a in produced.values() if a.kind == wanted.kind})
        out.append(
            (
                path,
                " ".join(filter(None, [wanted.info.get("reader"), "reads"]))
                + f" {wanted.kind} {wanted.path!r}, which does not exist and which no earlier job writes"
                + (f" (jobs writing a {wanted.kind}: {', '.join(writers)})" if writers else ""),
            )
        )
    return out


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


def load_model_and_task(config_path: str, model: str, task_name: str) -> tuple[ModelAdapter, Task]:
    """The config's model ``model`` (not loaded) and task ``task_name``, options validated as ``bsight run`` does
    (the config's jobs are not needed): what one-prompt commands (``bsight prompts``, ``bsight inspect``) use."""
    from bsight.harness.plugins import load_registry

    registry = load_registry()
    data = read_yaml(Path(config_path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(config_path, [("", f"the config must be a mapping, got {type(data).__name__}")])
    try:
        config = BenchmarkConfig.model_validate({k: v for k, v in data.items() if k != "jobs"})
    except ValidationError as e:
        raise ConfigError(config_path, format_errors(e, BenchmarkConfig)) from None
    problems: list[tuple[str, str]] = []
    refs = {}
    for section, family, name in (("models", "model", model), ("tasks", "task", task_name)):
        names = getattr(config, section)
        if name not in names:
            problems.append((section, f"no {family} {name!r}; the config has: {', '.join(names) or 'none'}"))
            continue
        ref = names[name]
        ref.options = _validate_options(registry, family, (section, name), ref, problems)
        refs[family] = ref
    if problems:
        raise ConfigError(config_path, problems)
    adapter = registry.get("model", refs["model"].plugin)(refs["model"].options)
    task = registry.get("task", refs["task"].plugin)(refs["task"].options)
    return adapter, task
