"""Synthetic q, k, v with planted head categories: the proof that characterization recovers known structure.

Keys carry structure that every query head may read (GQA heads share keys): text tokens a text direction,
sink tokens a sink direction, the tokens of image ``i`` an image direction ``u_i``, plus noise. Each query
head's category decides which directions its image queries point to:

* ``sink``: the sink direction (attends to every visible sink);
* ``intra_image``: its own image's direction (attends within its image);
* ``intra_image_sink``: both;
* ``dense`` (a diffuse head): only noise, so its attention spreads over every earlier image.

All image queries also lean slightly towards text (kept by every category). Logit strengths are set in
logit units, independent of head_dim. The categories are planted so that the cheapest mask within a
reasonable tau is the planted one; :func:`confusion_matrix` compares recovered with planted labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta


def realistic_layout(
    num_images: int = 20,
    image_tokens: int = 256,
    *,
    prefix_tokens: int = 64,
    label_tokens: int = 16,
    question_tokens: int = 64,
    sinks: SinkPolicy = SinkPolicy(fraction=0.01),
    bidirectional: bool = False,
) -> PromptLayout:
    """A multi-image prompt: a text prefix, ``num_images`` images each after a short text label, a question."""
    parts: list[tuple[str, int]] = [("text", prefix_tokens)]
    for _ in range(num_images):
        parts += [("text", label_tokens), ("image", image_tokens)]
    parts.append(("text", question_tokens))
    return PromptLayout.from_segments(parts, sinks, bidirectional)


@dataclass(frozen=True)
class PlantedStrength:
    """Logits (after the 1/sqrt(d) scale) of a query towards keys carrying each direction."""

    own_image: float = 8.0
    sink: float = 10.0
    text: float = 3.0
    diffuse: float = 1.0  # std of a diffuse head's preference for each image
    noise: float = 0.5  # norm of the random part of every q and k, relative to a unit direction


def planted_labels(
    num_layers: int, num_heads: int, generator: torch.Generator, diffuse_share: float = 0.25
) -> torch.Tensor:
    """``int64 [layers, heads]`` random labels: ``diffuse_share`` dense, the rest spread over the sparse ones."""
    dense = torch.rand(num_layers, num_heads, generator=generator) < diffuse_share
    sparse = torch.randint(1, len(Category), (num_layers, num_heads), generator=generator)
    return torch.where(dense, Category.DENSE.value, sparse)


def planted_qkv(
    layout: PromptLayout,
    labels: torch.Tensor,
    num_kv_heads: int,
    head_dim: int,
    generator: torch.Generator,
    *,
    strength: PlantedStrength = PlantedStrength(),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q [Hq, S, D]``, ``k, v [Hkv, S, D]`` for one layer whose query heads follow ``labels [Hq]``."""
    meta = LayoutMeta.build(layout.unpadded())
    S, D, Hq = meta.length, head_dim, labels.numel()
    if Hq % num_kv_heads:
        raise ValueError(f"{Hq} query heads are not a multiple of {num_kv_heads} key/value heads")
    n_img = max(meta.num_images, 1)
    dirs = _directions(n_img + 2, D, generator)
    text_dir, sink_dir, image_dir = dirs[0], dirs[1], dirs[2:]
    seg = meta.seg_id.long()
    is_text, is_sink = (seg < 0)[:, None], meta.is_sink[:, None]
    own_dir = image_dir[seg.clamp_min(0)] * ~is_text  # [S, D]; zero on text

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * (strength.noise / math.sqrt(D))

    # with q = amp * a * x and k = amp * y (x, y unit vectors), the scaled logit is a * (x . y)
    amp = D**0.25
    k = amp * (is_text * text_dir + is_sink * sink_dir + ~is_sink * own_dir + noise(num_kv_heads, S, D))
    q = amp * noise(Hq, S, D)
    for h, label in enumerate(labels.tolist()):
        cat = Category(label)
        if cat is Category.DENSE:
            preference = torch.randn(n_img, generator=generator, dtype=torch.float64) @ image_dir
            q[h] += amp * strength.diffuse * ~is_text * preference
            continue
        q[h] += amp * strength.text * ~is_text * text_dir
        if cat in (Category.SINK, Category.INTRA_IMAGE_SINK):
            q[h] += amp * strength.sink * ~is_text * sink_dir
        if cat in (Category.INTRA_IMAGE, Category.INTRA_IMAGE_SINK):
            q[h] += amp * strength.own_image * own_dir
    v = torch.randn(num_kv_heads, S, D, generator=generator, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _directions(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` unit vectors: orthonormal when ``n <= dim``, else random (nearly orthogonal in high dim)."""
    x = torch.randn(dim, n, generator=generator, dtype=torch.float64)
    if n <= dim:
        return torch.linalg.qr(x).Q.T
    return (x / x.norm(dim=0, keepdim=True)).T


def confusion_matrix(planted: np.ndarray | torch.Tensor, recovered: np.ndarray | torch.Tensor) -> np.ndarray:
    """``int64 [4, 4]``: rows planted category, columns recovered category (by value)."""
    p = np.asarray(planted).ravel().astype(np.int64)
    r = np.asarray(recovered).ravel().astype(np.int64)
    if p.shape != r.shape:
        raise ValueError(f"{p.size} planted labels vs {r.size} recovered")
    m = np.zeros((len(Category), len(Category)), dtype=np.int64)
    np.add.at(m, (p, r), 1)
    return m


def format_confusion(matrix: np.ndarray) -> str:
    """Plain-text confusion matrix (test output, reports)."""
    names = [c.label for c in Category]
    w = max(len(n) for n in names) + 2
    lines = ["planted \\ recovered".ljust(w + 2) + "".join(n.rjust(w) for n in names)]
    lines += [names[i].ljust(w + 2) + "".join(str(int(x)).rjust(w) for x in row) for i, row in enumerate(matrix)]
    return "\n".join(lines)
