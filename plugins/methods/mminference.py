"""Method ``mminference``: MMInference-style dynamic sparse prefill (MInference patterns, modality boundaries).

What follows MInference's released code (``minference/modules/minference_forward.py``):

* **vertical-slash**: from the last ``last_q`` (64) queries, softmax scores against all keys; the
  ``vertical_size`` columns and ``slash_size`` diagonals with the largest summed scores are kept, the first
  30 columns and the 100 most local diagonals always (``vertical[..., :30] = inf``, ``slash[..., -100:] =
  inf``); a kept diagonal costs the aligned 64-token key tiles it crosses in each 64-query tile (its
  index conversion keeps a 64-wide key range per diagonal and query block; aligned tiles make a head's
  slashes one list of relative tile offsets, at most one extra tile per diagonal);
* **block-sparse**: mean-pooled 64-token query and key tiles, the ``top_k`` (100) key tiles with the largest
  pooled score per query tile;
* **a-shape** (``stream_llm``): the first ``vertical_size`` keys and the ``slash_size`` most local
  diagonals (MInference reuses the two budgets this way);
* **offline per-head choice from one sample** (``search_pattern``): :class:`PatternSearch` runs one sample
  densely and, per layer and head, keeps the candidate with the lowest output NMSE against dense attention
  within a density budget, then writes a JSON :class:`PatternConfig` (MInference's ``*_fit_o_best_pattern``
  configs also fit the output; its candidate lists are our defaults).

What follows MMInference's paper (its code was never released), and where we had to decide:

* **modality boundaries** per head, chosen offline with the pattern: ``none`` (MInference as is, one index
  for all queries), ``q_boundary`` (queries grouped by modality - text or image; each group gets its own
  index estimated from its own last queries, over all keys), ``2d_boundary`` (queries and keys permuted by
  modality; within a modality the pattern works in the permuted coordinates, estimated from that
  modality's last queries against its own keys). *Decided*: the paper handles the cross-modality parts of
  a 2D-boundary head separately without a rule we could reproduce; we keep them whole (static), so image
  queries see all text and text queries all images, within the model's own mask. All queries, text
  included, are sparsified by their modality's pattern (no dense text rows).
* **modality** is text vs image; all images form one modality, as in the paper's mixed-modality inputs.
* *Decided*: the paper's Grid pattern (video stride/phase search) is not implemented: our prompts are
  multi-image, and grid diagonals at multiples of an image row are already slash candidates.
* *Decided*: the block-sparse pattern always keeps each query tile's own (diagonal) tile, as one of its
  ``top_k``, so no row is left without keys; MInference's top-k nearly always picks it anyway.
* The model's own mask (causal, bidirectional images, sliding window) is applied inside every pattern.

FLOPs accounting: after each prefill ``self.kept`` holds one :class:`LayerPairs` per layer call - the layer
index and an int64 tensor ``[Hq]`` of query-key pairs each head actually computed (counted by the kernel, or
by the reference path, from the same kept set). ``take_kept()`` returns and clears the log. Run-time
overhead goes to ``self.overhead``: ``pattern_estimation`` (scores, top-k, index building),
``permutation`` (2D-boundary gathers and scatters), ``index_metadata`` (per-prompt coordinate tables).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import AttentionMethod, ModelAdapter, ModelInfo, Sample
from bsight.kernels.dispatch import LayerCall, dense_prefill
from bsight.kernels.sparsity.artifacts import find_published, load_json_model
from bsight.kernels.sparsity.metadata import LayoutMeta
from bsight.kernels.vertical_slash import (
    TILE,
    Space,
    SparseIndex,
    base_pair_count,
    distinct_sorted,
    slash_tiles,
    sparse_attention,
)

Pattern = Literal["vertical_slash", "block_sparse", "a_shape", "dense"]
Boundary = Literal["none", "q_boundary", "2d_boundary"]


class HeadPattern(BaseModel):
    """One head's offline choice. ``vertical_size`` / ``slash_size`` count the always-kept first keys and
    local diagonals and are raised to them (MInference's ``max(vertical_size, 30)``); ``a_shape`` reads them
    as its initial keys and local window (MInference's convention). ``top_k``: key tiles per query tile,
    the query tile's own included. ``nmse`` and ``density`` are what the search measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pattern: Pattern = "vertical_slash"
    boundary: Boundary = "2d_boundary"
    vertical_size: int = Field(1000, ge=1)
    slash_size: int = Field(6096, ge=1)
    top_k: int = Field(100, ge=1)
    nmse: float | None = None
    density: float | None = None

    @model_validator(mode="after")
    def _check(self) -> HeadPattern:
        if self.pattern in ("block_sparse", "a_shape") and self.boundary == "q_boundary":
            raise ValueError(f"pattern {self.pattern!r} takes boundary 'none' or '2d_boundary', not 'q_boundary'")
        return self

    @property
    def split(self) -> int:
        return int(self.boundary != "none")


class SearchInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample: str
    num_tokens: int
    max_density: float
    candidates: list[HeadPattern]


class PatternConfig(BaseModel):
    """Per-layer, per-head patterns: the offline search's artifact, loaded by ``pattern_config``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = 1
    model_id: str
    model_revision: str = ""
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    patterns: list[list[HeadPattern]]
    search: SearchInfo | None = None
    tool_version: str = ""
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _check(self) -> PatternConfig:
        if len(self.patterns) != self.num_layers or any(len(r) != self.num_heads for r in self.patterns):
            raise ValueError(f"patterns must be {self.num_layers} layers x {self.num_heads} heads")
        return self

    def save(self, path: str | Path) -> Path:
        """JSON with one line per layer (its heads' patterns), so that published configs diff layer by layer."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.model_dump(mode="json")
        layers = data.pop("patterns")
        head = json.dumps(data, indent=1)[: -len("\n}")]
        body = ",\n".join("  " + json.dumps(layer, separators=(",", ":")) for layer in layers)
        path.write_text(f'{head},\n "patterns": [\n{body}\n ]\n}}\n')
        return path

    @classmethod
    def load(cls, path: str | Path) -> PatternConfig:
        """Read a config: ``path`` as given, else (for ``reports/...``) the file the installed ``bsight.reports``
        package ships, so configs naming published pattern configs run outside a source checkout too."""
        return load_json_model(cls, find_published(str(path)) or Path(path), "MMInference pattern config", shown=path)


@dataclass(frozen=True)
class LayerPairs:
    """Query-key pairs one layer call computed, per query head (FLOPs = 4 * head_dim * pairs)."""

    layer: int
    pairs: torch.Tensor  # int64 [Hq]


class EstimationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    last_q: int = Field(64, ge=1, description="queries whose scores estimate vertical-slash indices")
    init_verticals: int = Field(30, ge=0, description="leading keys of each region always kept as columns")
    local_slashes: int = Field(100, ge=0, description="most local diagonals always kept")
    backend: Literal["auto", "triton", "reference"] = "auto"


# --------------------------------------------------------------------------------------- estimation


@dataclass(frozen=True)
class _Launch:
    """Heads attending in one space, with q/k/v already in its coordinates."""

    space: Space
    heads: list[int]  # query heads of the prompt
    patterns: list[HeadPattern]
    q: torch.Tensor  # [*, N, D]: indexed by q_heads
    k: torch.Tensor  # [Hkv, N, D]
    v: torch.Tensor
    q_heads: torch.Tensor  # int64 [Hl]
    kv_heads: torch.Tensor  # int64 [Hl]


def _last_rows(space: Space, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Coordinates of the last ``n`` valid rows where ``mask`` holds."""
    idx = torch.nonzero(mask & (space.pos >= 0)).flatten()
    return idx[-n:]


def _region(space: Space, slot: int) -> tuple[int, int]:
    """Coordinate range of the keys a head's index may pick: its modality in the 2D space, else all."""
    if space.two_d:
        lo, hi = space.group_tiles[2 * slot].item(), space.group_tiles[2 * slot + 1].item()
        return lo * TILE, min(hi * TILE, space.size)
    return 0, space.size


def _scores(launch: _Launch, h: int, rows: torch.Tensor) -> torch.Tensor:
    """Raw scores of head ``h``'s queries at coordinates ``rows`` against every key: float ``[L, N]``."""
    qs = launch.q[launch.q_heads[h], rows]
    return (qs @ launch.k[launch.kv_heads[h]].transpose(0, 1)).to(torch.promote_types(qs.dtype, torch.float32))


def _vertical_slash(
    launch: _Launch, opts: EstimationOptions, scale: float, row_sets, picks_v: list, picks_s: list
) -> None:
    """Last-query estimation: append (head, slot, columns / diagonals, valid) picks for the heads of each
    (slot, rows, heads) row set. Columns and diagonals are scored by summed softmax probability."""
    sp = launch.space
    N = sp.size
    dev = sp.pos.device
    y = torch.arange(N, device=dev)
    diag = torch.arange(2 * N - 1, device=dev) - (N - 1)
    for slot, rows, members in row_sets:
        if rows.numel() == 0 or not members:
            continue
        allowed = sp.base_keep(rows, y)
        lo, hi = _region(sp, slot)
        if sp.two_d:
            allowed &= (y >= lo) & (y < hi)
        any_col = allowed.any(0)
        off = (rows[:, None] - y[None, :] + N - 1).flatten()
        off_ok = (
            torch.zeros(2 * N - 1, dtype=torch.int32, device=dev).scatter_add_(
                0, off, allowed.flatten().to(torch.int32)
            )
            > 0
        )
        forced_v = any_col & (y >= lo) & (y < lo + opts.init_verticals)
        forced_s = off_ok & (diag >= 0) & (diag < opts.local_slashes)
        for h in members:
            pat = launch.patterns[h]
            p = torch.softmax(
                _scores(launch, h, rows).mul_(scale).masked_fill_(~allowed, float("-inf")), -1
            ).nan_to_num_(0.0)
            vert = p.sum(0).masked_fill_(~any_col, float("-inf")).masked_fill_(forced_v, float("inf"))
            sl = torch.zeros(2 * N - 1, dtype=p.dtype, device=dev).scatter_add_(0, off, p.flatten())
            sl = sl.masked_fill_(~off_ok, float("-inf")).masked_fill_(forced_s, float("inf"))
            # budgets include the always-kept keys and diagonals, and are raised to them (as MInference's
            # max(vertical_size, 30)), so the estimate always adds to what is forced
            tv = vert.topk(min(max(pat.vertical_size, opts.init_verticals), N))
            picks_v.append((h, slot, tv.indices, tv.values > float("-inf")))
            ts = sl.topk(min(max(pat.slash_size, opts.local_slashes), 2 * N - 1))
            picks_s.append((h, slot, diag[ts.indices], ts.values > float("-inf")))


def _a_shape(launch: _Launch, h: int, slots: list[int], picks_v: list, picks_s: list) -> None:
    """Static: the region's first ``vertical_size`` keys and the ``slash_size`` most local diagonals."""
    dev = launch.space.pos.device
    pat = launch.patterns[h]
    for slot in slots:
        lo, hi = _region(launch.space, slot)
        cols = torch.arange(lo, min(hi, lo + pat.vertical_size), device=dev)
        picks_v.append((h, slot, cols, torch.ones_like(cols, dtype=torch.bool)))
        diag = torch.arange(pat.slash_size, device=dev)
        picks_s.append((h, slot, diag, torch.ones_like(diag, dtype=torch.bool)))


def _block_sparse(launch: _Launch, members: list[int]) -> dict[int, torch.Tensor]:
    """Per head: top-k key tiles per query tile by mean-pooled q.k (``[NT, k]``, -1 for none); only tiles
    the model's own mask reaches (and, in the 2D space, of the row's modality) compete."""
    sp = launch.space
    NT, N = sp.num_tiles, sp.size
    dev = sp.pos.device
    if not members:
        return {}
    valid = (sp.pos >= 0).float()
    cnt = torch.zeros(NT * TILE, device=dev)
    cnt[:N] = valid
    cnt = cnt.view(NT, TILE).sum(1).clamp(min=1)
    rows_ok = (sp.tile_bits & 4) != 0
    live = (sp.kt_min[None, :] <= sp.reach[:, None]) & rows_ok[:, None]
    if sp.window:
        live &= sp.kt_max[None, :] > sp.first[:, None] - sp.window
    if sp.two_d:
        tg = (sp.tile_bits >> 1) & 1
        live &= tg[:, None] == tg[None, :]
    own = torch.eye(NT, dtype=torch.bool, device=dev) & rows_ok[:, None]

    def pool(x: torch.Tensor) -> torch.Tensor:
        xp = torch.zeros(NT * TILE, x.shape[-1], dtype=torch.promote_types(x.dtype, torch.float32), device=dev)
        xp[:N] = x * valid[:, None]
        return xp.view(NT, TILE, -1).sum(1) / cnt[:, None]

    out: dict[int, torch.Tensor] = {}
    for h in members:
        s = pool(launch.q[launch.q_heads[h]]) @ pool(launch.k[launch.kv_heads[h]]).transpose(0, 1)
        s = s.masked_fill_(~live, float("-inf")).masked_fill_(own, float("inf"))
        t = s.topk(min(launch.patterns[h].top_k, NT), dim=-1)
        out[h] = torch.where(t.values > float("-inf"), t.indices, -1)
    return out


def build_index(launch: _Launch, opts: EstimationOptions, scale: float) -> SparseIndex:
    """Estimate every head's kept set from this prompt (run time) and convert it to kernel indices."""
    sp = launch.space
    dev = sp.pos.device
    NT = sp.num_tiles
    Hl = len(launch.heads)
    pats = launch.patterns
    picks_v: list = []
    picks_s: list = []
    rows = {
        "all": _last_rows(sp, torch.ones_like(sp.pos, dtype=torch.bool), opts.last_q),
        0: _last_rows(sp, sp.group == 0, opts.last_q),
        1: _last_rows(sp, sp.group == 1, opts.last_q),
    }
    vs_all = [h for h in range(Hl) if pats[h].pattern == "vertical_slash" and not pats[h].split]
    vs_split = [h for h in range(Hl) if pats[h].pattern == "vertical_slash" and pats[h].split]
    _vertical_slash(
        launch,
        opts,
        scale,
        [(0, rows["all"], vs_all), (0, rows[0], vs_split), (1, rows[1], vs_split)],
        picks_v,
        picks_s,
    )
    for h in range(Hl):
        if pats[h].pattern == "a_shape":
            _a_shape(launch, h, [0, 1] if pats[h].split else [0], picks_v, picks_s)
    blocks_by_head = _block_sparse(launch, [h for h in range(Hl) if pats[h].pattern == "block_sparse"])

    def stack(picks: list) -> tuple[torch.Tensor, torch.Tensor]:
        width = max([p[2].numel() for p in picks], default=1)
        vals = torch.zeros(Hl, 2, width, dtype=torch.long, device=dev)
        ok = torch.zeros(Hl, 2, width, dtype=torch.bool, device=dev)
        for h, slot, v, good in picks:
            vals[h, slot, : v.numel()] = v
            ok[h, slot, : v.numel()] = good
        return vals, ok

    sv, so = stack(picks_s)
    offsets, offset_count, covered = slash_tiles(sv, so, NT)
    cv, co = stack(picks_v)
    columns, column_count = distinct_sorted(cv, co)
    nb = max([b.shape[-1] for b in blocks_by_head.values()], default=1)
    raw = torch.full((Hl, NT, nb), -1, dtype=torch.long, device=dev)
    for h, b in blocks_by_head.items():
        raw[h, :, : b.shape[-1]] = b
    blocks, _ = distinct_sorted(raw, raw >= 0, pad=-1)
    return SparseIndex(
        q_heads=launch.q_heads.to(torch.int32),
        kv_heads=launch.kv_heads.to(torch.int32),
        split=torch.tensor([p.split for p in pats], dtype=torch.int32, device=dev),
        offsets=offsets,
        offset_count=offset_count,
        covered=covered,
        columns=columns,
        column_count=column_count,
        blocks=blocks,
    )


DEFAULT_CANDIDATES: list[HeadPattern] = [
    *(
        HeadPattern(pattern="vertical_slash", boundary=b, vertical_size=v, slash_size=s)
        for b in ("none", "q_boundary", "2d_boundary")
        for v, s in ((30, 800), (100, 750), (500, 700), (1000, 4096))
    ),
    *(HeadPattern(pattern="block_sparse", boundary=b, top_k=100) for b in ("none", "2d_boundary")),
    *(HeadPattern(pattern="a_shape", boundary=b, vertical_size=100, slash_size=800) for b in ("none", "2d_boundary")),
]


class SearchOptions(EstimationOptions):
    candidates: list[HeadPattern] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES), min_length=1)
    max_density: float = Field(0.25, gt=0, le=1, description="kept pairs / the model's own mask pairs, per head")


# ------------------------------------------------------------------------------------------- method


PATTERN_CONFIG = "pattern_config"  # the artifact kind of the offline search


class MMInference(AttentionMethod):
    """Per head, the pattern of its :class:`PatternConfig` (or ``default``), estimated on every prompt.

    FLOPs: each prefill appends ``LayerPairs(layer, pairs)`` to ``self.kept``, ``pairs`` an int64 tensor
    ``[Hq]`` of the query-key pairs each head computed (dense heads: the model's own mask); read it with
    :meth:`take_kept`. Overhead (``self.overhead``): ``pattern_estimation``, ``permutation``,
    ``index_metadata``; attention time excludes them (:meth:`plan` then :meth:`execute`).
    """

    name = "mminference"
    description = (
        "MMInference-style dynamic sparse prefill: per-head vertical-slash / block-sparse / A-shape "
        "with modality boundaries"
    )

    class Options(EstimationOptions):
        pattern_config: Path | PatternConfig | None = Field(
            None, description="offline search result (JSON file or object); None: `default` for every head"
        )
        default: HeadPattern = HeadPattern()

    # what jobs ask instead of reading the options (harness/interfaces.AttentionMethod)
    accepts = (PATTERN_CONFIG,)
    search_artifact = PATTERN_CONFIG
    SearchOptions = SearchOptions

    @classmethod
    def artifacts(cls, options: dict[str, Any]) -> list[tuple[str, str]]:
        value = options.get("pattern_config")
        return [(PATTERN_CONFIG, str(value))] if isinstance(value, (str, Path)) else []

    @classmethod
    def with_artifact(cls, options: dict[str, Any], kind: str, value: Any) -> dict[str, Any]:
        if kind != PATTERN_CONFIG:
            return super().with_artifact(options, kind, value)
        return {**options, "pattern_config": value}

    @classmethod
    def search(cls, adapter: ModelAdapter, sample: Sample, options: BaseModel) -> PatternConfig:
        return search_pattern_config(adapter, sample, options)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        if self.config is None:
            return {"notes": ["patterns: default pattern for every head"]}
        search = self.config.search
        where = f" (sample {search.sample}, max density {search.max_density:g})" if search and search.sample else ""
        return {"notes": [f"patterns: searched{where}"]}

    @classmethod
    def save_artifact(cls, data: dict[str, Any], path: Path) -> None:
        PatternConfig.model_validate(data).save(path)

    @classmethod
    def summarize_artifact(cls, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """A searched pattern config for the report: the share of heads per pattern, mean density and NMSE."""
        heads = [h for layer in data["patterns"] for h in layer]
        counts: dict[str, int] = {}
        for h in heads:
            label = f"{h['pattern']} / {h['boundary']}" if h["pattern"] != "dense" else "dense"
            counts[label] = counts.get(label, 0) + 1
        search = data.get("search") or {}
        return {
            "sample": search.get("sample"),
            "tokens": search.get("num_tokens"),
            "max_density": search.get("max_density"),
            "heads": len(heads),
            "shares": sorted(((k, v / len(heads)) for k, v in counts.items()), key=lambda kv: -kv[1]),
            "density": float(np.mean([h["density"] for h in heads if h.get("density") is not None] or [np.nan])),
            "nmse": float(np.mean([h["nmse"] for h in heads if h.get("nmse") is not None] or [np.nan])),
        }

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.config: PatternConfig | None = None
        self.kept: list[LayerPairs] = []
        self._meta: LayoutMeta | None = None
        self._spaces: dict[tuple[int | None, bool], Space] = {}

    def setup(self, model: ModelInfo) -> None:
        super().setup(model)
        source = self.options.pattern_config
        if source is not None:
            cfg = source if isinstance(source, PatternConfig) else PatternConfig.load(source)
            if (cfg.num_layers, cfg.num_heads) != (model.num_layers, model.num_heads):
                raise ValueError(
                    f"pattern config {source if isinstance(source, Path) else cfg.model_id} is "
                    f"{cfg.num_layers} layers x {cfg.num_heads} heads, "
                    f"model {model.model_id} has {model.num_layers} x {model.num_heads}"
                )
            self.config = cfg

    def layer_patterns(self, layer: int, num_heads: int) -> list[HeadPattern]:
        if self.config is None:
            return [self.options.default] * num_heads
        if not 0 <= layer < self.config.num_layers:
            raise ValueError(f"layer {layer} outside the pattern config's {self.config.num_layers} layers")
        return self.config.patterns[layer]

    def take_kept(self) -> list[LayerPairs]:
        out, self.kept = self.kept, []
        return out

    def space(self, meta: LayoutMeta, window: int | None, two_d: bool) -> Space:
        """Coordinate tables, built once per prompt (and window, and space kind)."""
        if meta is not self._meta:
            self._meta, self._spaces = meta, {}
        key = (window, two_d)
        if key not in self._spaces:
            with self.overhead.measure("index_metadata", meta.device):
                self._spaces[key] = Space.build(meta, window, two_d)
        return self._spaces[key]

    def prefill(self, q, k, v, meta, call):
        out, kept = self.attend(self.layer_patterns(call.layer_idx, q.shape[0]), q, k, v, meta, call)
        self.kept.append(LayerPairs(call.layer_idx, kept))
        return out

    def attend(
        self,
        patterns: list[HeadPattern],
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: LayoutMeta,
        call: LayerCall,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of every head under its pattern -> (out ``[Hq, S, D]``, kept pairs ``[Hq]``)."""
        return self.execute(self.plan(patterns, q, k, v, meta, call), q, k, v, meta, call)

    def plan(
        self,
        patterns: list[HeadPattern],
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: LayoutMeta,
        call: LayerCall,
    ) -> Plan:
        """Run-time part before attention: permutation to the modality space and pattern estimation."""
        Hq = q.shape[0]
        if len(patterns) != Hq:
            raise ValueError(f"{len(patterns)} head patterns for {Hq} query heads")
        G = Hq // k.shape[0]
        dev = q.device
        dense = [h for h, p in enumerate(patterns) if p.pattern == "dense"]
        launches = []
        for two_d in (False, True):
            heads = [
                h for h, p in enumerate(patterns) if p.pattern != "dense" and (p.boundary == "2d_boundary") == two_d
            ]
            if not heads:
                continue
            sp = self.space(meta, call.window, two_d)
            hidx = torch.tensor(heads, device=dev)
            with self.overhead.measure("permutation", dev):
                qs = sp.gather(q, hidx) if two_d else q
                ks, vs = sp.gather(k), sp.gather(v)
            launch = _Launch(
                sp,
                heads,
                [patterns[h] for h in heads],
                qs,
                ks,
                vs,
                torch.arange(len(heads), device=dev) if two_d else hidx,
                hidx // G,
            )
            with self.overhead.measure("pattern_estimation", dev):
                launches.append((launch, build_index(launch, self.options, call.scale)))
        return Plan(dense, launches)

    def execute(
        self, plan: Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, call: LayerCall
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention proper under a plan -> (out ``[Hq, S, D]``, kept pairs ``[Hq]``)."""
        G = q.shape[0] // k.shape[0]
        out = torch.empty_like(q)
        kept = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
        if plan.dense:
            idx = torch.tensor(plan.dense, device=q.device)
            out[idx] = dense_prefill(q[idx], k[idx // G], v[idx // G], meta, call)
            kept[idx] = base_pair_count(meta, call.window)
        for launch, index in plan.launches:
            o, c = sparse_attention(launch.q, launch.k, launch.v, launch.space, index, call.scale, self.options.backend)
            hidx = torch.tensor(launch.heads, device=q.device)
            with self.overhead.measure("permutation", q.device):
                out[hidx] = launch.space.scatter(o)
            kept[hidx] = c.sum(1, dtype=torch.int64)
        return out, kept


@dataclass(frozen=True)
class Plan:
    """What :meth:`MMInference.plan` estimated for one layer call: dense heads, and per space the launch
    (heads, q/k/v in its coordinates) with its :class:`SparseIndex`."""

    dense: list[int]
    launches: list[tuple[_Launch, SparseIndex]]


# -------------------------------------------------------------------------------- offline search


class PatternSearch(AttentionMethod):
    """The offline per-head choice from one sample (MInference's ``is_search`` pass). Runs the model densely;
    on each layer tries every candidate on the real q/k/v and keeps, per head, the lowest output NMSE (over
    all rows) among candidates within ``max_density``; when none fits, the sparsest candidate."""

    name = "mminference_search"
    description = "Offline per-head pattern search for method mminference (one sample, dense forward)"
    Options = SearchOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.choices: dict[int, list[HeadPattern]] = {}
        self.num_tokens = 0
        est = {f: getattr(self.options, f) for f in EstimationOptions.model_fields}
        self._mm = MMInference(MMInference.Options(**est))

    def prefill(self, q, k, v, meta, call):
        ref = dense_prefill(q, k, v, meta, call)
        base = max(base_pair_count(meta, call.window), 1)
        dt = torch.promote_types(q.dtype, torch.float32)
        norm = ref.to(dt).pow(2).sum((1, 2)).clamp(min=1e-30)
        best: list[tuple[tuple[int, float], float, float, HeadPattern]] = [
            ((2, 0.0), 0.0, 0.0, self.options.candidates[0])
        ] * q.shape[0]
        for cand in self.options.candidates:
            out, kept = self._mm.attend([cand] * q.shape[0], q, k, v, meta, call)
            nmse = ((out.to(dt) - ref.to(dt)).pow(2).sum((1, 2)) / norm).tolist()
            density = (kept.double() / base).tolist()
            for h in range(q.shape[0]):
                # within budget: lowest NMSE wins; none within budget: the sparsest wins
                key = (0, nmse[h]) if density[h] <= self.options.max_density else (1, density[h])
                if key < best[h][0]:
                    best[h] = (key, nmse[h], density[h], cand)
        self.choices[call.layer_idx] = [c.model_copy(update={"nmse": e, "density": d}) for _, e, d, c in best]
        self.num_tokens = meta.length
        return ref

    def result(self, sample_id: str) -> PatternConfig:
        """The chosen patterns as a config (after one prefill of the sample)."""
        if self.model is None:
            raise RuntimeError("setup() first")
        missing = [i for i in range(self.model.num_layers) if i not in self.choices]
        if missing:
            raise RuntimeError(f"no search result for layers {missing}: run one prefill of the sample first")
        from bsight.kernels.sparsity.artifacts import tool_version

        return PatternConfig(
            model_id=self.model.model_id,
            model_revision=self.model.revision,
            num_layers=self.model.num_layers,
            num_heads=self.model.num_heads,
            patterns=[self.choices[i] for i in range(self.model.num_layers)],
            search=SearchInfo(
                sample=sample_id,
                num_tokens=self.num_tokens,
                max_density=self.options.max_density,
                candidates=self.options.candidates,
            ),
            tool_version=tool_version(),
        )


def search_pattern_config(
    adapter: ModelAdapter, sample: Sample, options: SearchOptions | dict | None = None
) -> PatternConfig:
    """Offline per-head pattern choice from one sample through a loaded adapter; save the result with
    ``.save(path)`` and pass the path as method ``mminference``'s ``pattern_config``. From a config: the
    ``search`` step of job ``baselines`` (it asks :meth:`MMInference.search`). The prefill skips the LM head
    (``adapter.prefill``): only the attention layers matter here."""
    search = PatternSearch(options)
    search.setup(adapter.info)
    with torch.no_grad():
        adapter.prefill(adapter.prepare(sample), search)
    return search.result(sample.id)


@hookimpl
def bsight_attention_methods():
    return [MMInference]
