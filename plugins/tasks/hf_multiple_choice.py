"""What the four multi-image benchmarks (MMIU, MANTIS-eval, MUIRBench, BLINK) share: options, loading,
per-row field checks, prompt assembly (images at their place in the text), answer extraction, provenance.

A benchmark subclasses :class:`HFBenchmark`, names its hub id and columns, and writes ``build(row, ctx)``,
which turns one raw row into a :class:`Sample` exactly as the upstream harness builds the prompt. Every
check that fails raises :class:`TaskDataError` naming the task, the sample, the row and the field; with
``on_invalid: skip`` such rows are skipped (and listed in ``task.skipped``) instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.answers import extract_choice, extract_short_answer, option_letters
from bsight.harness.interfaces import Decoding, Extraction, ImagePart, Part, Sample, Task, TextPart
from bsight.plugins.tasks.hf_loading import LoadedSplit, TaskDataError, decode_image, load_split, local_path
from bsight.plugins.tasks.protocols import ProtocolOption

log = logging.getLogger(__name__)

IMAGE_TAG = "<image>"


class BenchmarkOptions(ProtocolOption):
    """Where a benchmark comes from, which part of it to run and its scoring protocol. Subclasses set the real
    defaults, ``task_name`` and the ``protocols`` the task has."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(
        description="hub dataset id, or a local copy: save_to_disk folder, parquet folder/file, JSON + images"
    )
    config: str | None = Field(default=None, description="dataset config (subset)")
    split: str
    revision: str | None = Field(default=None, description="hub revision (commit, tag or branch) to pin")
    image_root: str | None = Field(default=None, description="folder that relative image paths resolve against")
    limit: int | None = Field(default=None, ge=1, description="at most this many samples, in dataset order")
    subtasks: list[str] | None = Field(default=None, description="keep only these subtasks")
    on_invalid: Literal["error", "skip"] = Field(
        default="error", description="a malformed row: stop, or skip it and list it"
    )


