"""Config validation: every bad input is one line naming the field path and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import REPO, ext_config, write_yaml
from pydantic import BaseModel, ConfigDict, FilePath

from bsight.harness.config import ConfigError, allowed_keys, load_config, parse_config
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import Extraction, Task
from bsight.harness.jobs.accuracy import AccuracySpec
from bsight.harness.plugins import load_registry


def problems(data, registry) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        parse_config(data, registry, source="cfg.yaml")
    return e.value.problems


def only(data, registry) -> tuple[str, str]:
    found = problems(data, registry)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def good(tmp_path: Path) -> dict:
    return ext_config(tmp_path)


def test_valid_config_fills_plugin_defaults_and_names_jobs(good, ext_registry):
    cfg = parse_config(good, ext_registry)
    assert cfg.methods["sw"].options == {"sinks": 4, "window": 8}  # default filled in, given value kept
    assert cfg.models["tiny"].options["layers"] == 2
    assert [j.name for j in cfg.jobs] == ["accuracy"] and isinstance(cfg.jobs[0], AccuracySpec)
    assert cfg.model_dump(mode="json")["jobs"][0]["max_new_tokens"] == 4  # subclass fields survive dumping


def test_config_hash_follows_the_work_not_the_folder(good, ext_registry, tmp_path):
    base = parse_config(good, ext_registry).config_hash()
    moved = copy.deepcopy(good)
    moved["run"]["name"], moved["run"]["output_dir"] = "other", str(tmp_path / "elsewhere")
    assert parse_config(moved, ext_registry).config_hash() == base
    changed = copy.deepcopy(good)
    changed["methods"]["sw"]["options"]["window"] = 9
    assert parse_config(changed, ext_registry).config_hash() != base


def test_unknown_top_level_key_lists_allowed(good, ext_registry):
    good["modles"] = {}
    path, msg = only(good, ext_registry)
    assert path == "modles" and "unknown key" in msg and "models, methods, tasks, jobs" in msg


def test_unknown_key_in_run_block(good, ext_registry):
    good["run"]["sed"] = 1
    assert only(good, ext_registry) == ("run.sed", "unknown key; allowed: name, output_dir, seed, description")


def test_wrong_type_names_field_and_value(good, ext_registry):
    good["run"]["seed"] = "abc"
    path, msg = only(good, ext_registry)
    assert path == "run.seed" and "integer" in msg and "'abc'" in msg


def test_unknown_plugin_lists_registered_names(good, ext_registry):
    good["methods"]["sw"]["plugin"] = "sliding"
    path, msg = only(good, ext_registry)
    assert path == "methods.sw.plugin"
    assert "unknown method 'sliding'" in msg and "dense" in msg and "sink-window" in msg


def test_plugin_option_errors_use_the_plugins_own_model(good, ext_registry):
    good["methods"]["sw"]["options"] = {"windw": 3}
    assert only(good, ext_registry) == ("methods.sw.options.windw", "unknown key; allowed: sinks, window")
    good["methods"]["sw"]["options"] = {"window": 0}
    path, msg = only(good, ext_registry)
    assert path == "methods.sw.options.window" and "greater than or equal to 1" in msg


def test_bad_names_are_rejected(good, ext_registry):
    good["models"]["bad name/x"] = good["models"].pop("tiny")
    path, msg = problems(good, ext_registry)[0]
    assert path.startswith("models.bad name/x") and "pattern" in msg


def test_job_type_errors(good, ext_registry):
    assert {"accuracy", "characterize", "prompt_stats"} <= set(ext_registry.names("job"))  # built-ins and a plugin's
    good["jobs"] = [{"type": "acuracy"}, {"max_new_tokens": 3}, "accuracy"]
    found = dict(problems(good, ext_registry))
    assert found["jobs[0].type"] == f"unknown job type 'acuracy'; allowed: {', '.join(ext_registry.names('job'))}"
    assert found["jobs[1].type"] == f"missing; allowed: {', '.join(ext_registry.names('job'))}"
    assert "must be a mapping" in found["jobs[2]"]


def test_job_spec_errors_list_allowed_keys(good, ext_registry):
    good["jobs"][0]["max_tokens"] = 3
    path, msg = only(good, ext_registry)
    assert path == "jobs[0].max_tokens"
    assert msg.startswith("unknown key; allowed: type, name, models, methods, tasks, baseline, limit, max_new_tokens")


def test_job_cross_references(good, ext_registry):
    good["jobs"][0].update(models=["tiny", "big"], methods=["sw"])
    found = dict(problems(good, ext_registry))
    assert found["jobs[0].models[1]"] == "'big' is not defined under `models:`; defined: tiny"
    assert "'dense' is not among this job's methods (sw)" in found["jobs[0].baseline"]


def test_duplicate_job_names(good, ext_registry):
    good["jobs"].append(dict(good["jobs"][0]))
    path, msg = only(good, ext_registry)
    assert path == "jobs[1].name" and "duplicate job name 'accuracy'" in msg


def test_all_problems_are_reported_together(good, ext_registry):
    good["run"]["seed"] = "x"
    good["methods"]["sw"]["plugin"] = "nope"
    good["jobs"][0]["limit"] = 0
    paths = {p for p, _ in problems(good, ext_registry)}
    assert paths == {"run.seed", "methods.sw.plugin", "jobs[0].limit"}


class _FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: FilePath


class _FileTask(Task):
    name = "file-task"
    Options = _FileOptions

    def samples(self):
        return iter(())

    def extract(self, generation, sample):
        return Extraction(None, "none")


class _FilePlugin:
    @hookimpl
    def bsight_tasks(self):
        return [_FileTask]


def test_missing_file_in_plugin_options(tmp_path):
    registry = load_registry(extra={"file-plugin": _FilePlugin()})
    data = {"tasks": {"q": {"plugin": "file-task", "options": {"questions": str(tmp_path / "nope.jsonl")}}}}
    found = [p for p in problems(data, registry) if p[0] != "jobs"]  # (a config without jobs is refused as well)
    assert len(found) == 1, found
    path, msg = found[0]
    assert path == "tasks.q.options.questions" and "does not point to a file" in msg and "nope.jsonl" in msg
    (tmp_path / "nope.jsonl").write_text("{}\n")
    assert [p for p, _ in problems(data, registry)] == ["jobs"]  # the file is found; only the missing jobs remain


def test_yaml_syntax_and_duplicate_keys(tmp_path, ext_registry):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  name: a\n  seed: [1\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad, ext_registry)
    assert "YAML syntax error" in str(e.value) and "line 4" in str(e.value)
    dup = tmp_path / "dup.yaml"
    dup.write_text("run:\n  name: a\n  name: b\n")
    with pytest.raises(ConfigError) as e:
        load_config(dup, ext_registry)
    assert "duplicate key 'name'" in str(e.value) and "line 3" in str(e.value)


def test_missing_config_file(tmp_path, ext_registry):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "absent.yaml", ext_registry)
    assert str(e.value) == f"{tmp_path / 'absent.yaml'}: config file not found"


def test_top_level_must_be_a_mapping(ext_registry):
    path, msg = only([1, 2], ext_registry)
    assert path == "" and "must be a mapping" in msg and "got list" in msg


def test_round_trip_through_yaml(tmp_path, good, ext_registry):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", good), ext_registry)
    assert cfg == parse_config(good, ext_registry)


def test_shipped_default_config_is_valid():
    cfg = load_config(REPO / "benchmarks.yaml", load_registry())
    assert cfg.run.name == "default" and "dense" in cfg.methods


def test_allowed_keys_walks_nested_models():
    from bsight.harness.config import BenchmarkConfig

    assert allowed_keys(BenchmarkConfig, ("models", "x")) == ["plugin", "options"]
    assert allowed_keys(BenchmarkConfig, ("run",)) == ["name", "output_dir", "seed", "description"]
    assert allowed_keys(BenchmarkConfig, ("models", "x", "options")) == []
