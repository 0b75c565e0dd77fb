"""Task ``offline_images``: multi-image questions about real photographs that ship inside scikit-image.

The default run needs no network and no dataset download, yet its prompts must look like the benchmarks'
(several real images, a question that needs more than one of them, lettered options). scikit-image's wheel
carries a dozen photographs (``skimage/data/*.png|jpg``: an astronaut, a cat, a cup of coffee, a rocket, ...);
they are read as package files (no download, no pooch cache) and shrunk to ``image_size``.

Subtasks, each with balanced answer positions:
- ``find_object``: which of N images shows <description>?
- ``same_or_different``: are two images the same photograph (one may be mirrored, rotated, zoomed, darker
  or brighter) or two different ones?
- ``odd_one_out``: N-1 edited versions of one photograph and one other photograph: which is the odd one?
- ``sequence_order``: three photographs: which list of image numbers follows the described order?
- ``zoom_order``: one photograph at three zoom levels: which list orders them from widest to closest?

Everything is derived from ``seed`` with a hash-seeded ``random.Random`` per subtask, so the same options give
the same samples everywhere; ``revision()`` is the version plus a hash of every sample (texts, options,
answers, pixels), so a changed package image or resampling shows up in provenance.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar, Literal

from PIL import Image, ImageEnhance, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.answers import extract_choice, option_letters
from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import Extraction, ImagePart, Part, Sample, Task, TextPart
from bsight.plugins.tasks.protocols import ProtocolOption

VERSION = "1"
PACKAGE = "skimage.data"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
Subtask = Literal["find_object", "same_or_different", "odd_one_out", "sequence_order", "zoom_order"]
SUBTASKS: tuple[str, ...] = Subtask.__args__
Built = tuple[list[ImagePart], str, list[str], dict[str, Any]]  # images, question, option texts, meta


@dataclass(frozen=True)
class Photo:
    file: str  # file inside the skimage.data package
    description: str  # what it shows, as a question names it


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut.png", "an astronaut in an orange spacesuit"),
    Photo("brick.png", "a brick wall"),
    Photo("camera.png", "a man looking through a camera on a tripod"),
    Photo("chelsea.png", "a cat"),
    Photo("coffee.png", "a cup of coffee on a saucer"),
    Photo("coins.png", "rows of coins"),
    Photo("hubble_deep_field.jpg", "galaxies in deep space"),
    Photo("ihc.png", "stained tissue under a microscope"),
    Photo("motorcycle_left.png", "a red motorcycle"),
    Photo("page.png", "a page of printed text"),
    Photo("retina.jpg", "the retina at the back of an eye"),
    Photo("rocket.jpg", "a rocket on its launch pad at night"),
)

# Edits that keep a photograph recognizable as the same photograph.
EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda im: im,
    "mirrored": ImageOps.mirror,
    "rotated": lambda im: im.rotate(180),
    "zoomed": lambda im: _zoom(im, 1.5),
    "darker": lambda im: ImageEnhance.Brightness(im).enhance(0.6),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.4),
}
ZOOMS = (1.0, 1.6, 2.6)


def _zoom(image: Image.Image, factor: float) -> Image.Image:
    """The centre 1/factor of ``image``, scaled back to its size."""
    w, h = image.size
    cw, ch = round(w / factor), round(h / factor)
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.resize(image.size, Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))


class OfflineImages(Task):
    name = "offline_images"
    description = "Multi-image questions over real photographs bundled with scikit-image (no download; the default run)"
    version: ClassVar[str] = VERSION

    class Options(ProtocolOption):
        model_config = ConfigDict(extra="forbid")
        task_name = "offline_images"
        protocols = ("bsight",)  # a bsight task: no upstream or lmms-eval protocol exists
        seed: int = Field(default=0, description="derives every sample")
        per_subtask: int = Field(default=12, ge=1, le=1000, description="samples per subtask")
        image_size: int = Field(default=224, ge=32, le=2048, description="longest side of every image, pixels")
        num_images: int = Field(
            default=4, ge=3, le=len(EDITS), description="images per find_object / odd_one_out question"
        )
        subtasks: list[Subtask] | None = Field(default=None, description="keep only these subtasks")
        limit: int | None = Field(default=None, ge=1, description="at most this many samples")

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._photos: dict[str, Image.Image] = {}
        self._revision: str | None = None

    # ------------------------------------------------------------------ images

    def _photo(self, photo: Photo) -> Image.Image:
        """The photograph as RGB, its longest side ``image_size``; decoded once per task."""
        if photo.file not in self._photos:
            try:
                data = (resources.files(PACKAGE) / photo.file).read_bytes()
            except (ModuleNotFoundError, FileNotFoundError) as e:
                raise RuntimeError(
                    f"offline_images needs the photograph {photo.file!r} from scikit-image's bundled data "
                    f"({type(e).__name__}: {e}); install it with `pip install scikit-image`"
                ) from e
            image = Image.open(io.BytesIO(data)).convert("RGB")
            size = self.options.image_size
            self._photos[photo.file] = ImageOps.contain(image, (size, size), Image.Resampling.LANCZOS)
        return self._photos[photo.file]

    def _edited(self, photo: Photo, edit: str) -> ImagePart:
        return ImagePart(ref=f"{PACKAGE}/{photo.file}#{edit}", image=EDITS[edit](self._photo(photo)))

    # ------------------------------------------------------------------ samples

    def samples(self) -> Iterator[Sample]:
        wanted = self.options.subtasks or SUBTASKS
        count = 0
        for subtask in SUBTASKS:
            if subtask not in wanted:
                continue
            rng = random.Random(
                int.from_bytes(hashlib.sha256(f"{VERSION}:{self.options.seed}:{subtask}".encode()).digest()[:8], "big")
            )
            build = getattr(self, f"_{subtask}")
            for i, position in enumerate(
                _balanced(rng, self.options.per_subtask, _num_choices(subtask, self.options.num_images))
            ):
                if self.options.limit is not None and count >= self.options.limit:
                    return
                images, question, options, meta = build(rng, position)
                yield Sample(
                    id=f"{subtask}-{i:03d}",
                    task=self.name,
                    subtask=subtask,
                    parts=_prompt(images, question, options),
                    options=options,
                    answer=option_letters(len(options))[position],
                    meta=meta,
                )
                count += 1

    def _find_object(self, rng: random.Random, position: int) -> Built:
        photos = rng.sample(PHOTOS, self.options.num_images)
        target = photos[position]
        images = [self._edited(p, "original") for p in photos]
        options = [f"Image {k + 1}" for k in range(len(photos))]
        return images, f"Which image shows {target.description}?", options, {"photos": [p.file for p in photos]}

    def _same_or_different(self, rng: random.Random, position: int) -> Built:
        same = position == 0
        first, other = rng.sample(PHOTOS, 2)
        edits = rng.sample(sorted(EDITS), 2)
        second = first if same else other
        images = [self._edited(first, edits[0]), self._edited(second, edits[1])]
        question = (
            "Do Image 1 and Image 2 show the same photograph? One of them may be mirrored, rotated, zoomed in, "
            "or made darker or brighter."
        )
        options = ["Yes, the same photograph", "No, two different photographs"]
        return images, question, options, {"photos": [first.file, second.file], "edits": edits}

    def _odd_one_out(self, rng: random.Random, position: int) -> Built:
        n = self.options.num_images
        main, odd = rng.sample(PHOTOS, 2)
        edits = rng.sample(sorted(EDITS), n)
        photos = [odd if k == position else main for k in range(n)]
        images = [self._edited(p, e) for p, e in zip(photos, edits)]
        question = (
            f"{n - 1} of these images are versions of the same photograph (mirrored, rotated, zoomed in, darker "
            "or brighter). Which image shows a different photograph?"
        )
        options = [f"Image {k + 1}" for k in range(n)]
        return images, question, options, {"photos": [p.file for p in photos], "edits": edits}

    def _sequence_order(self, rng: random.Random, position: int) -> Built:
        photos = rng.sample(PHOTOS, 3)
        asked = rng.sample(range(3), 3)  # the order the question names the photographs in
        images = [self._edited(p, "original") for p in photos]
        d = [photos[k].description for k in asked]
        question = f"Which list gives the numbers of the images showing {d[0]}, {d[1]} and {d[2]}, in that order?"
        options = _orderings(rng, tuple(k + 1 for k in asked), position)
        return images, question, options, {"photos": [p.file for p in photos]}

    def _zoom_order(self, rng: random.Random, position: int) -> Built:
        photo = rng.choice(PHOTOS)
        zooms = rng.sample(ZOOMS, 3)  # zoom of the image shown at each place
        images = [
            ImagePart(ref=f"{PACKAGE}/{photo.file}#zoom{z:.1f}", image=_zoom(self._photo(photo), z)) for z in zooms
        ]
        widest_first = tuple(sorted(range(1, 4), key=lambda k: zooms[k - 1]))
        question = (
            "These images show the same photograph at different zoom levels. Which list orders the image numbers "
            "from the widest view to the closest zoom?"
        )
        return images, question, _orderings(rng, widest_first, position), {"photos": [photo.file], "zooms": zooms}

    # ------------------------------------------------------------------ scoring, provenance

    def extract(self, generation: str, sample: Sample) -> Extraction:
        return extract_choice(generation, sample.options)

    def revision(self) -> str:
        """Version, options and a SHA-256 over every sample's text, options, answer and pixels."""
        if self._revision is None:
            h = hashlib.sha256()
            for s in self.samples():
                h.update(f"{s.id}\0{s.answer}\0{s.options}\0".encode())
                for p in s.parts:
                    h.update(p.text.encode() if isinstance(p, TextPart) else p.ref.encode() + p.image.tobytes())
            o = self.options
            self._revision = (
                f"{self.name}@{self.version} seed={o.seed} per_subtask={o.per_subtask} image_size={o.image_size} "
                f"num_images={o.num_images} data={h.hexdigest()[:16]}"
            )
        return self._revision


