"""Turn a model's free-text generation into a multiple-choice letter (or a short answer), deterministically.

Upstream harnesses differ here (lmms-eval's BLINK task takes the first letter of the reply, MMMU/MuirBench's
parser falls back to a *random* letter, MMIU and BLINK ask GPT to match the reply). A comparison between
attention methods must not move because of a random draw or a remote model, so this extractor is layered,
deterministic, and says which layer matched; what it cannot parse comes back as ``Extraction(None, "none")``
and is counted by the accuracy job, never guessed.

Layers of :func:`extract_choice`, first match wins:

1. ``letter`` - an option letter that is marked as one, tried in this order: the whole reply ("B", "(b)",
   "B."); a labelled letter ("Answer: B", "the answer is (B)", "option C", "I choose D"; the last label wins,
   so a reply that echoes the options before answering is read right); a leading letter with a delimiter
   ("B. the cat", "(B) the cat", "B" on its own line); a parenthesized letter that is the only one in the
   reply; a standalone capital that is the only one in the reply ("Point B is closer"). A capital followed by
   a lowercase word that does not connect a choice ("A cat sits ...", "I think") is an article or a pronoun,
   not a letter.
2. ``option_text`` - exactly one option's text appears in the reply (after the last answer cue if there is
   one; longer options shadow options they contain: "black cat" wins over "cat").
3. ``the_answer_is`` - the phrase after the last answer cue ("the answer is ...", "final answer: ...")
   names an option by position ("the second option", "option 3") or starts with one option's text.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

from bsight.harness.interfaces import Extraction

LETTERS = string.ascii_uppercase
NONE = Extraction(None, "none")

# Words that may follow a choice letter without making it an article or pronoun ("B because ...").
_CONNECTIVES = frozenset(
    "because since as is was seems appears would should could might must and or which that given "
    "for from due with in on per according".split()
)
_ORDINALS = {
    "first": 0,
    "1st": 0,
    "one": 0,
    "second": 1,
    "2nd": 1,
    "two": 1,
    "third": 2,
    "3rd": 2,
    "three": 2,
    "fourth": 3,
    "4th": 3,
    "four": 3,
    "fifth": 4,
    "5th": 4,
    "five": 4,
    "sixth": 5,
    "6th": 5,
    "six": 5,
    "seventh": 6,
    "7th": 6,
    "seven": 6,
    "eighth": 7,
    "8th": 7,
    "eight": 7,
}
_ORDINAL_WORDS = "|".join(sorted(_ORDINALS, key=len, reverse=True))

_MARKDOWN = re.compile(r"\*\*|__|`+|^#+\s*", re.MULTILINE)
_BARE = re.compile(r"[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:)]?")
_LEADING_PAREN = re.compile(r"[\(\[]([A-Za-z])[\)\]]")
_LEADING_DELIM = re.compile(r"([A-Z])(?:[.):,;]|[ \t]*\n|\s+[-\u2013\u2014]\s)")
_LABEL = re.compile(
    r"(?:\b(?:answer|option|choice)\b\s*(?:is|would\s+be|should\s+be|will\s+be|=|:|-)?\s*(?:option|choice)?"
    r"|\bI\s+(?:would\s+|will\s+|'d\s+)?(?:choose|select|pick|go\s+with))"
    r"\s*[:\-]?\s*(\(|\[)?([A-Za-z])(\)|\])?",
    re.IGNORECASE,
)
_PAREN_ANY = re.compile(r"[\(\[]([A-Z])[\)\]]")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'\u2019])([A-Z])(?![A-Za-z0-9'\u2019])")
_CUE = re.compile(
    r"(?:\b(?:final|correct|right|best)\s+answer|\banswer)\s*(?:is|would\s+be|should\s+be|will\s+be|:|=)\s*:?\s*",
    re.IGNORECASE,
)
_ORDINAL_OPTION = re.compile(
    rf"^(?:the\s+)?(?:({_ORDINAL_WORDS}|last)\s+(?:option|choice)|(?:option|choice)\s+(?:number\s+)?(\d+|{_ORDINAL_WORDS})\b)",
    re.IGNORECASE,
)
_IMAGE_TAG = re.compile(r"<image>", re.IGNORECASE)


def option_letters(n: int) -> str:
    """Letters of ``n`` options, "A", "B", ...; more than 26 options cannot be lettered."""
    if not 1 <= n <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 1 to {len(LETTERS)} options, got {n}")
    return LETTERS[:n]


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _MARKDOWN.sub("", text)
    return text.strip().strip("\"'\u201c\u201d").strip()


def _norm(text: str) -> str:
    """Lowercase words separated by single spaces, for option-text matching."""
    text = _IMAGE_TAG.sub(" ", unicodedata.normalize("NFKC", text)).lower()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def _reads_as_choice(text: str, end: int) -> bool:
    """A capital at ``text[:end]`` is a choice unless a lowercase, non-connecting word follows it."""
    m = re.match(r"\s+([a-z][a-z']*)", text[end:])
    return m is None or m.group(1) in _CONNECTIVES


def _labelled(text: str, valid: str) -> str | None:
    """The letter of the last answer label ("Answer: B", "option (c)", "I choose D") in ``text``."""
    labelled = None
    for m in _LABEL.finditer(text):
        opened, raw, closed = m.group(1), m.group(2), m.group(3)
        if raw.upper() not in valid or (opened is None) != (closed is None):
            continue
        rest = text[m.end() :]
        if opened is None:
            if re.match(r"[A-Za-z0-9]", rest):
                continue  # "the answer is that ...": the letter starts a word
            if raw.islower() and not re.match(r"\s*(?:$|[.,;:!?)\]])", rest):
                continue  # "the answer is a cat": an article
            if raw.isupper() and not _reads_as_choice(text, m.end()):
                continue  # "the answer is A cat"
        labelled = raw.upper()
    return labelled


def _letter(text: str, valid: str) -> str | None:
    m = _BARE.fullmatch(text)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    labelled = _labelled(text, valid)
    if labelled is not None:
        return labelled
    m = _LEADING_PAREN.match(text)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    m = _LEADING_DELIM.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    found = {m.group(1) for m in _PAREN_ANY.finditer(text) if m.group(1) in valid}
    if len(found) == 1:
        return found.pop()
    found = {m.group(1) for m in _STANDALONE.finditer(text) if m.group(1) in valid and _reads_as_choice(text, m.end())}
    if len(found) == 1:
        return found.pop()
    return None


def _after_last_cue(text: str) -> str | None:
    last = None
    for last in _CUE.finditer(text):
        pass
    return text[last.end() :] if last else None


def _matching_options(text: str, options: Sequence[str]) -> list[int]:
    """Indices of options whose text occurs in ``text``; longer options are matched first and blanked, so an
    option that only occurs inside a longer matched option does not count."""
    hay = f" {_norm(text)} "
    order = sorted(range(len(options)), key=lambda i: len(_norm(options[i])), reverse=True)
    found = []
    for i in order:
        needle = _norm(options[i])
        if len(needle) < 2 and not needle.isdigit():
            continue  # empty (image-only) options and single letters are not text
        if f" {needle} " in hay:
            found.append(i)
            hay = hay.replace(f" {needle} ", " " + "\0" * len(needle) + " ")
    return sorted(found)


def _resolve_phrase(phrase: str, options: Sequence[str]) -> int | None:
    phrase = phrase.split("\n", 1)[0].strip()
    if not phrase:
        return None
    m = _ORDINAL_OPTION.match(phrase)
    if m:
        word = (m.group(1) or m.group(2)).lower()
        idx = len(options) - 1 if word == "last" else int(word) - 1 if word.isdigit() else _ORDINALS[word]
        return idx if 0 <= idx < len(options) else None
    head = _norm(phrase)
    prefixed = [i for i in range(len(options)) if _norm(options[i]) and f"{head} ".startswith(f"{_norm(options[i])} ")]
    if prefixed:
        return max(prefixed, key=lambda i: len(_norm(options[i])))
    found = _matching_options(phrase, options)
    return found[0] if len(found) == 1 else None


def extract_choice(generation: str, options: Sequence[str]) -> Extraction:
    """The option letter a generation picks among ``options`` (lettered A, B, ...), or ``(None, "none")``."""
    valid = option_letters(len(options))
    text = _clean(generation)
    if not text:
        return NONE
    letter = _letter(text, valid)
    if letter is not None:
        return Extraction(letter, "letter")
    scope = _after_last_cue(text)
    found = _matching_options(text if scope is None else scope, options)
    if len(found) == 1:
        return Extraction(valid[found[0]], "option_text")
    if scope is not None:
        idx = _resolve_phrase(scope, options)
        if idx is not None:
            return Extraction(valid[idx], "the_answer_is")
    return NONE


_SHORT_CUES = ("final answer:", "the answer is", "answer:")


def extract_short_answer(generation: str) -> Extraction:
    """A free-form answer: the text after the first of "final answer:", "the answer is", "answer:" (checked in
    that order, as Mantis-Eval's ``parse_answer`` does), else the whole reply; None when it is empty."""
    text = unicodedata.normalize("NFKC", generation).strip()
    lowered = text.lower()
    for cue in _SHORT_CUES:
        if cue in lowered:
            answer = text[lowered.index(cue) + len(cue) :].strip()
            return Extraction(answer, "the_answer_is") if answer else NONE
    return Extraction(text, "raw") if text else NONE
