"""A deterministic character tokenizer with image tokens, so the example model needs nothing from a hub.

Ids: 0 pad, 1 bos, 2 eos, 3 image start, 4 image end, 5-99 printable ASCII (space to ~), 100-115 image
intensity levels. An image becomes start, one token per cell of a coarse grey grid, end.
"""

from __future__ import annotations

import numpy as np

PAD, BOS, EOS, IMG_START, IMG_END = 0, 1, 2, 3, 4
CHAR0, FIRST_CHAR, LAST_CHAR = 5, 32, 126
LEVEL0, LEVELS = 100, 16
VOCAB_SIZE = LEVEL0 + LEVELS


def encode_text(text: str) -> list[int]:
    return [CHAR0 + ord(c) - FIRST_CHAR if FIRST_CHAR <= ord(c) <= LAST_CHAR else CHAR0 for c in text]


def encode_image(image, grid: int) -> list[int]:
    """``grid x grid`` mean intensities of a PIL image, quantized to 16 levels, between boundary tokens."""
    a = np.asarray(image.convert("L").resize((grid, grid)), dtype=np.float64)
    levels = np.clip((a / 256.0 * LEVELS).astype(int), 0, LEVELS - 1)
    return [IMG_START] + [LEVEL0 + int(v) for v in levels.flatten()] + [IMG_END]


def decode(ids: list[int]) -> str:
    return "".join(chr(i - CHAR0 + FIRST_CHAR) for i in ids if CHAR0 <= i < CHAR0 + LAST_CHAR - FIRST_CHAR + 1)
