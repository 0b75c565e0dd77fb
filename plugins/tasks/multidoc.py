"""Task ``multidoc``: multi-document quote completion over real legal text that ships inside pinned packages.

Each prompt holds several passages (sections of the Apache License 2.0 and of the Gemma Terms of Use, see
:mod:`multidoc_corpus`), each a :class:`PassagePart` that the model adapter turns into one segment. The question
quotes the first words of a sentence that occurs in exactly one passage of the whole corpus, and the model must
continue the quote with the document's next words. Small models do this through induction (copying from the
passage that holds the quote); "which document says X?" questions were tried and sit at chance for 135M-270M
models, so they are not offered. ``closed_book`` drops the passage that holds the answer: its accuracy is the
guessing baseline (legal boilerplate is partly predictable without the passage).

A sample's ``answer_prefix`` is the quote's opening (the adapter writes it where the model's answer starts);
``meta["gold_continuation"]`` is the answer as the document continues it, for teacher-forced scoring.

The samples are a pure function of the task version, the options and the hash-pinned sources: the same on
every machine. Every fourth sample forms the ``characterization`` split; the others form ``heldout``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from typing import Literal

from pydantic import ConfigDict, Field

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import Extraction, PassagePart, Sample, Task, TextPart
from bsight.plugins.tasks.multidoc_corpus import CORPORA, Passage, corpus_fingerprint, load_passages
from bsight.plugins.tasks.protocols import ProtocolOption

NUM_SAMPLES = 48  # per task version: 12 characterization + 36 held-out
CHARACTERIZATION_EVERY = 4
INSTRUCTION = "Read the documents below.\n\n"
QUESTION = (
    "\n\nOne of the documents above contains the quote below. Continue the quote with the exact words of that document."
)
# Function words: an answer that starts with one is too easy to guess without the passage.
_STOP = frozenset(
    "a an and any are as at be by for from has have in is it its may no not of on or such that the their this to under "
    "which will with you your".split()
)


class MultiDocOptions(ProtocolOption):
    model_config = ConfigDict(extra="forbid")
    task_name = "multidoc"
    protocols = ("bsight",)  # a bsight task: no upstream or lmms-eval protocol exists

    split: Literal["characterization", "heldout", "all"] = "heldout"
    limit: int | None = Field(None, ge=1)  # first n samples of the split
    num_passages: int = Field(6, ge=2, le=40)  # passages per prompt, answer passage included
    # "licenses": Apache 2.0 + Gemma Terms (24 passages); "gpl": the GNU GPL v3 numpy ships (41); "all": both
    corpus: Literal["licenses", "gpl", "all"] = "licenses"
    prefix_words: int = Field(8, ge=4, le=24)  # words of the quote given in the prompt
    answer_words: int = Field(3, ge=1, le=8)  # words the model must continue with
    closed_book: bool = False  # drop the passage that holds the answer (guessing baseline)


def _norm_words(text: str) -> list[str]:
    """Lowercase words without punctuation: the unit answers are compared in."""
    return [w for w in (re.sub(r"[^\w]", "", t.lower()) for t in text.split()) if w]


class MultiDoc(Task):
    name = "multidoc"
    description = "Multi-document quote completion over real license texts shipped in pinned packages (offline)"
    version = "1"
    Options = MultiDocOptions

    def __init__(self, options: MultiDocOptions | dict | None = None) -> None:
        super().__init__(options)
        self._all: list[Sample] | None = None

    def revision(self) -> str:
        o = self.options
        knobs = f"{o.num_passages}-{o.prefix_words}-{o.answer_words}-{int(o.closed_book)}"
        return f"{self.name}@{self.version}+corpus-{corpus_fingerprint(CORPORA[o.corpus])}+p{knobs}"

    def samples(self) -> Iterator[Sample]:
        if self._all is None:
            self._all = build_samples(load_passages(sources=CORPORA[self.options.corpus]), self.options, self.name)
        o = self.options
        keep = [s for s in self._all if o.split == "all" or s.meta["split"] == o.split]
        yield from keep[: o.limit]

    def extract(self, generation: str, sample: Sample) -> Extraction:
        """The first ``answer_words`` words the model wrote after the quote's beginning."""
        n = len(_norm_words(sample.answer))
        words = generation.lstrip().lstrip("\"'“").split()
        if not _norm_words(" ".join(words)):
            return Extraction(None, "none")
        return Extraction(" ".join(words[:n]), "continuation")

    def score(self, extraction: Extraction, sample: Sample) -> bool:
        return extraction.answer is not None and _norm_words(extraction.answer) == _norm_words(sample.answer)