def _num_choices(subtask: str, num_images: int) -> int:
    return {"same_or_different": 2, "sequence_order": 4, "zoom_order": 4}.get(subtask, num_images)


def _balanced(rng: random.Random, n: int, k: int) -> list[int]:
    """``n`` answer positions among ``k``, as even as ``n`` allows, in seeded order."""
    positions = [i % k for i in range(n)]
    rng.shuffle(positions)
    return positions


def _orderings(rng: random.Random, right: tuple[int, ...], position: int) -> list[str]:
    """Four orderings of the image numbers as option texts, the right one at ``position``."""
    wrong = [p for p in itertools.permutations(right) if p != right]
    chosen = rng.sample(wrong, 3)
    chosen.insert(position, right)
    return [", ".join(map(str, p)) for p in chosen]


def _prompt(images: list[ImagePart], question: str, options: list[str]) -> list[Part]:
    """Each image after its label ("Image 1: "), then the question, the lettered options and the instruction."""
    parts: list[Part] = []
    for k, image in enumerate(images):
        parts += [TextPart(text=("" if k == 0 else "\n") + f"Image {k + 1}: "), image]
    lines = [f"{letter}. {text}" for letter, text in zip(option_letters(len(options)), options)]
    parts.append(TextPart(text="\n" + "\n".join([question, *lines, INSTRUCTION])))
    return parts


@hookimpl
def bsight_tasks():
    return [OfflineImages]
