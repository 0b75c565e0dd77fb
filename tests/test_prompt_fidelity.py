"""The prompt is built once (DESIGN.md section 5): checked on the *token ids the model receives*, decoded.

For every task (MUIRBench, BLINK, MANTIS, MMIU, offline_images; the benchmarks under each of their protocols) and
every built-in adapter (qwen2_vl, qwen2_5_vl and gemma3 on tiny checkpoints of the real classes; segmented_text
on its real SmolLM2 checkpoint), the first fixture sample is prepared as the accuracy job prepares it; its
decoded input ids must show each option exactly once and, with each image segment collapsed to ``<IMG>``, equal a
golden string written from the upstream prompt formats the task modules cite.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bsight.harness.adapter_kit import tiny_vlms  # noqa: E402
from bsight.harness.interfaces import ImagePart, PassagePart, Sample, TextPart  # noqa: E402
from bsight.harness.prompts_cmd import decode_ids, prompt_record  # noqa: E402
from bsight.plugins.models.gemma3 import Gemma3  # noqa: E402
from bsight.plugins.models.qwen2_vl import Qwen2VL, Qwen25VL  # noqa: E402
from bsight.plugins.tasks.blink import Blink  # noqa: E402
from bsight.plugins.tasks.mantis import MantisEval  # noqa: E402
from bsight.plugins.tasks.mmiu import MMIU  # noqa: E402
from bsight.plugins.tasks.muirbench import MuirBench  # noqa: E402
from bsight.plugins.tasks.offline_images import OfflineImages  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
SOURCES = {"muirbench": "muirbench/hub", "blink": "blink/hub", "mantis": "mantis/hub", "mmiu": "mmiu/hub"}
CLASSES = {"muirbench": MuirBench, "blink": Blink, "mantis": MantisEval, "mmiu": MMIU}

MUIR_Q = "Which picture below better fits the description: a cat sleeping on a sofa?"
MUIR_HINT = "Hint: Please provide the correct option letter, such as A, B, C, D, directly.\nAnswer:"
BLINK_Q = "How many blue floats are there?\nSelect from the following choices.\n(A) 0\n(B) 3\n(C) 2\n(D) 1"
BLINK_NOTE = "Note: You only need to respond with A, B, C, D without providing any additional information.\n"
MANTIS_Q = "Which image shows the animal that is larger in real life?"
MANTIS_END = "Answer with the option's letter from the given choices directly."
MMIU_CONTEXT = (
    "You are a judge in a photography competition, and now you are given the four images. Please examine the "
    "details and tell which one of them is most likely to be a real photograph.\nSelect from the following "
    "choices.\nA: the first image\nB: the second image\nC: the third image\nD: the fourth image\n"
)
MMIU_END = "\nWhich image is most likely to be a real photograph?\nPlease answer the option directly like A,B,C,D..."
OFFLINE_Q = (
    "Which image shows a cup of coffee on a saucer?\nA. Image 1\nB. Image 2\nC. Image 3\nD. Image 4\n"
    "Answer with the option's letter from the given choices directly."
)

# The user turn each task writes (Qwen's template renders it verbatim, each image where it stands).
QWEN_USER = {
    ("muirbench", "bsight"): f"Question: {MUIR_Q}\nChoices:\n(A) <IMG>\n(B) <IMG>\n(C) <IMG>\n"
    f"(D) None of the choices provided\n{MUIR_HINT}",
    ("muirbench", "upstream"): f"Question: {MUIR_Q}\nChoices:\n(A) <IMG>\n(B) <IMG>\n(C) <IMG>\n"
    f"(D) None of the choices provided\n{MUIR_HINT}",
    ("muirbench", "lmms-eval"): f"{MUIR_Q}\nA. <IMG>\nB. <IMG>\nC. <IMG>\nD. None of the choices provided\n"
    f"{MANTIS_END}",
    ("blink", "bsight"): f"<IMG>{BLINK_NOTE}{BLINK_Q}",
    ("blink", "lmms-eval"): f"<IMG>{BLINK_NOTE}{BLINK_Q}",
    ("blink", "upstream"): f"{BLINK_Q}<IMG>",
    ("mantis", "bsight"): f"Image 1: <IMG>\nImage 2: <IMG>\n{MANTIS_Q}\n (A) Image 1\n (B) Image 2\n{MANTIS_END}",
    ("mantis", "upstream"): f"Image 1: <IMG>\nImage 2: <IMG>\n{MANTIS_Q}\n (A) Image 1\n (B) Image 2\n{MANTIS_END}",
    ("mantis", "lmms-eval"): f"Image 1: <IMG>\nImage 2: <IMG>\n{MANTIS_Q}\n{MANTIS_END}['Image 1', 'Image 2']",
    ("mmiu", "bsight"): f"<IMG><IMG><IMG><IMG>{MMIU_CONTEXT}{MMIU_END}",
    ("mmiu", "upstream"): f"<IMG><IMG><IMG><IMG>{MMIU_CONTEXT}{MMIU_END}",
    ("offline_images", "bsight"): "Image 1: <IMG>\nImage 2: <IMG>\nImage 3: <IMG>\nImage 4: <IMG>\n" + OFFLINE_Q,
}
# Gemma 3's template trims each text item and its processor puts a blank line on both sides of each image.
GEMMA_USER = {
    "muirbench": f"Question: {MUIR_Q}\nChoices:\n(A)\n\n<IMG>\n\n(B)\n\n<IMG>\n\n(C)\n\n<IMG>\n\n"
    f"(D) None of the choices provided\n{MUIR_HINT}",
    "blink": f"\n\n<IMG>\n\n{BLINK_NOTE}{BLINK_Q}",
    "mantis": f"Image 1:\n\n<IMG>\n\nImage 2:\n\n<IMG>\n\n{MANTIS_Q}\n (A) Image 1\n (B) Image 2\n{MANTIS_END}",
    "mmiu": "\n\n<IMG>\n\n" * 4 + MMIU_CONTEXT + MMIU_END,
    "offline_images": "Image 1:\n\n<IMG>\n\nImage 2:\n\n<IMG>\n\nImage 3:\n\n<IMG>\n\nImage 4:\n\n<IMG>\n\n"
    + OFFLINE_Q,
}
FRAMES = {
    "qwen": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "gemma": ("<bos><start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"),
}
_MARKER = re.compile(r"<image \d+: \d+ tokens>")


def first_sample(task: str, protocol: str) -> Sample:
    if task == "offline_images":
        return next(iter(OfflineImages({"per_subtask": 1, "image_size": 32, "limit": 1}).samples()))
    return next(iter(CLASSES[task]({"source": str(FIXTURES / SOURCES[task]), "protocol": protocol}).samples()))


def option_labels(text: str) -> list[str]:
    """Letters that open a line as an option label: "A. ", "A: ", "(A) " (with blanks before)."""
    return re.findall(r"(?m)^[ \t]*(?:\(([A-Z])\)|([A-Z])[.:])(?=[ \n<])", text)


def assert_options_once(text: str, sample: Sample, task: str, protocol: str) -> None:
    labels = ["".join(m) for m in option_labels(text)]
    if (task, protocol) == ("mantis", "lmms-eval"):  # lmms-eval appends the options list, unlettered
        assert labels == [] and text.count(str(list(sample.meta["raw_options"]))) == 1, text
        return
    letters = [chr(ord("A") + k) for k in range(len(sample.options))]
    assert labels == letters, f"option labels {labels} in the model input, expected each of {letters} once:\n{text}"
    for option in sample.options:
        if option != "<image>":  # image options are image segments, checked by the golden string
            assert text.count(f" {option}") >= 1, (option, text)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Tiny checkpoints of the three built-in VLM adapters, loaded once per module on first use."""
    loaded = {}

    def get(kind: str):
        if kind not in loaded:
            directory = tmp_path_factory.mktemp(kind)
            if kind == "gemma3":
                path = tiny_vlms.gemma_checkpoint(directory)
                a = Gemma3({"checkpoint": str(path), "dtype": "float32", "device": "cpu"})
            else:
                path = tiny_vlms.qwen_checkpoint(directory, kind)
                a = (Qwen2VL if kind == "qwen2_vl" else Qwen25VL)({"checkpoint": str(path), "device": "cpu"})
            a.load()
            loaded[kind] = a
        return loaded[kind]

    return get


