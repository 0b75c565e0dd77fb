"""Where attention mass goes in one prompt: the numbers behind ``bsight inspect`` (paper Figs. 1b, 2 and 7).

:func:`attention_mass` takes one layer's ``q [Hq, S, D]`` and ``k [Hkv, S, D]`` and, in chunks of query rows
(never S x S in memory), computes the softmax under the model's own mask (causal, Gemma's bidirectional images,
sliding window) and keeps only small summaries:

* ``pooled [Hq, P, P]``: the attention matrix average-pooled into ``P x P`` cells (query bins x key bins), so a
  prompt of any length becomes one small picture per head (cells above the diagonal are 0 under a causal mask);
* ``mass [Hq, 4]``: per head, the mean attention mass an image query puts on its own image, on other images'
  sinks, on other images' non-sink tokens and on text (columns in :data:`MASS_COLUMNS`; each row sums to 1).
  Only queries of images that have an earlier image count (image 0 sees no other image by construction).

:class:`InspectProbe` is an :class:`AttentionMethod` that records these for the layers asked, through the
attention bridge (``adapter.prefill(prepared, probe)``), and returns the model's own dense output, so the model
runs on unchanged. :func:`probe_bytes` is the probe's working set, for refusing a length that will not fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from bsight.harness.interfaces import AttentionMethod
from bsight.kernels.dispatch import LayerCall, dense_prefill
from bsight.kernels.reference import check_shapes
from bsight.kernels.sparsity.masks import base_mask
from bsight.kernels.sparsity.metadata import LayoutMeta

MASS_COLUMNS = ("own_image", "other_sinks", "other_non_sinks", "text")
DEFAULT_CHUNK_BYTES = 256 * 2**20  # float32 probabilities of one query chunk, all heads


class LayerMass(NamedTuple):
    pooled: torch.Tensor  # float32 [Hq, P, P]: mean attention weight per (query bin, key bin) cell
    mass: torch.Tensor  # float64 [Hq, 4]: mean mass per image query, columns MASS_COLUMNS
    queries: int  # image queries the mass is averaged over (images with an earlier image)


def bins_of(length: int, bins: int) -> torch.Tensor:
    """The pooling bin of each position: ``P = min(bins, length)`` equal-width bins."""
    p = min(bins, length)
    return torch.arange(length, dtype=torch.long) * p // length


def chunk_rows(num_heads: int, length: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Query rows per chunk so that one chunk's float32 probabilities ``[Hq, rows, S]`` fit ``chunk_bytes``."""
    return max(1, min(length, chunk_bytes // max(1, 4 * num_heads * length)))


def probe_bytes(num_heads: int, length: int, layers: int, bins: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Peak bytes the probe itself holds: a chunk's scores and probabilities (and its masks) plus the pooled
    maps of every recorded layer."""
    rows = chunk_rows(num_heads, length, chunk_bytes)
    p = min(bins, length)
    return 3 * 4 * num_heads * rows * length + 2 * rows * length + 4 * layers * num_heads * p * p


def attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    meta: LayoutMeta,
    *,
    scale: float | None = None,
    window: int | None = None,
    bins: int = 96,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> LayerMass:
    """Pooled attention maps and per-head mass shares of one layer of one unpadded prompt (see the module doc)."""
    Hq, Hkv, S, D = check_shapes(q, k, k, meta)
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q.device
    qbin = bins_of(S, bins).to(dev)
    P = min(bins, S)
    counts = torch.bincount(qbin, minlength=P).double()
    pooled = torch.zeros(Hq, P, P, dtype=torch.float64, device=dev)
    mass = torch.zeros(Hq, len(MASS_COLUMNS), dtype=torch.float64, device=dev)
    queries = 0
    mod = base_mask(meta, window)
    seg = meta.seg_id.long()
    sink = meta.is_sink
    img_end = meta.img_end.long()
    z = torch.zeros((), dtype=torch.long, device=dev)
    step = chunk_rows(Hq, S, chunk_bytes)
    for r0 in range(0, S, step):
        r1 = min(S, r0 + step)
        rows = torch.arange(r0, r1, device=dev)
        last = int(seg[r1 - 1])
        kend = max(r1, int(img_end[last]) if last >= 0 else r1)  # bidirectional images see to their end
        cols = torch.arange(kend, device=dev)
        qc = q[:, r0:r1].float().view(Hkv, G, r1 - r0, D)
        s = torch.einsum("hgcd,hkd->hgck", qc, k[:, :kend].float()).mul_(scale)
        s.masked_fill_(~mod(z, z, rows[:, None], cols[None, :]), float("-inf"))
        p = torch.softmax(s, dim=-1).reshape(Hq, r1 - r0, kend)
        del s
        # (a) pooled map: sum over the cell, divided by the cell's size below
        by_key = torch.zeros(Hq, r1 - r0, P, dtype=p.dtype, device=dev)
        by_key.index_add_(2, qbin[:kend], p)
        pooled.index_add_(1, qbin[r0:r1], by_key.double())
        # mass table: queries of images that have an earlier image
        sq = seg[rows]
        pick = sq >= 1
        if bool(pick.any()):
            pp, sq = p[:, pick], sq[pick]
            sk = seg[:kend][None, :]
            own = sk == sq[:, None]
            other = (sk >= 0) & ~own
            groups = (own, other & sink[:kend][None, :], other & ~sink[:kend][None, :], sk < 0)
            for j, g in enumerate(groups):
                mass[:, j] += (pp * g).sum((1, 2)).double()
            queries += int(pick.sum())
    pooled /= (counts[:, None] * counts[None, :]).clamp_min(1)
    if queries:
        mass /= queries
    return LayerMass(pooled.float().cpu(), mass.cpu(), queries)


def pair_share(meta: LayoutMeta, window: int | None = None) -> float:
    """Share of the model's own query-key pairs (its attention computation) that are inter-image: an image query
    and a key in another image. Exact, from the layout (paper Fig. 1b: this grows with the number of images)."""
    from bsight.kernels.sparsity.categories import Category
    from bsight.kernels.sparsity.flops import pair_counts

    pairs = pair_counts(meta, window)
    dense, intra = pairs[Category.DENSE], pairs[Category.INTRA_IMAGE]
    return (dense - intra) / dense if dense else 0.0


class InspectOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: list[int] | None = Field(None, description="layers to record (default: every attention layer)")
    bins: int = Field(96, ge=1, description="pooled map size: bins x bins cells per head")
    chunk_bytes: int = Field(DEFAULT_CHUNK_BYTES, ge=1, description="float32 bytes of one query chunk")


class InspectProbe(AttentionMethod):
    """Records :func:`attention_mass` for the chosen layers of one prompt; returns dense attention (not a
    registered plugin). One prompt (batch row) at a time; :meth:`take` returns ``{layer: LayerMass}`` and resets."""

    name = "inspect_probe"
    description = "Inspection probe: dense output, pooled attention maps and attention-mass shares per head"
    Options = InspectOptions

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._layers: dict[int, LayerMass] = {}
        self.windows: dict[int, int | None] = {}

    def wants(self, layer: int) -> bool:
        return self.options.layers is None or layer in self.options.layers

    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall
    ) -> torch.Tensor:
        if call.layer_idx < 0:
            raise ValueError("the inspection probe needs each attention module's layer_idx")
        if call.layer_idx in self._layers:
            raise ValueError("the inspection probe takes one prompt (one batch row) per forward")
        if self.wants(call.layer_idx):
            o = self.options
            self._layers[call.layer_idx] = attention_mass(
                q, k, meta, scale=call.scale, window=call.window, bins=o.bins, chunk_bytes=o.chunk_bytes
            )
            self.windows[call.layer_idx] = call.window
        return dense_prefill(q, k, v, meta, call)

    def take(self) -> dict[int, LayerMass]:
        out, self._layers = dict(sorted(self._layers.items())), {}
        return out


def layer_shares(layers: Iterable[tuple[int, LayerMass]]) -> dict[int, float]:
    """Per layer, the inter-image share of image queries' attention mass (other images' sinks + non-sinks),
    averaged over heads."""
    return {i: float(m.mass[:, 1:3].sum(1).mean()) for i, m in layers if m.queries}
