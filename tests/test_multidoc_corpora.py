"""The multidoc task's second corpus (the GNU GPL v3 inside numpy's wheel) and prompts of many passages (issue 18):
the default corpus and its samples do not change, the GPL text is hash-pinned on its own, 32 passages need more
than the default corpus."""

from __future__ import annotations

import dataclasses

import pytest

from bsight.plugins.tasks.multidoc import MultiDoc
from bsight.plugins.tasks.multidoc_corpus import CORPORA, GPL3, CorpusError, corpus_fingerprint, load_passages


def test_default_corpus_and_samples_are_unchanged():
    assert corpus_fingerprint(CORPORA["licenses"]) == corpus_fingerprint() == "9d0f0edc57cb"
    task = MultiDoc({"split": "heldout", "num_passages": 4})
    assert task.revision() == "multidoc@1+corpus-9d0f0edc57cb+p4-8-3-0"
    assert next(task.samples()).id == "multidoc-001-5c394871"  # the default run's first held-out prompt


def test_gpl_corpus_is_the_gpl_text_alone():
    passages = load_passages(sources=CORPORA["gpl"])
    assert len(passages) == 41 and {p.source for p in passages} == {"gpl-3.0"}
    titles = " ".join(p.title for p in passages)
    assert "preamble" in titles and "section 0: Definitions" in titles and "section 17: Interpretation" in titles
    text = " ".join(p.text for p in passages)
    assert "OpenBLAS" not in text and "END OF TERMS" not in text  # numpy's other notices are not passages
    with pytest.raises(CorpusError, match="sha256"):
        load_passages(sources=(dataclasses.replace(GPL3, sha256="0" * 64),))


def test_many_passages_per_prompt():
    task = MultiDoc({"split": "characterization", "num_passages": 32, "corpus": "all"})
    samples = list(task.samples())
    assert len(samples) == 12
    for s in samples:
        docs = s.meta["passage_ids"]
        assert len(docs) == len(set(docs)) == 32 and sum(p.kind == "passage" for p in s.parts) == 32
    assert task.revision() != MultiDoc({"split": "characterization", "num_passages": 32, "corpus": "gpl"}).revision()
    with pytest.raises(ValueError, match="num_passages=32 but the corpus has 24 passages"):
        list(MultiDoc({"num_passages": 32}).samples())
