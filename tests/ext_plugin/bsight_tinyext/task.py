"""Task ``brightest-image``: several grey images, which one is the brightest? Deterministic, no files."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.interfaces import Extraction, ImagePart, Sample, Task, TextPart

LETTERS = "ABCDEFGH"


class BrightestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(12, ge=1, description="number of samples")
    max_images: int = Field(3, ge=2, le=len(LETTERS))
    seed: int = 0


class BrightestImage(Task):
    name = "brightest-image"
    description = "Example external task: pick the brightest of 2-N generated grey images (multiple choice)"
    Options = BrightestOptions
    version = "1"

    def samples(self) -> Iterator[Sample]:
        o = self.options
        for i in range(o.n):
            rng = np.random.default_rng([o.seed, i])
            k = 2 + i % (o.max_images - 1)
            levels = rng.choice(np.arange(16, 240, 16), size=k, replace=False)
            parts: list = [TextPart(text="Which image is the brightest?")]
            for j, level in enumerate(levels):
                img = Image.fromarray(np.clip(level + rng.integers(-8, 8, size=(12, 12)), 0, 255).astype(np.uint8))
                parts += [TextPart(text=f" Image {j + 1}:"), ImagePart(ref=f"gen:{o.seed}:{i}:{j}", image=img)]
            # the task owns its prompt: the options are written here, once (adapters add none)
            parts.append(TextPart(text="".join(f"\n{LETTERS[j]}. image {j + 1}" for j in range(k))))
            yield Sample(
                id=f"b{i:04d}",
                task=self.name,
                subtask=f"{k}-images",
                parts=parts,
                options=[f"image {j + 1}" for j in range(k)],
                answer=LETTERS[int(np.argmax(levels))],
            )

    def extract(self, generation: str, sample: Sample) -> Extraction:
        allowed = LETTERS[: len(sample.options)]
        m = re.search(rf"answer is\s*\(?([{allowed}])\b", generation, re.IGNORECASE)
        if m:
            return Extraction(m.group(1).upper(), "the_answer_is")
        m = re.search(rf"\b([{allowed}])\b", generation)
        if m:
            return Extraction(m.group(1), "letter")
        return Extraction(None, "none")

    def revision(self) -> str:
        return f"{self.name}@{self.version}:seed{self.options.seed}"
