"""The layered answer extractor: realistic replies, tricky ones, and random option sets."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bsight.harness.answers import extract_choice, extract_short_answer, option_letters

IMAGES = ["the first image", "the second image", "the third image", "the fourth image"]
ANIMALS = ["cat", "black cat", "dog", "horse"]
COUNTS = ["2", "3", "12", "20"]
ORDERS = ["2, 0, 1", "1, 0, 2", "0, 2, 1", "0, 1, 2"]


@pytest.mark.parametrize(
    "generation, options, answer, rule",
    [
        # layer 1: letters
        ("B", IMAGES, "B", "letter"),
        ("b", IMAGES, "B", "letter"),
        ("(C)", IMAGES, "C", "letter"),
        ("[D]", IMAGES, "D", "letter"),
        ("A.", IMAGES, "A", "letter"),
        (" C) ", IMAGES, "C", "letter"),
        ("**B**", IMAGES, "B", "letter"),
        ("`C`", IMAGES, "C", "letter"),
        ("Answer: D", IMAGES, "D", "letter"),
        ("**Answer:** (b)", IMAGES, "B", "letter"),
        ("The answer is C.", IMAGES, "C", "letter"),
        ("The correct answer is (A) the first image.", IMAGES, "A", "letter"),
        ("I choose D because it is brighter.", IMAGES, "D", "letter"),
        ("Option B", IMAGES, "B", "letter"),
        ("The answer is B because the cat is larger.", IMAGES, "B", "letter"),
        ("B. the second image", IMAGES, "B", "letter"),
        ("(D) the fourth image shows it", IMAGES, "D", "letter"),
        ("C\n\nExplanation: image A is darker than the rest.", IMAGES, "C", "letter"),
        ("A. the first image\nB. the second image\nAnswer: B", IMAGES, "B", "letter"),  # echoes options, then answers
        ("Answer: A. Wait, looking again, the final answer is C.", IMAGES, "C", "letter"),  # the last label wins
        ("Looking at all four, (C) matches best.", IMAGES, "C", "letter"),
        ("Point B is closer to the camera.", ["A", "B"], "B", "letter"),
        ("A cat is visible; I would go with D.", IMAGES, "D", "letter"),  # "A cat": an article
        # layer 2: option text
        ("The second image.", IMAGES, "B", "option_text"),
        ("a cat is visible in the third image", IMAGES, "C", "option_text"),
        ("It is a black cat.", ANIMALS, "B", "option_text"),  # the longer option shadows "cat"
        ("There are 12 apples.", COUNTS, "C", "option_text"),  # "12" is not "2"
        ("The order is [0, 2, 1].", ORDERS, "C", "option_text"),
        ("The first image is dark, so the answer is the third image.", IMAGES, "C", "option_text"),  # after the cue
        ("Image 3", ["Image 1", "Image 2", "Image 3"], "C", "option_text"),
        # layer 3: the answer is ...
        ("I think the answer is the third image, not the first image.", IMAGES, "C", "the_answer_is"),
        ("The answer is the second option.", IMAGES, "B", "the_answer_is"),
        ("final answer: option 4", IMAGES, "D", "the_answer_is"),
        ("The answer is the last choice.", IMAGES, "D", "the_answer_is"),
        # unparsed: counted, never guessed
        ("", IMAGES, None, "none"),
        ("   ", IMAGES, None, "none"),
        ("I cannot determine this from the images.", IMAGES, None, "none"),
        ("Either the first image or the second image.", IMAGES, None, "none"),
        ("The answer is a horse.", IMAGES, None, "none"),  # "a" is an article, "horse" is no option
        ("A or B, hard to say.", IMAGES, None, "none"),
        ("E", IMAGES, None, "none"),  # no fifth option
        ("The answer is unclear; a cat and a dog are both present.", ANIMALS, None, "none"),
    ],
)
def test_realistic_generations(generation: str, options: list[str], answer: str | None, rule: str) -> None:
    got = extract_choice(generation, options)
    assert (got.answer, got.rule) == (answer, rule), generation


def test_image_only_options_are_not_matched_as_text() -> None:
    options = ["<image>", "<image>", "None of the choices provided"]
    assert extract_choice("None of the choices provided.", options).answer == "C"
    assert extract_choice("the image", options).rule == "none"


def test_option_letters_bounds() -> None:
    assert option_letters(3) == "ABC"
    with pytest.raises(ValueError, match="1 to 26 options"):
        option_letters(27)
    with pytest.raises(ValueError):
        extract_choice("A", [])


words = st.text(alphabet=string.ascii_lowercase, min_size=3, max_size=9)


@settings(max_examples=150, deadline=None)
@given(
    options=st.lists(words, min_size=2, max_size=8, unique=True),
    data=st.data(),
    template=st.sampled_from(
        ["{L}", "({L})", "{L}.", "Answer: {L}", "The answer is {L}.", "The correct option is ({l})", "{L}. {text}"]
    ),
)
def test_marked_letters_are_read_for_any_options(options: list[str], data: st.DataObject, template: str) -> None:
    k = data.draw(st.integers(0, len(options) - 1))
    letter = option_letters(len(options))[k]
    generation = template.format(L=letter, l=letter.lower(), text=options[k])
    assert extract_choice(generation, options).answer == letter


@settings(max_examples=150, deadline=None)
@given(options=st.lists(words, min_size=2, max_size=8, unique=True), data=st.data())
def test_option_text_is_read_when_it_is_unique(options: list[str], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(options) - 1))
    generation = f"it shows {options[k]} clearly"
    got = extract_choice(generation, options)
    if not any(f" {o} " in f" {generation} " for i, o in enumerate(options) if i != k):  # e.g. an option "shows"
        assert (got.answer, got.rule) == (option_letters(len(options))[k], "option_text")


@settings(max_examples=150, deadline=None)
@given(generation=st.text(max_size=80), options=st.lists(words, min_size=1, max_size=6, unique=True))
def test_any_text_gives_a_valid_letter_or_none_deterministically(generation: str, options: list[str]) -> None:
    got = extract_choice(generation, options)
    assert got == extract_choice(generation, options)
    assert (got.answer is None) == (got.rule == "none")
    assert got.answer is None or got.answer in option_letters(len(options))


@pytest.mark.parametrize(
    "generation, answer, rule",
    [
        ("Let me count. There are three dogs.\nFinal Answer: 3", "3", "the_answer_is"),
        ("the answer is Blue", "Blue", "the_answer_is"),
        ("Answer: 12 apples", "12 apples", "the_answer_is"),
        ("red", "red", "raw"),
        ("Final Answer:", None, "none"),
        ("", None, "none"),
    ],
)
def test_short_answers(generation: str, answer: str | None, rule: str) -> None:
    got = extract_short_answer(generation)
    assert (got.answer, got.rule) == (answer, rule)