# Qwen2-VL and Qwen2.5-VL: every task under every protocol; Gemma 3: every task under the default protocol (the
# protocols differ in task text only, which the Qwen cases pin down).
CASES = [(kind, task, protocol) for kind in ("qwen2_vl", "qwen2_5_vl") for task, protocol in sorted(QWEN_USER)]
CASES += [("gemma3", task, "bsight") for task in sorted(GEMMA_USER)]


@pytest.mark.parametrize("kind, task, protocol", CASES, ids=["-".join(c) for c in CASES])
def test_decoded_model_input_has_each_option_once_and_matches_the_golden(adapters, kind, task, protocol):
    adapter = adapters(kind)
    family = "gemma" if kind == "gemma3" else "qwen"
    sample = first_sample(task, protocol)
    prepared = adapter.prepare(sample)
    ids = [int(i) for i in prepared.inputs["input_ids"][0]]
    raw = decode_ids(adapter, ids)  # every token, image tokens included
    assert "<image>" not in raw  # no literal image tag left in the text: each image is its own segment
    assert_options_once(raw, sample, task, protocol)
    record = prompt_record(adapter, sample, prepared)
    images = [p for p in sample.parts if isinstance(p, ImagePart)]
    assert len(record.image_tokens) == len(images) == len(_MARKER.findall(record.text))
    assert record.num_tokens == len(ids)
    head, tail = FRAMES[family]
    user = QWEN_USER[(task, protocol)] if family == "qwen" else GEMMA_USER[task]
    assert _MARKER.sub("<IMG>", record.text) == head + user + tail