@dataclass(frozen=True)
class RowContext:
    """One row being built: names it in errors and decodes its images."""

    task: str
    sample_id: str
    subtask: str
    index: int
    split: LoadedSplit
    image_hint: str = ""

    def fail(self, field: str, problem: str) -> NoReturn:
        raise TaskDataError(
            f"{self.task}: sample {self.sample_id!r} ({self.split.where}, row {self.index}): field {field!r}: {problem}"
        )

    def text(self, row: dict[str, Any], field: str, *, allow_empty: bool = False) -> str:
        value = row.get(field)
        if value is None:
            self.fail(field, "missing (null)")
        if not isinstance(value, str):
            self.fail(field, f"expected a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            self.fail(field, "empty")
        return value

    def texts(self, row: dict[str, Any], field: str) -> list[str]:
        value = row.get(field)
        if value is None:
            self.fail(field, "missing (null)")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(field, f"expected a list of strings, got {_describe(value)}")
        if not value:
            self.fail(field, "empty list")
        return value

    def images(self, row: dict[str, Any], field: str) -> list[ImagePart]:
        value = row.get(field)
        if value is None:
            self.fail(field, "missing (null)")
        if not isinstance(value, list):
            self.fail(field, f"expected a list of images, got {type(value).__name__}")
        if not value:
            self.fail(field, "empty list: a multi-image sample needs images")
        return [self.image(v, f"{field}[{k}]") for k, v in enumerate(value)]

    def image(self, value: Any, field: str) -> ImagePart:
        what = f"{self.task}: sample {self.sample_id!r} ({self.split.where}, row {self.index}): field {field!r}"
        image, ref = decode_image(value, root=self.split.image_root, what=what, missing_root_hint=self.image_hint)
        return ImagePart(ref=ref or f"{self.sample_id}/{field}", image=image)

    def options(self, row: dict[str, Any], field: str) -> list[str]:
        """A list of option texts that can be lettered: 1 to 26 options, none of them empty."""
        options = self.texts(row, field)
        self.letters(len(options), field)
        for k, option in enumerate(options):
            if not option.strip():
                self.fail(field, f"option {chr(ord('A') + k)} is empty; options must have text to be lettered")
        return options

    def letters(self, num_options: int, field: str) -> str:
        """The letters of ``num_options`` options; more than 26 cannot be lettered."""
        if not 1 <= num_options <= 26:
            self.fail(field, f"{num_options} options; a question needs 1 to 26")
        return option_letters(num_options)

    def letter(self, answer: str, field: str, num_options: int) -> str:
        """A gold answer ("B", "(B)", " b ") as a letter among ``num_options`` options."""
        letter = answer.strip().strip("()").strip().upper()
        valid = self.letters(num_options, field)
        if len(letter) != 1 or letter not in valid:
            self.fail(field, f"gold answer {answer!r} is not one of the option letters {', '.join(valid)}")
        return letter


def _describe(value: Any) -> str:
    if isinstance(value, list):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a list of {'/'.join(kinds) or 'nothing'}"
    return type(value).__name__


def interleave(text: str, images: Sequence[ImagePart], ctx: RowContext, field: str) -> list[Part]:
    """Put each image at its ``<image>`` tag in ``text``, in order. Images without a tag go first, as
    Mantis' eval.py prepends missing tags; more tags than images is an error."""
    count = text.count(IMAGE_TAG)
    if count > len(images):
        ctx.fail(field, f"{count} {IMAGE_TAG} tags but only {len(images)} images")
    text = IMAGE_TAG * (len(images) - count) + text
    parts: list[Part] = []
    for k, segment in enumerate(text.split(IMAGE_TAG)):
        if k > 0:
            parts.append(images[k - 1])
        if segment.strip(" \n"):
            parts.append(TextPart(text=segment))
    return parts


def strip_label(option: str, letter: str) -> str:
    """Option text without a leading "A.", "A)", "A:" or "(A)" label, for option-text matching."""
    return re.sub(rf"^\s*\(?{letter}\s*[).:]\s*", "", option, count=1) or option


class HFBenchmark(Task):
    """A multiple-choice multi-image benchmark read from the hub or a local copy."""

    Options: ClassVar[type[BenchmarkOptions]] = BenchmarkOptions
    hub_id: ClassVar[str]
    id_field: ClassVar[str | None]  # column with a unique sample id; None: the row index
    subtask_field: ClassVar[str]  # column naming the subtask (see ``subtask_values``)
    required: ClassVar[tuple[str, ...]]  # columns every row must have
    image_hint: ClassVar[str] = ""  # said when relative image paths cannot be resolved

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.skipped: list[tuple[str, str]] = []  # (sample id, reason) of rows skipped with on_invalid=skip
        self._loaded: list[LoadedSplit] | None = None

    @abstractmethod
    def build(self, row: dict[str, Any], ctx: RowContext) -> Sample:
        """One raw row (images undecoded) as a Sample, prompt built as the upstream harness does."""

    def configs(self) -> list[str | None]:
        """The configs to load, in order."""
        return [self.options.config]

    def subtask_values(self, split: LoadedSplit) -> list[Any]:
        """The subtask of every row of ``split`` (the ``subtask_field`` column by default)."""
        if self.subtask_field not in split.columns:
            raise TaskDataError(f"{split.where}: missing column {self.subtask_field!r} naming the subtask")
        return split.column(self.subtask_field)

    def splits(self) -> list[LoadedSplit]:
        if self._loaded is None:
            o = self.options
            self._loaded = [
                load_split(
                    o.source,
                    config=c,
                    split=o.split,
                    revision=o.revision,
                    image_root=o.image_root,
                    required=self.required,
                )
                for c in self.configs()
            ]
        return self._loaded

    def _plan(self) -> list[tuple[LoadedSplit, int, str, str]]:
        """(split, row, sample id, subtask) of every selected row, in dataset order, before ``limit``."""
        rows: list[tuple[LoadedSplit, int, str, str]] = []
        seen: dict[str, str] = {}
        for split in self.splits():
            n = len(split)
            ids = split.column(self.id_field) if self.id_field else [str(i) for i in range(n)]
            for i, (sid, sub) in enumerate(zip(ids, self.subtask_values(split))):
                if sid is None or str(sid).strip() == "":
                    raise TaskDataError(
                        f"{self.name}: {split.where}, row {i}: field {self.id_field!r}: missing sample id"
                    )
                if not isinstance(sub, str) or not sub:
                    raise TaskDataError(
                        f"{self.name}: sample {sid!r} ({split.where}, row {i}): field {self.subtask_field!r}: "
                        "missing subtask"
                    )
                sid = str(sid)
                if sid in seen:
                    raise TaskDataError(
                        f"{self.name}: sample id {sid!r} appears twice ({seen[sid]} and {split.where}, row {i})"
                    )
                seen[sid] = f"{split.where}, row {i}"
                rows.append((split, i, sid, sub))
        wanted = self.options.subtasks
        if wanted:
            available = sorted({sub for *_, sub in rows})
            unknown = sorted(set(wanted) - set(available))
            if unknown:
                raise TaskDataError(f"{self.name}: unknown subtask(s) {unknown}; available: {available}")
            rows = [r for r in rows if r[3] in wanted]
        return rows

    def samples(self) -> Iterator[Sample]:
        self.skipped = []
        yielded = 0
        for split, index, sid, sub in self._plan():
            if self.options.limit is not None and yielded >= self.options.limit:
                return
            ctx = RowContext(self.name, sid, sub, index, split, self.image_hint)
            try:
                sample = self.build(split.row(index), ctx)
            except TaskDataError as e:
                if self.options.on_invalid == "error":
                    raise
                log.warning("skipped: %s", e)
                self.skipped.append((sid, str(e)))
                continue
            yielded += 1
            yield sample
        if yielded == 0:
            raise TaskDataError(
                f"{self.name}: every selected row was invalid ({len(self.skipped)} skipped); first: "
                f"{self.skipped[0][1]}"
            )

    # ------------------------------------------------------------------ scoring protocols

    # Generation settings of each protocol the task has (keys: its protocols; see plugins/tasks/protocols.py).
    decodings: ClassVar[dict[str, Decoding]] = {}

    @property
    def protocol(self) -> str:  # type: ignore[override]
        return self.options.protocol

    def decoding(self) -> Decoding:
        return self.decodings[self.protocol]

    @property
    def default_max_new_tokens(self) -> int | None:  # type: ignore[override]
        return self.decoding().max_new_tokens

    def extract(self, generation: str, sample: Sample) -> Extraction:
        """The ``bsight`` protocol's layered extractor; tasks override this for their other protocols."""
        if sample.options:
            return extract_choice(generation, sample.options)
        return extract_short_answer(generation)

    def revision(self) -> str:
        """Source, config(s), split and a content hash of the loaded data files (hub loads: the ``datasets``
        fingerprint, which follows the hub commit). Image folders beside a JSON/parquet copy are not hashed."""
        o = self.options
        path = local_path(o.source)
        source = o.source if path is None else f"local:{path.name}"
        if o.revision:
            source += f"@{o.revision}"
        configs = ",".join(s.config or "-" for s in self.splits())
        digest = hashlib.sha256("+".join(s.digest() for s in self.splits()).encode()).hexdigest()[:16]
        return f"{self.name}@{self.version} {source} config={configs} split={o.split} data={digest}"
