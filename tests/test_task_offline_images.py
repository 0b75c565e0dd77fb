"""The offline multi-image task: real package photographs, answers right by construction, deterministic."""

from __future__ import annotations

import io
import random
from collections import Counter
from importlib import resources

import numpy as np
import pytest
from PIL import Image, ImageOps
from pydantic import ValidationError

from bsight.harness.interfaces import ImagePart, TextPart
from bsight.harness.plugins import load_registry
from bsight.plugins.tasks.offline_images import EDITS, PHOTOS, SUBTASKS, ZOOMS, OfflineImages, _zoom

SIZE = 48  # small images keep the test fast; the default is 224


def task(**options) -> OfflineImages:
    return OfflineImages({"image_size": SIZE, "per_subtask": 8, **options})


def photo(file: str) -> Image.Image:
    image = Image.open(io.BytesIO((resources.files("skimage.data") / file).read_bytes())).convert("RGB")
    return ImageOps.contain(image, (SIZE, SIZE), Image.Resampling.LANCZOS)


def images(sample) -> list[ImagePart]:
    return [p for p in sample.parts if isinstance(p, ImagePart)]


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_registered_and_options_checked() -> None:
    assert load_registry().get("task", "offline_images") is OfflineImages
    with pytest.raises(ValidationError, match="subtasks"):
        OfflineImages({"subtasks": ["count_cats"]})
    with pytest.raises(ValidationError, match="num_images"):
        OfflineImages({"num_images": 2})
    with pytest.raises(ValidationError, match="sede"):
        OfflineImages({"sede": 1})


def test_photographs_ship_in_the_package() -> None:
    for p in PHOTOS:
        image = photo(p.file)
        assert max(image.size) == SIZE and np.asarray(image).std() > 10  # a real picture, not a blank
    assert len({p.description for p in PHOTOS}) == len(PHOTOS)


def test_deterministic_and_versioned() -> None:
    seed = random.randrange(1000)
    a, b = task(seed=seed), task(seed=seed)
    sa, sb = list(a.samples()), list(b.samples())
    assert [s.model_dump() for s in sa] == [s.model_dump() for s in sb]
    assert all(same(x.image, y.image) for s, t in zip(sa, sb) for x, y in zip(images(s), images(t)))
    assert a.revision() == b.revision() and a.revision().startswith(f"offline_images@1 seed={seed} ")
    assert task(seed=seed + 1).revision() != a.revision()
    assert len({s.id for s in sa}) == len(sa) == 8 * len(SUBTASKS)


def test_every_sample_is_multi_image_with_lettered_options() -> None:
    for s in task(seed=random.randrange(1000)).samples():
        imgs = images(s)
        assert len(imgs) >= 2 and all(im.image.mode == "RGB" and max(im.image.size) == SIZE for im in imgs)
        text = "".join(p.text for p in s.parts if isinstance(p, TextPart))
        for k, option in enumerate(s.options):
            assert f"\n{chr(65 + k)}. {option}\n" in text
        assert text.endswith("Answer with the option's letter from the given choices directly.")
        assert s.parts[0].text == "Image 1: " and isinstance(s.parts[1], ImagePart)


def test_answers_are_balanced() -> None:
    t = task(seed=random.randrange(1000), per_subtask=12)
    for subtask in SUBTASKS:
        answers = Counter(s.answer for s in t.samples() if s.subtask == subtask)
        assert max(answers.values()) - min(answers.values()) <= 1 and len(answers) >= 2, (subtask, answers)


def test_find_object_answer_shows_the_described_photograph() -> None:
    t = task(seed=random.randrange(1000))
    for s in t.samples():
        if s.subtask != "find_object":
            continue
        k = ord(s.answer) - 65
        target = next(p for p in PHOTOS if f"shows {p.description}?" in s.parts[-1].text)
        assert same(images(s)[k].image, photo(target.file))
        assert all(not same(im.image, photo(target.file)) for j, im in enumerate(images(s)) if j != k)


def test_same_or_different_and_odd_one_out_by_pixels() -> None:
    t = task(seed=random.randrange(1000))
    for s in t.samples():
        if s.subtask == "same_or_different":
            a, b = images(s)
            is_same = any(same(EDITS[e](photo(s.meta["photos"][0])), b.image) for e in EDITS)
            assert same(EDITS[s.meta["edits"][0]](photo(s.meta["photos"][0])), a.image)
            assert (s.answer == "A") == is_same
        elif s.subtask == "odd_one_out":
            k = ord(s.answer) - 65
            assert len(set(s.meta["photos"])) == 2 and s.meta["photos"].count(s.meta["photos"][k]) == 1
            for im, f, e in zip(images(s), s.meta["photos"], s.meta["edits"]):
                assert same(im.image, EDITS[e](photo(f)))
            assert len(set(s.meta["edits"])) == len(s.meta["edits"])  # no two identical images


def test_order_questions_have_exactly_one_right_list() -> None:
    t = task(seed=random.randrange(1000))
    for s in t.samples():
        if s.subtask == "zoom_order":
            zooms = s.meta["zooms"]
            base = photo(s.meta["photos"][0])
            assert sorted(zooms) == sorted(ZOOMS)
            assert all(same(im.image, _zoom(base, z)) for im, z in zip(images(s), zooms))
            right = ", ".join(str(k + 1) for k in np.argsort(zooms))
        elif s.subtask == "sequence_order":
            question = s.parts[-1].text
            by_position = sorted(
                range(3),
                key=lambda k: question.index(next(p.description for p in PHOTOS if p.file == s.meta["photos"][k])),
            )
            right = ", ".join(str(k + 1) for k in by_position)
        else:
            continue
        assert len(set(s.options)) == 4 and s.options.count(right) == 1
        assert s.options[ord(s.answer) - 65] == right


def test_extract_and_score() -> None:
    t = task(seed=random.randrange(1000), per_subtask=3)
    for s in t.samples():
        right = s.options[ord(s.answer) - 65]
        assert t.score(t.extract(s.answer, s), s)
        assert t.score(t.extract(f"The answer is {right}.", s), s)
        wrong = next(letter for letter in "ABCD" if letter != s.answer)
        assert not t.score(t.extract(f"Answer: {wrong}", s), s)
        assert t.extract("I am not sure.", s).rule == "none"


def test_subtasks_and_limit() -> None:
    t = task(subtasks=["zoom_order", "find_object"], limit=10)
    got = list(t.samples())
    assert len(got) == 10 and [s.subtask for s in got] == ["find_object"] * 8 + ["zoom_order"] * 2