def _quote_sites(passage: Passage, corpus_text: str, prefix_words: int, answer_words: int) -> list[tuple[str, str]]:
    """(prefix, answer) pairs inside one paragraph of ``passage`` whose prefix occurs once in the whole corpus
    and whose answer starts with a content word."""
    sites = []
    for para in passage.text.split("\n"):
        words = para.split()
        for j in range(prefix_words, len(words) - answer_words + 1):
            prefix, answer = " ".join(words[j - prefix_words : j]), " ".join(words[j : j + answer_words])
            first = _norm_words(words[j])
            if len(_norm_words(answer)) != answer_words or not first or first[0] in _STOP or not first[0].isalpha():
                continue
            if corpus_text.count(prefix) == 1:
                sites.append((prefix, answer))
    return sites


def build_samples(passages: list[Passage], options: MultiDocOptions, task: str = "multidoc") -> list[Sample]:
    """All ``NUM_SAMPLES`` samples, both splits, deterministically from the passages and the options."""
    o = options
    if o.num_passages > len(passages):
        raise ValueError(f"num_passages={o.num_passages} but the corpus has {len(passages)} passages")
    corpus = "" if o.corpus == "licenses" else f"-{o.corpus}"  # the default corpus keeps its samples
    rng = random.Random(f"{task}-v{MultiDoc.version}-{o.num_passages}-{o.prefix_words}-{o.answer_words}{corpus}")
    corpus_text = "\n".join(p.text for p in passages)
    sites = {p.id: _quote_sites(p, corpus_text, o.prefix_words, o.answer_words) for p in passages}
    order = [p for p in passages if sites[p.id]]
    rng.shuffle(order)
    # the answer passage's slot cycles through every position, in a shuffled order per round
    slots = [
        s for _ in range(-(-NUM_SAMPLES // o.num_passages)) for s in rng.sample(range(o.num_passages), o.num_passages)
    ]
    used: set[str] = set()
    out: list[Sample] = []
    for i in range(NUM_SAMPLES):
        target = order[i % len(order)]
        fresh = [s for s in sites[target.id] if s[0] not in used] or sites[target.id]
        prefix, answer = rng.choice(fresh)
        used.add(prefix)
        others = rng.sample([p for p in passages if p.id != target.id], o.num_passages - 1)
        slot = slots[i]
        docs = others[:slot] + [target] + others[slot:]
        if o.closed_book:
            docs = others
        parts: list[TextPart | PassagePart] = [TextPart(text=INSTRUCTION)]
        for n, doc in enumerate(docs, 1):
            parts.append(TextPart(text=("\n\n" if n > 1 else "") + f"Document {n}:\n"))
            parts.append(PassagePart(text=doc.text, title=doc.title))
        parts.append(TextPart(text=QUESTION))
        split = "characterization" if i % CHARACTERIZATION_EVERY == 0 else "heldout"
        meta = {
            "split": split,
            "gold_continuation": f" {answer}",
            "answer_passage": None if o.closed_book else slot + 1,
            "answer_passage_id": target.id,
            "passage_ids": [d.id for d in docs],
            "source": target.source,
        }
        digest = hashlib.sha256(f"{target.id}|{prefix}".encode()).hexdigest()[:8]
        out.append(
            Sample(
                id=f"{task}-{i:03d}-{digest}",
                task=task,
                subtask="quote",
                parts=parts,
                answer=answer,
                answer_prefix=f'"{prefix}',
                meta=meta,
            )
        )
    return out


@hookimpl
def bsight_tasks():
    return [MultiDoc]
