"""Named scoring protocols (DESIGN.md section 5): each protocol's extraction on cases taken from the upstream
code (the examples its docstrings give, and replies that separate the protocols), its generation settings, the
prompt each protocol builds on the fixture samples, and the config errors for a protocol a task does not have.
Bad input: options that cannot be lettered name the sample."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_yaml
from pydantic import ValidationError

from bsight.harness.cli import main
from bsight.harness.config import ConfigError, parse_config
from bsight.harness.interfaces import Extraction, ImagePart, Sample, TextPart
from bsight.harness.plugins import load_registry
from bsight.harness.upstream_answers import (
    blink_analyze_answer,
    lmms_eval_dotted_letter_or_raw,
    lmms_eval_first_letter,
    mantis_prediction,
    mmiu_choice,
    mmmu_choice,
)
from bsight.plugins.tasks.blink import DISCLAIMER, Blink
from bsight.plugins.tasks.hf_loading import TaskDataError
from bsight.plugins.tasks.mantis import MantisEval
from bsight.plugins.tasks.mmiu import MMIU
from bsight.plugins.tasks.muirbench import MuirBench
from bsight.plugins.tasks.offline_images import OfflineImages

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
_spec = importlib.util.spec_from_file_location("task_fixtures", FIXTURES / "build.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

OPTS4 = ["a red car", "a blue car", "a green car", "a black car"]


# ------------------------------------------------------------------------------------------- extraction rules


@pytest.mark.parametrize(
    "reply, letter",
    [  # lmms_eval/tasks/blink/utils.py, _extract_answer_letter's docstring examples
        ("A answer1", "A"),
        ("A) answer2", "A"),
        ("(B) answer", "B"),
        ("C", "C"),
        ("(C)", "C"),
        ("A.", "A"),
        ("b", "B"),
        # the first letter is the answer even when it starts a sentence: lmms-eval scores this reply wrong
        ("The answer is B", "T"),
        ("42", None),
        ("", None),
    ],
)
def test_lmms_eval_blink_first_letter(reply, letter):
    assert lmms_eval_first_letter(reply).answer == letter


def test_lmms_eval_muirbench_dotted_letter_else_raw_reply():
    assert lmms_eval_dotted_letter_or_raw("  B. the cat") == Extraction("B", "dotted_letter")
    assert lmms_eval_dotted_letter_or_raw("B") == Extraction("B", "raw")  # equals the gold letter: scored right
    raw = lmms_eval_dotted_letter_or_raw("The answer is B.")
    assert raw.rule == "raw" and raw.answer == "The answer is B."  # never equals a letter: scored wrong
    assert lmms_eval_dotted_letter_or_raw("b. cat").rule == "raw"  # the regex wants a capital
    assert lmms_eval_dotted_letter_or_raw("  ").answer is None


def test_muirbench_scores_the_lmms_eval_raw_reply_by_equality():
    task = MuirBench({"source": str(FIXTURES / "muirbench/hub"), "protocol": "lmms-eval"})
    sample = next(iter(task.samples()))  # gold C
    assert task.score(task.extract("C", sample), sample)
    assert task.score(task.extract("C. the third image", sample), sample)
    assert not task.score(task.extract("The answer is C", sample), sample)
    bsight = MuirBench({"source": str(FIXTURES / "muirbench/hub")})
    assert bsight.score(bsight.extract("The answer is C", sample), sample)  # the lenient extractor reads it


@pytest.mark.parametrize(
    "reply, letter, rule",
    [  # mantis/benchmark/eval.py: parse_answer, get_option, get_prediction
        ("B", "B", "option_letter"),
        ("Final Answer: (C)", "C", "option_letter"),
        ("the answer is d", "D", "option_letter"),
        ("Answer: A", "A", "option_letter"),
        ("(B) a blue car", "B", "option_letter"),
        # first alphabetic character "I", outside the 4 options: the reply must equal an option's text
        ("I would say a blue car", None, "none"),
        ("a blue car", "A", "option_letter"),  # first alphabetic character "a": option A, as upstream reads it
        ("123", None, "none"),
    ],
)
def test_mantis_prediction(reply, letter, rule):
    e = mantis_prediction(reply, OPTS4)
    assert (e.answer, e.rule) == (letter, rule)


def test_mantis_prediction_falls_back_to_the_exact_option_text():
    options = ["(A) Image 1", "(B) Image 2"]  # labelled options, as some Mantis rows are
    assert mantis_prediction("Image 2", options) == Extraction("B", "option_text_exact")
    assert mantis_prediction("Image 2.", options).answer is None  # not equal: upstream scores it wrong
    assert mantis_prediction("Zebra", options).answer is None  # "Z" is no option and no text matches


@pytest.mark.parametrize(
    "reply, letter",
    [  # muirbench/MuirBench eval/utils/postprocess.py (MMMU's parse_multi_choice_response)
        ("(B)", "B"),
        ("B.", "B"),
        ("I think B is right", "B"),
        ("(A) is wrong, (C) is right", "C"),  # several bracketed: the last one
        ("The picture that fits best is the one with a green car in it", "C"),  # > 5 words: option text
        ("a green car", None),  # 3 words: no option-text step; upstream draws a random letter, here unparsed
        ("nothing fits", None),
    ],
)
def test_muirbench_upstream_mmmu_parser_without_random_fallback(reply, letter):
    assert mmmu_choice(reply, OPTS4).answer == letter


def test_blink_upstream_analyze_answer_and_its_judge_substitute():
    assert blink_analyze_answer("B", OPTS4) == Extraction("B", "bare_letter")
    assert blink_analyze_answer("(D)", OPTS4) == Extraction("D", "bracketed_letter")
    assert blink_analyze_answer("I pick (C) because it is green", OPTS4) == Extraction("C", "bracketed_token")
    # two bracketed options in the reply, one in its last paragraph: that one
    assert blink_analyze_answer("(A) or (B)?\n\nSo (B) it is", OPTS4).answer == "B"
    # no bracketed option: upstream asks GPT-3.5; the layered extractor stands in, named as such
    e = blink_analyze_answer("The answer is a green car.", OPTS4)
    assert e == Extraction("C", "judge_substitute:option_text")
    assert blink_analyze_answer("I cannot tell.", OPTS4).answer is None


def test_mmiu_upstream_letter_or_judge_substitute():
    assert mmiu_choice("(b).", OPTS4) == Extraction("B", "letter")
    assert mmiu_choice("F", OPTS4) == Extraction("F", "letter")  # a..n is taken as is: scored wrong
    assert mmiu_choice("The answer is C", OPTS4) == Extraction("C", "judge_substitute:letter")
    assert mmiu_choice("   ", OPTS4).answer is None


# --------------------------------------------------------------------------------- generation settings


def test_each_protocol_names_its_generation_settings():
    muir = {p: MuirBench({"protocol": p}).decoding() for p in ("upstream", "lmms-eval", "bsight")}
    assert {d.max_new_tokens for d in muir.values()} == {16} and all(d.greedy for d in muir.values())
    assert Blink({"protocol": "lmms-eval"}).decoding().max_new_tokens == 1024
    assert Blink({"protocol": "upstream"}).decoding().greedy
    lmms_mantis = MantisEval({"protocol": "lmms-eval"}).decoding()
    assert (lmms_mantis.max_new_tokens, lmms_mantis.temperature, lmms_mantis.greedy) == (64, 0.2, False)
    assert MantisEval({"protocol": "upstream"}).decoding().max_new_tokens == 1024
    mmiu = MMIU({"protocol": "upstream"}).decoding()
    assert (mmiu.max_new_tokens, mmiu.temperature) == (1024, 0.7)
    assert MMIU().decoding().greedy and MMIU().protocol == "bsight"
    assert MantisEval({"protocol": "lmms-eval"}).default_max_new_tokens == 64  # what the tau sweep reads
    # BLINK's official score is the mean over its tasks; lmms-eval's group score weighs them by size
    assert Blink().headline == Blink({"protocol": "upstream"}).headline == "macro"
    assert Blink({"protocol": "lmms-eval"}).headline == "micro"


# ----------------------------------------------------------------------------------------- prompts per protocol


def _text(sample: Sample) -> str:
    return "".join(p.text if isinstance(p, TextPart) else "<IMG>" for p in sample.parts)


def test_muirbench_lmms_eval_prompt():
    s = next(iter(MuirBench({"source": str(FIXTURES / "muirbench/hub"), "protocol": "lmms-eval"}).samples()))
    assert _text(s) == (
        "Which picture below better fits the description: a cat sleeping on a sofa?\n"
        "A. <IMG>\nB. <IMG>\nC. <IMG>\nD. None of the choices provided\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_blink_upstream_prompt_is_text_first_with_the_disclaimer_where_upstream_adds_it(tmp_path):
    samples = list(Blink({"source": str(FIXTURES / "blink/hub"), "protocol": "upstream"}).samples())
    first = samples[0]
    assert isinstance(first.parts[0], TextPart) and all(isinstance(p, ImagePart) for p in first.parts[1:])
    row = fx.ROWS["blink"][0]
    assert first.parts[0].text == fx.blink_prompt(row["question"], row["choices"])  # no "Note:" pre-prompt
    assert not any(p.text.startswith(DISCLAIMER) for s in samples for p in s.parts if isinstance(p, TextPart))
    # Art_Style is one of the tasks upstream prefixes with its disclaimer
    art = tmp_path / "Art_Style"
    art.mkdir()
    table = pq.read_table(FIXTURES / "blink/hub/Counting/val-00000-of-00001.parquet")
    pq.write_table(table, art / "val-00000-of-00001.parquet")
    s = next(iter(Blink({"source": str(tmp_path), "protocol": "upstream"}).samples()))
    assert s.subtask == "Art_Style" and s.parts[0].text.startswith(DISCLAIMER)


def test_mantis_lmms_eval_prompt_appends_the_options_list():
    samples = {s.id: s for s in MantisEval({"source": str(FIXTURES / "mantis/hub"), "protocol": "lmms-eval"}).samples()}
    assert _text(samples["1"]).endswith(
        "Which image shows the animal that is larger in real life?\n"
        "Answer with the option's letter from the given choices directly.['Image 1', 'Image 2']"
    )
    assert samples["1"].meta["raw_options"] == ["Image 1", "Image 2"]


# --------------------------------------------------------------------------------------- bad config, bad input


def _config(task_plugin: str, protocol: str) -> dict:
    return {
        "models": {},
        "methods": {},
        "tasks": {"t": {"plugin": task_plugin, "options": {"protocol": protocol}}},
        "jobs": [],
    }


@pytest.mark.parametrize(
    "plugin, protocol, has",
    [
        ("mmiu", "lmms-eval", "upstream, bsight"),
        ("offline_images", "upstream", "bsight"),
        ("multidoc", "lmms-eval", "bsight"),
        ("blink", "vlmevalkit", "upstream, lmms-eval, bsight"),
    ],
)
def test_a_protocol_the_task_does_not_have_is_a_config_error(plugin, protocol, has):
    with pytest.raises(ConfigError) as e:
        parse_config(_config(plugin, protocol), load_registry())
    text = str(e.value)
    assert "tasks.t.options.protocol" in text
    assert f"task {plugin!r} has no scoring protocol {protocol!r}; its protocols: {has}" in text


def test_cli_exits_2_on_an_unsupported_protocol(tmp_path, capsys):
    config = write_yaml(tmp_path / "c.yaml", _config("mmiu", "lmms-eval"))
    assert main(["prompts", str(config), "--model", "m", "--task", "t"]) == 2
    err = capsys.readouterr().err
    assert "task 'mmiu' has no scoring protocol 'lmms-eval'; its protocols: upstream, bsight" in err


def test_options_that_cannot_be_lettered_name_the_sample():
    parts = [TextPart(text="Which?")]
    with pytest.raises(ValidationError, match=r"sample 'q7': 27 options cannot be lettered"):
        Sample(id="q7", task="t", parts=parts, options=[f"o{k}" for k in range(27)], answer="A")
    with pytest.raises(ValidationError, match=r"sample 'q8': option B is empty"):
        Sample(id="q8", task="t", parts=parts, options=["cat", " ", "dog"], answer="A")
    Sample(id="q9", task="t", parts=parts, options=[f"o{k}" for k in range(26)], answer="Z")


def _muir_copy(tmp: Path, options: list[str]) -> Path:
    table = pq.read_table(FIXTURES / "muirbench/hub/data/test-00000-of-00001.parquet")
    rows = table.to_pylist()[:1]
    rows[0]["options"] = options
    out = tmp / "muir.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out)
    return out


@pytest.mark.parametrize(
    "options, problem",
    [
        (["<image>", "", "<image>", "<image>"], "option B is empty"),
        ([f"choice {k}" for k in range(27)], "27 options; a question needs 1 to 26"),
    ],
)
def test_a_benchmark_row_whose_options_cannot_be_lettered_names_the_sample(tmp_path, options, problem):
    source = _muir_copy(tmp_path, options)
    with pytest.raises(TaskDataError, match=rf"muirbench: sample '0' .*field 'options': {problem}"):
        list(MuirBench({"source": str(source)}).samples())


def test_offline_images_prompt_writes_each_option_once():
    for s in OfflineImages({"per_subtask": 1, "image_size": 32}).samples():
        text = _text(s)
        for k, option in enumerate(s.options):
            assert text.count(f"\n{chr(ord('A') + k)}. {option}\n") == 1, (s.id, option)


@pytest.mark.parametrize("cls", [MuirBench, Blink, MantisEval, MMIU])
def test_every_protocol_a_task_offers_has_generation_settings(cls):
    assert set(cls.Options.protocols) == set(cls.decodings) and "bsight" in cls.Options.protocols
    assert cls.Options().protocol == "bsight"  # the default
    for protocol in cls.Options.protocols:
        task = cls({"protocol": protocol})
        assert task.protocol == protocol and task.decoding() is cls.decodings[protocol]
