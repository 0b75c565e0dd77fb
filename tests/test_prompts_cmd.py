"""``bsight prompts`` (the exact decoded model input per sample, images collapsed, with the generation settings),
and what the accuracy job stores per sample: the prompt's text hash, its length in tokens, the raw generation,
the protocol, and - for a protocol that samples - a per-sample seed that makes the generation reproducible."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from conftest import write_yaml

from bsight.harness.adapter_kit import tiny_vlms  # noqa: E402
from bsight.harness.cli import main  # noqa: E402
from bsight.harness.interfaces import Generation, Sampling  # noqa: E402
from bsight.harness.jobs.accuracy import greedy_answer, sample_seed  # noqa: E402
from bsight.harness.prompts_cmd import prompt_record  # noqa: E402
from bsight.plugins.methods.dense import Dense  # noqa: E402
from bsight.plugins.models.qwen2_vl import Qwen2VL  # noqa: E402
from bsight.plugins.tasks.mantis import MantisEval  # noqa: E402
from bsight.plugins.tasks.muirbench import MuirBench  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_vlms.qwen_checkpoint(tmp_path_factory.mktemp("qwen2_vl"), "qwen2_vl")


@pytest.fixture(scope="module")
def adapter(checkpoint) -> Qwen2VL:
    a = Qwen2VL({"checkpoint": str(checkpoint), "dtype": "float32", "device": "cpu"})
    a.load()
    return a


def config(tmp_path: Path, checkpoint: Path, protocol: str = "bsight") -> Path:
    return write_yaml(
        tmp_path / "c.yaml",
        {
            "models": {"tiny": {"plugin": "qwen2_vl", "options": {"checkpoint": str(checkpoint), "device": "cpu"}}},
            "methods": {"dense": {"plugin": "dense"}},
            "tasks": {
                "muir": {
                    "plugin": "muirbench",
                    "options": {"source": str(FIXTURES / "muirbench/hub"), "protocol": protocol},
                },
                "mantis": {
                    "plugin": "mantis",
                    "options": {"source": str(FIXTURES / "mantis/hub"), "protocol": "lmms-eval"},
                },
            },
            "jobs": [],
        },
    )


def test_prompts_prints_each_samples_exact_input_and_the_settings(tmp_path, checkpoint, capsys):
    assert (
        main(["prompts", str(config(tmp_path, checkpoint)), "--model", "tiny", "--task", "muir", "--limit", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("# task muirbench: protocol=bsight, max_new_tokens=16, decoding=greedy\n")
    assert out.count("=== sample ") == 2 and "=== sample 0 (subtask Image-Text Matching; gold 'C')" in out
    first = out.split("=== sample ")[1]
    # the exact chat-formatted input, each image one marker with its token count, options once
    assert "<|im_start|>user\nQuestion: Which picture below" in first
    assert re.search(r"\(A\) <image 1: \d+ tokens>\n\(B\) <image 2: \d+ tokens>\n\(C\) <image 3: \d+ tokens>\n", first)
    assert first.count("(A) ") == 1 and "\nA. " not in first
    assert first.rstrip("\n").endswith("Answer:<|im_end|>\n<|im_start|>assistant")


def test_prompts_says_when_a_protocol_samples(tmp_path, checkpoint, capsys):
    assert (
        main(["prompts", str(config(tmp_path, checkpoint)), "--model", "tiny", "--task", "mantis", "--limit", "1"]) == 0
    )
    head = capsys.readouterr().out.splitlines()[0]
    assert head == (
        "# task mantis: protocol=lmms-eval, max_new_tokens=64, decoding=sampling (seeded per sample), "
        "temperature=0.2, top_p=1.0"
    )


def test_prompts_bad_input_exits_2(tmp_path, checkpoint, capsys):
    path = config(tmp_path, checkpoint)
    assert main(["prompts", str(path), "--model", "nope", "--task", "muir"]) == 2
    assert "no model 'nope'; the config has: tiny" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: exit 2 with the usage line
        main(["prompts", str(path), "--model", "tiny", "--task", "muir", "--limit", "0"])
    assert e.value.code == 2 and "--limit: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["prompts", str(tmp_path / "missing.yaml"), "--model", "tiny", "--task", "muir"]) == 2


def test_rows_store_prompt_hash_length_and_raw_generation(adapter):
    task = MuirBench({"source": str(FIXTURES / "muirbench/hub")})
    sample = next(iter(task.samples()))
    prepared = adapter.prepare(sample)
    kw = dict(key=sample.id, model="tiny", method_name="dense", task_name="muir")
    row = greedy_answer(adapter, Dense(), task, sample, prepared, 3, **kw)
    record = prompt_record(adapter, sample, prepared)
    assert row.prompt_sha256 == hashlib.sha256(record.text.encode()).hexdigest() == record.sha256
    assert row.prompt_tokens == prepared.inputs["input_ids"].shape[1] == record.num_tokens
    assert row.generation == adapter.generate(prepared, Dense(), 3).text  # raw, greedy: reproducible
    assert (row.protocol, row.sampling_seed) == ("bsight", None)
    other = next(iter(MuirBench({"source": str(FIXTURES / "muirbench/hub"), "protocol": "lmms-eval"}).samples()))
    assert prompt_record(adapter, other, adapter.prepare(other)).sha256 != row.prompt_sha256


def test_a_sampling_protocol_is_seeded_per_sample(adapter):
    task = MantisEval({"source": str(FIXTURES / "mantis/hub"), "protocol": "lmms-eval"})
    sample = next(iter(task.samples()))
    prepared = adapter.prepare(sample)
    kw = dict(key=sample.id, model="tiny", method_name="dense", task_name="mantis")
    seed = sample_seed(0, sample.id)
    assert seed == sample_seed(0, sample.id) and seed != sample_seed(1, sample.id) != sample_seed(0, "other")
    hot = Sampling(temperature=5.0, seed=seed)  # a flat distribution: the seed decides every token
    a = greedy_answer(adapter, Dense(), task, sample, prepared, 12, sampling=hot, **kw)
    b = greedy_answer(adapter, Dense(), task, sample, prepared, 12, sampling=hot, **kw)
    c = greedy_answer(adapter, Dense(), task, sample, prepared, 12, sampling=Sampling(5.0, seed + 1), **kw)
    assert a.generation == b.generation and a.sampling_seed == seed and a.protocol == "lmms-eval"
    assert c.generation != a.generation  # sampling really happens


def test_an_adapter_without_sampling_is_an_error_not_greedy(adapter):
    class GreedyOnly(Qwen2VL):
        def generate(self, prepared, method, max_new_tokens) -> Generation:  # the pre-protocol signature
            return super().generate(prepared, method, max_new_tokens)

    greedy = GreedyOnly.__new__(GreedyOnly)
    greedy.__dict__.update(adapter.__dict__)
    task = MantisEval({"source": str(FIXTURES / "mantis/hub"), "protocol": "lmms-eval"})
    sample = next(iter(task.samples()))
    with pytest.raises(TypeError, match="sampling"):
        greedy_answer(
            greedy,
            Dense(),
            task,
            sample,
            greedy.prepare(sample),
            4,
            sampling=Sampling(0.2, 1),
            key=sample.id,
            model="tiny",
            method_name="dense",
            task_name="mantis",
        )