def test_the_old_double_listing_is_caught():
    """The check above fails on the input the adapter built before the fix (options appended again)."""
    sample = first_sample("muirbench", "bsight")
    doubled = QWEN_USER[("muirbench", "bsight")] + "\nA. <IMG>\nB. <IMG>\nC. <IMG>\nD. None of the choices provided"
    with pytest.raises(AssertionError, match="option labels"):
        assert_options_once(doubled, sample, "muirbench", "bsight")


@pytest.fixture(scope="module")
def smollm():
    from bsight.plugins.models.segmented_text import SegmentedText

    a = SegmentedText({"model": "smollm2-135m"})
    a.load()
    return a


def test_segmented_text_input_has_each_option_once_and_matches_the_golden(smollm):
    sample = Sample(
        id="q1",
        task="text-choice",
        parts=[
            TextPart(text="Read the passages."),
            PassagePart(title="Doc 1", text="Cats sleep a lot."),
            PassagePart(title="Doc 2", text="Dogs bark."),
            TextPart(text="\nWhich animal barks?\nA. cat\nB. dog\nAnswer with the option's letter."),
        ],
        options=["cat", "dog"],
        answer="B",
    )
    prepared = smollm.prepare(sample)
    record = prompt_record(smollm, sample, prepared)
    assert_options_once(record.text, sample, "text-choice", "bsight")
    assert record.text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nRead the passages.«Doc 1\nCats sleep a lot.»«Doc 2\nDogs bark.»\nWhich animal barks?"
        "\nA. cat\nB. dog\nAnswer with the option's letter.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert record.num_tokens == prepared.inputs["input_ids"].shape[1]
