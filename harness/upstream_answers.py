"""Answer extraction of the named scoring protocols (``upstream``, ``lmms-eval``), deterministic. Floor 3: it
imports only :mod:`bsight.harness.interfaces` and :mod:`bsight.harness.answers` (the ``bsight`` protocol's
layered extractor), so the task plugins can use it.

Each rule restates what the cited upstream code does, in our own code; every :class:`Extraction` names the rule
that matched, and ``None`` means unparsed (never a random letter).

- :func:`lmms_eval_first_letter` - lmms-eval's BLINK task (EvolvingLMMs-Lab/lmms-eval
  ``lmms_eval/tasks/blink/utils.py``, ``_extract_answer_letter``): the reply, stripped, may open with "(" and
  blanks; the next character must be a letter (any case), which is the answer, upper-cased, whether or not it
  names an option. Anything else is unparsed.
- :func:`lmms_eval_dotted_letter_or_raw` - lmms-eval's MUIRBench task (``lmms_eval/tasks/muirbench/utils.py``,
  ``MultiChoiceRegexFilter``): a capital letter followed by "." at the start of the reply (``^\\s*([A-Z])\\.``)
  is the answer; otherwise the raw reply is, and ``muir_aggregation`` scores it correct only if it equals the
  gold letter ignoring case and surrounding blanks.
- :func:`mantis_prediction` - TIGER-AI-Lab/Mantis ``mantis/benchmark/eval.py`` (``parse_answer``,
  ``get_option``, ``get_prediction``; lmms-eval's ``lmms_eval/tasks/mantis/utils.py`` has the same steps): the text
  after the first of "final answer:", "the answer is", "answer:"; its letter ("Answer: X", else its first
  alphabetic character, upper-cased) if that letter is among the options; else the whole reply must equal the
  option text (label "X.", "X:" or "(X)" removed) to count, so here it is read as the option whose text it
  equals, and is unparsed otherwise.
- :func:`mmmu_choice` - muirbench/MuirBench ``eval/utils/postprocess.py`` (``parse_multi_choice_response``, taken
  from MMMU): trailing punctuation stripped; "(X)" candidates, else " X " candidates, else (replies longer than 5
  words) option texts found in the reply; several candidates: the one that occurs last. Upstream draws a
  *random* letter when nothing matches; here that is unparsed (rule ``none``), the closest deterministic rule.
- :func:`blink_analyze_answer` - zeyofu/BLINK_Benchmark ``eval/test_benchmark.py`` (``analyze_answer``): the reply
  is exactly "A".."E" or "(A)".."(E)"; or exactly one "(X)" token of the options occurs among the reply's
  blank-separated words (the last paragraph's words win when they hold exactly one). Otherwise upstream asks
  GPT-3.5-turbo to match the reply to an option (``eval/multiple_choice.py``); here the closest deterministic
  rule does that step: the ``bsight`` layered extractor, its rule recorded as ``judge_substitute:<rule>``.
- :func:`mmiu_choice` - OpenGVLab/MMIU ``evaluate.py`` (``process_data``): the reply, with leading and trailing
  ".", ",", "(" and ")" removed, is one letter a..n (any case): that letter. Otherwise upstream asks GPT-4o-mini
  for the most similar option letter (or Z); here the ``bsight`` layered extractor does that step, named
  ``judge_substitute:<rule>``. Upstream then scores with a substring test (``evaluate_correct.py``: the choice,
  lower-cased, ``in`` the gold letter), which for one letter is equality.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bsight.harness.answers import NONE, extract_choice, option_letters
from bsight.harness.interfaces import Extraction

JUDGE_SUBSTITUTE = "judge_substitute"  # rule prefix: an upstream LLM-judge step done by the bsight extractor

_OPEN_LETTER = re.compile(r"[(\s]*([A-Za-z])")
_DOTTED = re.compile(r"^\s*([A-Z])\.")
_ANSWER_X = re.compile(r"Answer: [A-Z]")
_MANTIS_CUES = ("final answer:", "the answer is", "answer:")
_MMIU_EDGES = re.compile(r"^[.,()]+|[.,()]+$")


def lmms_eval_first_letter(generation: str) -> Extraction:
    m = _OPEN_LETTER.match(generation.strip())
    return Extraction(m.group(1).upper(), "first_letter") if m else NONE


def lmms_eval_dotted_letter_or_raw(generation: str) -> Extraction:
    m = _DOTTED.match(generation)
    if m:
        return Extraction(m.group(1), "dotted_letter")
    return Extraction(generation, "raw") if generation.strip() else NONE


def mantis_parse_answer(generation: str) -> str:
    """The text after the first answer cue found (checked in Mantis' order), else the whole reply."""
    lowered = generation.lower()
    for cue in _MANTIS_CUES:
        if cue in lowered:
            return generation[lowered.index(cue) + len(cue) :].strip()
    return generation


def _mantis_label_free(option: str, letter: str) -> str:
    for label in (f"{letter}.", f"{letter}:", f"({letter})"):
        if option.startswith(label):
            return option[len(label) :].strip()
    return option.strip()


def mantis_prediction(generation: str, raw_options: Sequence[str]) -> Extraction:
    """Mantis' multiple-choice reading; ``raw_options`` are the dataset's option strings (labels included)."""
    answer = mantis_parse_answer(generation)
    letter = answer[8] if _ANSWER_X.match(answer) else next((c.upper() for c in answer if c.isalpha()), None)
    if letter is not None and ord(letter) - ord("A") < len(raw_options):
        return Extraction(letter, "option_letter")
    letters = option_letters(len(raw_options))
    equal = [k for k, o in enumerate(raw_options) if generation.strip() == _mantis_label_free(o, letters[k])]
    return Extraction(letters[equal[0]], "option_text_exact") if len(equal) == 1 else NONE


def mmmu_choice(generation: str, options: Sequence[str]) -> Extraction:
    letters = option_letters(len(options))
    response = generation
    for char in ",.!?;:'":
        response = response.strip(char)
    response = f" {response} "
    found = [c for c in letters if f"({c})" in response]
    if found:
        where = {c: response.rfind(f"({c})") for c in found}
        rule = "bracketed_letter"
    else:
        found = [c for c in letters if f" {c} " in response]
        where = {c: response.rfind(f" {c} ") for c in found}
        rule = "spaced_letter"
        if not found and len(response.split()) > 5:
            lowered = response.lower()
            found = [c for c, o in zip(letters, options) if o.lower() in lowered]
            where = {c: lowered.rfind(options[letters.index(c)].lower()) for c in found}
            rule = "option_text"
    if not found:
        return NONE
    return Extraction(max(found, key=lambda c: where[c]), rule)


def _judge_substitute(generation: str, options: Sequence[str]) -> Extraction:
    e = extract_choice(generation, options)
    return Extraction(e.answer, f"{JUDGE_SUBSTITUTE}:{e.rule}") if e.answer is not None else NONE


def blink_analyze_answer(generation: str, options: Sequence[str]) -> Extraction:
    letters = option_letters(len(options))
    choices = {f"({c})" for c in letters}
    if generation in ("A", "B", "C", "D", "E"):
        return Extraction(generation, "bare_letter")
    if generation in ("(A)", "(B)", "(C)", "(D)", "(E)"):
        return Extraction(generation[1], "bracketed_letter")
    anywhere = choices & set(generation.split())
    last = choices & set(generation.split("\n\n")[-1].split())
    if len(anywhere) >= 1 and (len(anywhere) == 1 or len(last) == 1):
        return Extraction((last if len(last) == 1 else anywhere).pop()[1], "bracketed_token")
    return _judge_substitute(generation, options)


def mmiu_choice(generation: str, options: Sequence[str]) -> Extraction:
    prediction = _MMIU_EDGES.sub("", generation.strip().replace("\u00a0", "").strip())
    if not prediction:
        return NONE
    if prediction.strip().lower() in "abcdefghijklmn" and len(prediction.strip()) == 1:
        return Extraction(prediction.strip().upper(), "letter")
    return _judge_substitute(generation, options)
