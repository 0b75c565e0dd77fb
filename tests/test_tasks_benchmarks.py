"""MMIU, MANTIS-eval, MUIRBench and BLINK loaded end to end from fixtures in each upstream schema: every local
layout, the hub path (``datasets.load_dataset`` stubbed with the same files), prompts as upstream builds them,
and clear errors on malformed data."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from bsight.harness.interfaces import ImagePart, Sample, TextPart
from bsight.harness.plugins import load_registry
from bsight.plugins.tasks.blink import BLINK_CONFIGS, Blink
from bsight.plugins.tasks.hf_loading import TaskDataError
from bsight.plugins.tasks.mantis import MantisEval
from bsight.plugins.tasks.mmiu import MMIU, TASKS_QUESTION_FIRST
from bsight.plugins.tasks.muirbench import MuirBench

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
_spec = importlib.util.spec_from_file_location("task_fixtures", FIXTURES / "build.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TASKS = {"mmiu": MMIU, "mantis": MantisEval, "muirbench": MuirBench, "blink": Blink}
HUB = {  # what each task must ask the hub for: (id, config, split), and the fixture file that stands in for it
    "mmiu": ("FanqingM/MMIU-Benchmark", None, "test", "mmiu/hub/all.parquet"),
    "mantis": ("TIGER-Lab/Mantis-Eval", "mantis_eval", "test", "mantis/hub/mantis_eval/test-00000-of-00001.parquet"),
    "muirbench": ("MUIRBENCH/MUIRBENCH", None, "test", "muirbench/hub/data/test-00000-of-00001.parquet"),
}
JSON = {
    "mmiu": "mmiu/github/VLMEvalKit/all.json",
    "mantis": "mantis/json/mantis_eval.json",
    "muirbench": "muirbench/json/muirbench.json",
    "blink": "blink/json/blink_val.json",
}


def signature(samples: list[Sample]) -> list[tuple]:
    """Everything a model sees and the scorer uses, with images as pixel hashes (refs differ by layout)."""
    out = []
    for s in samples:
        parts = tuple(
            p.text if isinstance(p, TextPart) else hashlib.sha256(p.image.tobytes()).hexdigest() for p in s.parts
        )
        out.append((s.id, s.subtask, s.answer, tuple(s.options), parts))
    return out


def pixels(seed: int, fmt: str = "PNG") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(fx.image_bytes(seed, fmt))).convert("RGB"))


def images_of(sample: Sample) -> list[np.ndarray]:
    return [np.asarray(p.image) for p in sample.parts if isinstance(p, ImagePart)]


def save_to_disk_copy(bench: str, tmp: Path) -> Path:
    """The hub parquet rewritten as ``save_to_disk`` folders (per config for BLINK, as DatasetDicts)."""
    out = tmp / f"{bench}_saved"
    if bench == "blink":
        for config in ("Counting", "Visual_Similarity"):
            files = sorted((FIXTURES / "blink/hub" / config).glob("*.parquet"))
            dd = datasets.DatasetDict({f.name.split("-")[0]: datasets.Dataset(pq.read_table(f)) for f in files})
            dd.save_to_disk(str(out / config))
    else:
        datasets.Dataset(pq.read_table(FIXTURES / HUB[bench][3])).save_to_disk(str(out))
        if bench == "mmiu":  # the images live beside the data, as in the hub snapshot
            for folder in ("Low-level-semantic", "Continuous-temporal"):
                shutil.copytree(FIXTURES / "mmiu/hub" / folder, out / folder)
    return out


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """``datasets.load_dataset`` answering from the fixture files; records every call."""
    calls: list[tuple] = []

    def load_dataset(
        path: str, name: str | None = None, *, split: str, revision: str | None = None
    ) -> datasets.Dataset:
        calls.append((path, name, split, revision))
        if path == "BLINK-Benchmark/BLINK":
            file = FIXTURES / "blink/hub" / str(name) / f"{split}-00000-of-00001.parquet"
        else:
            file = next((FIXTURES / f) for p, c, s, f in HUB.values() if (p, c, s) == (path, name, split))
        if not file.exists():
            raise FileNotFoundError(f"no config {name} split {split} in the fake hub")
        return datasets.Dataset(pq.read_table(file))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


# --------------------------------------------------------------------------- registry and defaults


def test_registry_provides_the_four_benchmarks() -> None:
    registry = load_registry()
    for name, cls in TASKS.items():
        assert registry.get("task", name) is cls
    assert not [f for f in registry.failures if f.plugin == "benchmark_tasks"]


def test_defaults_are_the_real_dataset_ids() -> None:
    assert (MMIU.Options().source, MMIU.Options().split) == ("FanqingM/MMIU-Benchmark", "test")
    assert (MantisEval.Options().source, MantisEval.Options().config, MantisEval.Options().split) == (
        "TIGER-Lab/Mantis-Eval",
        "mantis_eval",
        "test",
    )
    assert (MuirBench.Options().source, MuirBench.Options().split) == ("MUIRBENCH/MUIRBENCH", "test")
    assert (Blink.Options().source, Blink.Options().split) == ("BLINK-Benchmark/BLINK", "val")
    assert len(BLINK_CONFIGS) == 14
    with pytest.raises(ValidationError, match="spilt"):
        MMIU({"spilt": "test"})
    with pytest.raises(ValidationError, match="limit"):
        MMIU({"limit": 0})


# --------------------------------------------------------------------------- every layout, same samples


@pytest.mark.parametrize("bench", sorted(TASKS))
def test_every_local_layout_gives_the_same_samples(bench: str, tmp_path: Path) -> None:
    cls = TASKS[bench]
    reference = list(cls({"source": str(FIXTURES / bench / "hub")}).samples())
    assert len(reference) == len(
        [r for r in fx.ROWS[bench] if r.get("split", "val" if bench == "blink" else None) != "test"]
    )
    layouts = [str(FIXTURES / JSON[bench]), str(save_to_disk_copy(bench, tmp_path))]
    if bench in HUB:
        layouts.append(str(FIXTURES / HUB[bench][3]))  # a single parquet file
    for source in layouts:
        assert signature(list(cls({"source": source}).samples())) == signature(reference), source


@pytest.mark.parametrize("bench", sorted(HUB))
def test_hub_ids_go_to_datasets_load_dataset(bench: str, fake_hub: list[tuple]) -> None:
    hub_id, config, split, _ = HUB[bench]
    extra = {"image_root": str(FIXTURES / "mmiu/hub")} if bench == "mmiu" else {}
    task = TASKS[bench]({"revision": "abc123", **extra})
    got = signature(list(task.samples()))
    assert fake_hub == [(hub_id, config, split, "abc123")]
    assert got == signature(list(TASKS[bench]({"source": str(FIXTURES / bench / "hub")}).samples()))
    assert task.revision().startswith(f"{bench}@1 {hub_id}@abc123")


def test_blink_hub_loads_each_config_in_order(fake_hub: list[tuple]) -> None:
    with pytest.raises(TaskDataError, match=r"\[Art_Style\].*no config Art_Style"):
        list(Blink().samples())  # the fake hub has two of the 14 configs
    assert fake_hub[0] == ("BLINK-Benchmark/BLINK", "Art_Style", "val", None)
    fake_hub.clear()
    samples = list(Blink({"subtasks": ["Visual_Similarity", "Counting"]}).samples())
    assert [c[1] for c in fake_hub] == ["Counting", "Visual_Similarity"]  # BLINK's own order
    assert [s.subtask for s in samples] == ["Counting", "Counting", "Visual_Similarity"]


def test_mmiu_from_the_hub_needs_its_image_folder(fake_hub: list[tuple]) -> None:
    with pytest.raises(TaskDataError, match=r"sample '0'.*input_image_path\[0\].*image_root.*zip"):
        list(MMIU().samples())


# --------------------------------------------------------------------------- prompts as upstream builds them


def test_mmiu_prompt_order_and_images() -> None:
    samples = list(MMIU({"source": str(FIXTURES / "mmiu/hub")}).samples())
    assert [s.subtask for s in samples] == [r["task"] for r in fx.ROWS["mmiu"]]
    for r, (row, s) in enumerate(zip(fx.ROWS["mmiu"], samples)):
        assert s.id == str(r) and s.answer == row["output"]
        assert s.options == [line.split(": ", 1)[1] for line in row["options"].split("\n")]
        *images, text = s.parts
        assert all(isinstance(p, ImagePart) for p in images) and isinstance(text, TextPart)
        first, second = (
            (row["question"], row["context"])
            if row["task"] in TASKS_QUESTION_FIRST
            else (row["context"], row["question"])
        )
        assert text.text == f"{first}\n{second}\nPlease answer the option directly like A,B,C,D..."
        for k, got in enumerate(images_of(s)):  # JPEG files: compare with the same encoding decoded
            assert np.array_equal(got, pixels(fx._seed("mmiu", r, k), "JPEG"))
    assert samples[1].subtask in TASKS_QUESTION_FIRST and samples[0].subtask not in TASKS_QUESTION_FIRST


def test_mantis_prompt_interleaves_images_and_labels_options() -> None:
    samples = {s.id: s for s in MantisEval({"source": str(FIXTURES / "mantis/hub")}).samples()}
    one = samples["1"]
    kinds = [p.kind for p in one.parts]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert one.parts[-1].text == (
        "\nWhich image shows the animal that is larger in real life?\n (A) Image 1\n (B) Image 2\n"
        "Answer with the option's letter from the given choices directly."
    )
    two = samples["2"]  # 3 images, 2 tags: the untagged image goes first; blank text between them is dropped
    assert [p.kind for p in two.parts] == ["image", "image", "image", "text"]
    assert two.parts[-1].text.endswith(
        "\n (A) red\n (B) blue\n (C) green\nAnswer with the option's letter from the given choices directly."
    )
    assert (two.options, two.answer) == (["red", "blue", "green"], "B")
    for k, got in enumerate(images_of(two)):
        assert np.array_equal(got, pixels(fx._seed("mantis", 1, k)))
    short = samples["3"]
    assert (short.options, short.answer, short.subtask) == ([], "3", "Counting")
    assert short.parts[0].text.startswith(
        "Given the images, answer the following short answer vqa question:\nQ: How many dogs"
    )
    task = MantisEval({"source": str(FIXTURES / "mantis/hub")})
    assert task.score(task.extract("Two in the first, one in the second.\nFinal Answer: 3", short), short)
    assert not task.score(task.extract("Final Answer: 4", short), short)


def test_muirbench_prompt_puts_option_images_in_the_choices() -> None:
    samples = list(MuirBench({"source": str(FIXTURES / "muirbench/hub")}).samples())
    first = samples[0]
    texts = [p.text if isinstance(p, TextPart) else "<IMG>" for p in first.parts]
    assert "".join(texts) == (
        "Question: Which picture below better fits the description: a cat sleeping on a sofa?\nChoices:\n"
        "(A) <IMG>\n(B) <IMG>\n(C) <IMG>\n(D) None of the choices provided\n"
        "Hint: Please provide the correct option letter, such as A, B, C, D, directly.\nAnswer:"
    )
    assert [s.subtask for s in samples] == ["Image-Text Matching", "Visual Retrieval", "Counting"]
    assert [s.answer for s in samples] == ["C", "A", "B"]
    assert samples[1].parts[0].kind == "text" and samples[1].parts[1].kind == "image"  # "Question: " then the tag
    for r, s in enumerate(samples):
        for k, got in enumerate(images_of(s)):
            assert np.array_equal(got, pixels(fx._seed("muirbench", r, k)))
    assert samples[0].meta["counterpart_idx"] == "1"


def test_blink_prompt_images_first_then_note_and_prompt() -> None:
    samples = list(Blink({"source": str(FIXTURES / "blink/hub")}).samples())
    sim = samples[-1]
    assert [p.kind for p in sim.parts] == ["image", "image", "image", "text"]
    row = fx.ROWS["blink"][3]
    assert sim.parts[-1].text == (
        "Note: You only need to respond with A, B without providing any additional information.\n"
        + fx.blink_prompt(row["question"], row["choices"])
    )
    assert (sim.options, sim.answer) == (row["choices"], "A")
    count = samples[0]
    assert [p.kind for p in count.parts] == ["image", "text"] and count.parts[-1].text.startswith(
        "Note: You only need to respond with A, B, C, D "
    )


def test_gold_letters_score_and_wrong_letters_do_not() -> None:
    for bench, cls in TASKS.items():
        task = cls({"source": str(FIXTURES / bench / "hub")})
        for s in task.samples():
            if not s.options:
                continue
            wrong = next(letter for letter in "ABCD" if letter != s.answer)
            assert task.score(task.extract(f"The answer is ({s.answer}).", s), s)
            assert not task.score(task.extract(wrong, s), s)
            assert task.extract("no idea", s).rule == "none"


# --------------------------------------------------------------------------- selection and provenance


def test_subtasks_and_limit_keep_dataset_order() -> None:
    source = str(FIXTURES / "mmiu/hub")
    picked = list(MMIU({"source": source, "subtasks": ["forensic_detection_blink"]}).samples())
    assert [s.id for s in picked] == ["0", "2"]
    assert [s.id for s in MMIU({"source": source, "limit": 2}).samples()] == ["0", "1"]
    with pytest.raises(TaskDataError, match=r"unknown subtask.*'nope'.*available.*temporal_ordering"):
        list(MMIU({"source": source, "subtasks": ["nope"]}).samples())


def test_revision_follows_the_data(tmp_path: Path) -> None:
    source = tmp_path / "muir"
    fx.write_muirbench(source, fx.ROWS["muirbench"])
    before = MuirBench({"source": str(source)}).revision()
    assert before == MuirBench({"source": str(source)}).revision()
    assert "local:muir" in before and str(tmp_path) not in before
    rows = [dict(r) for r in fx.ROWS["muirbench"]]
    rows[2]["answer"] = "C"
    fx.write_muirbench(source, rows)
    assert MuirBench({"source": str(source)}).revision() != before


# --------------------------------------------------------------------------- clear errors


def write_rows(bench: str, tmp: Path, edit) -> Path:
    rows = [dict(r) for r in fx.ROWS[bench]]
    edit(rows)
    fx.WRITERS[bench](tmp / bench, rows)
    return tmp / bench / "hub"


def muir_parquet(tmp: Path, records: list[dict[str, Any]]) -> Path:
    out = tmp / "muir_custom" / "data"
    out.mkdir(parents=True)
    datasets.Dataset.from_list(records, features=fx.MUIRBENCH_FEATURES).to_parquet(
        str(out / "test-00000-of-00001.parquet")
    )
    return out.parent


def muir_records(**changes: Any) -> list[dict[str, Any]]:
    rows = fx._with_images("muirbench", [dict(r) for r in fx.ROWS["muirbench"]], "image_list")
    rows[1].update(changes)
    return rows


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"question": None}, r"muirbench: sample '1' \(.*row 1\): field 'question': missing"),
        ({"answer": "E"}, r"sample '1'.*field 'answer': gold answer 'E' is not one of the option letters A, B, C"),
        ({"options": []}, r"sample '1'.*field 'options': empty list"),
        (
            {"image_list": [{"bytes": b"not an image", "path": None}]},
            r"sample '1'.*field 'image_list\[0\]'.*could not be decoded",
        ),
        ({"image_list": []}, r"sample '1'.*field 'image_list': empty list"),
        (
            {"question": "<image> <image> <image> <image> four tags"},
            r"sample '1'.*field 'question/options': 6 <image> tags but only 3 images",
        ),
        ({"idx": "0"}, r"sample id '0' appears twice"),
        ({"task": None}, r"sample '1'.*field 'task': missing subtask"),
    ],
)
def test_malformed_rows_name_sample_and_field(tmp_path: Path, change: dict[str, Any], pattern: str) -> None:
    source = muir_parquet(tmp_path, muir_records(**change))
    with pytest.raises(TaskDataError, match=pattern):
        list(MuirBench({"source": str(source)}).samples())


def test_skip_mode_lists_bad_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    source = muir_parquet(tmp_path, muir_records(answer="Z"))
    task = MuirBench({"source": str(source), "on_invalid": "skip"})
    assert [s.id for s in task.samples()] == ["0", "2"]
    assert [sid for sid, _ in task.skipped] == ["1"] and "gold answer 'Z'" in task.skipped[0][1]


def test_missing_column_empty_split_and_bad_source(tmp_path: Path) -> None:
    table = pq.read_table(FIXTURES / HUB["muirbench"][3])
    (tmp_path / "nocol").mkdir()
    pq.write_table(table.drop_columns(["answer"]), tmp_path / "nocol" / "test-00000-of-00001.parquet")
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['answer'\]"):
        list(MuirBench({"source": str(tmp_path / "nocol")}).samples())
    (tmp_path / "empty").mkdir()
    pq.write_table(table.slice(0, 0), tmp_path / "empty" / "test-00000-of-00001.parquet")
    with pytest.raises(TaskDataError, match=r"empty split 'test': the split has no rows"):
        list(MuirBench({"source": str(tmp_path / "empty")}).samples())
    with pytest.raises(TaskDataError, match=r"no data files for split 'validation'; splits present: \['test'\]"):
        list(MuirBench({"source": str(FIXTURES / "muirbench/hub"), "split": "validation"}).samples())
    with pytest.raises(TaskDataError, match="neither an existing local path nor a hub dataset id"):
        list(MuirBench({"source": str(tmp_path / "absent")}).samples())


def test_mmiu_malformed_options_answer_and_missing_file(tmp_path: Path) -> None:
    def bad_options(rows: list[dict]) -> None:
        rows[1]["options"] = "1) first\n2) second"

    with pytest.raises(TaskDataError, match=r"sample '1'.*field 'options': expected lines 'A: \.\.\.'"):
        list(MMIU({"source": str(write_rows("mmiu", tmp_path / "a", bad_options))}).samples())

    def bad_answer(rows: list[dict]) -> None:
        rows[2]["output"] = "G"  # options are A-D

    with pytest.raises(TaskDataError, match=r"sample '2'.*field 'output': gold answer 'G'"):
        list(MMIU({"source": str(write_rows("mmiu", tmp_path / "b", bad_answer))}).samples())
    source = write_rows("mmiu", tmp_path / "c", lambda rows: None)
    (source / "Continuous-temporal/temporal_ordering/temporal_ordering_0_1.jpg").unlink()
    with pytest.raises(TaskDataError, match=r"sample '1'.*input_image_path\[1\].*temporal_ordering_0_1.jpg' not found"):
        list(MMIU({"source": str(source)}).samples())


def test_undecodable_image_file_in_json_copy(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "mantis/json", tmp_path / "mantis")
    (tmp_path / "mantis/images/mantis_1_2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(TaskDataError, match=r"mantis: sample '2'.*field 'images\[2\]'.*could not be decoded"):
        list(MantisEval({"source": str(tmp_path / "mantis/mantis_eval.json")}).samples())
    records = json.loads((tmp_path / "mantis/mantis_eval.json").read_text())
    records[0]["question_type"] = "essay"
    (tmp_path / "mantis/mantis_eval.json").write_text(json.dumps(records))
    with pytest.raises(TaskDataError, match=r"sample '1'.*field 'question_type': 'essay' is neither"):
        list(MantisEval({"source": str(tmp_path / "mantis/mantis_eval.json")}).samples())


def test_blink_hidden_test_answers_and_missing_first_image(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match=r"sample 'test_Counting_1'.*field 'answer'.*hidden.*use split 'val'"):
        list(Blink({"source": str(FIXTURES / "blink/hub"), "split": "test", "subtasks": ["Counting"]}).samples())
    with pytest.raises(TaskDataError, match=r"unknown or absent subtask\(s\) \['IQ_Test'\]"):
        list(Blink({"source": str(FIXTURES / "blink/hub"), "subtasks": ["IQ_Test"]}).samples())
    records = json.loads((FIXTURES / JSON["blink"]).read_text())
    records[1]["image_1"] = None
    shutil.copytree(FIXTURES / "blink/json/images", tmp_path / "images")
    (tmp_path / "blink.json").write_text(json.dumps(records))
    with pytest.raises(TaskDataError, match=r"sample 'val_Counting_2'.*field 'image_1': missing"):
        list(Blink({"source": str(tmp_path / "blink.json")}).samples())
