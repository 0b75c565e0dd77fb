"""Task ``many_images``: one question over many photographs, for prompts of 16K-300K tokens (issue 16).

The packaged photographs of ``offline_images`` (scikit-image's bundled data, no download), each shown at a
realistic size (cycling through common photo and screen sizes: 896x896, 1024x768, 1280x720, 800x600,
640x480) and lightly edited (mirrored, rotated, zoomed, darker, brighter), ``num_images`` per prompt. The
question asks which image shows one photograph's subject; that photograph appears exactly once, the other
images are the other photographs. Four options (image numbers), answer letter balanced by the seed.

A model sees about 390-1,200 tokens per image (Qwen2-VL's processor) or 256 (Gemma 3), so 16K tokens take
~20 (Qwen) to ~60 (Gemma) images and 147K ~170 to ~560. The benchmark that needs exact lengths picks
``num_images`` per model (``bsight.harness.benchmarks.inmodel``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.answers import extract_choice, option_letters
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import Extraction, ImagePart, Part, Sample, Task, TextPart
from bsight.plugins.tasks.offline_images import EDITS, INSTRUCTION, PACKAGE, PHOTOS, OfflineImages

VERSION = "1"
SIZES: tuple[tuple[int, int], ...] = ((896, 896), (1024, 768), (1280, 720), (800, 600), (640, 480))


class ManyImages(Task):
    name = "many_images"
    description = "One question over many packaged photographs at realistic sizes (16K-300K-token prompts)"
    version: ClassVar[str] = VERSION

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_images: list[int] = Field(default=[24], min_length=1, description="images per prompt, one sample each")
        samples_per_count: int = Field(default=1, ge=1, le=100)
        sizes: list[tuple[int, int]] = Field(default=list(SIZES), min_length=1, description="(width, height) cycle")
        seed: int = 0

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._source = OfflineImages({"image_size": 2048})  # photographs at their own size (all are <= 2048)
        self._cache: dict[tuple[str, str, tuple[int, int]], Image.Image] = {}

    def image(self, file: str, edit: str, size: tuple[int, int]) -> ImagePart:
        key = (file, edit, tuple(size))
        if key not in self._cache:
            photo = next(p for p in PHOTOS if p.file == file)
            self._cache[key] = EDITS[edit](self._source._photo(photo)).resize(tuple(size), Image.Resampling.BICUBIC)
        return ImagePart(ref=f"{PACKAGE}/{file}#{edit}@{size[0]}x{size[1]}", image=self._cache[key])

    def sample(self, n: int, index: int = 0) -> Sample:
        """The ``index``-th sample with ``n`` images (deterministic in seed, n and index)."""
        digest = hashlib.sha256(f"{VERSION}:{self.options.seed}:{n}:{index}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        target = rng.randrange(len(PHOTOS))
        others = [i for i in range(len(PHOTOS)) if i != target]
        where = rng.randrange(n)
        chosen = [target if k == where else others[rng.randrange(len(others))] for k in range(n)]
        edits = list(EDITS)
        sizes = self.options.sizes
        parts: list[Part] = [TextPart(text=f"Here are {n} photographs.\n")]
        for k, p in enumerate(chosen):
            parts += [
                TextPart(text=("" if k == 0 else "\n") + f"Image {k + 1}: "),
                self.image(PHOTOS[p].file, edits[rng.randrange(len(edits))], sizes[k % len(sizes)]),
            ]
        position = rng.randrange(4)
        wrong = rng.sample([k for k in range(n) if k != where], min(3, n - 1))
        numbers = wrong[:position] + [where] + wrong[position:]
        options = [f"Image {k + 1}" for k in numbers]
        letters = option_letters(len(options))
        question = f"Which image shows {PHOTOS[target].description}?"
        lines = [f"{letter}. {text}" for letter, text in zip(letters, options)]
        parts.append(TextPart(text="\n" + "\n".join([question, *lines, INSTRUCTION])))
        return Sample(
            id=f"n{n}-{index:02d}",
            task=self.name,
            subtask=f"{n}_images",
            parts=parts,
            options=options,
            answer=letters[numbers.index(where)],
            meta={"num_images": n},
        )

    def samples(self) -> Iterator[Sample]:
        for n in self.options.num_images:
            for i in range(self.options.samples_per_count):
                yield self.sample(n, i)

    def extract(self, generation: str, sample: Sample) -> Extraction:
        return extract_choice(generation, sample.options)


@hookimpl
def bsight_tasks():
    return [ManyImages]
