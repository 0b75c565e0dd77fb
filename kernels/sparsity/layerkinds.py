"""What each decoder layer of a language tower computes, for hybrid models (issue 15).

BlindSight's categories are masks on softmax attention. A hybrid model mixes such layers with layers that
are not softmax attention, which have no categories and are never characterized or counted as attention:

* ``attention`` - softmax attention over the layer's own keys and values (full, sliding or chunked window);
* ``shared_kv`` - softmax attention whose keys and values are another layer's (Gemma 3n / Gemma 4
  ``num_kv_shared_layers``). Its queries are its own, so its heads have their own categories: it is
  characterized, gets categories in a head map and counts as attention in FLOPs (QK^T and PV are computed);
  only its KV cache is not its own;
* ``linear`` - not softmax attention: linear attention (Qwen3.5's Gated DeltaNet), Mamba / SSM and
  convolution mixers. No categories, no characterization, no attention FLOPs; methods never see it.

``layer_kinds == []`` everywhere means "every layer is ``attention``" (artifacts written before hybrids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

LayerKind = Literal["attention", "shared_kv", "linear"]
LAYER_KINDS: tuple[str, ...] = ("attention", "shared_kv", "linear")
SOFTMAX_KINDS: frozenset[str] = frozenset({"attention", "shared_kv"})

# transformers' ``config.layer_types`` values (5.x): the ones that are softmax attention, and the ones that are not
_SOFTMAX_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention", "global", "local"}
_LINEAR_TYPES = {"linear_attention", "mamba", "mamba2", "conv", "ssm", "recurrent", "rnn", "moe_linear"}


def is_softmax(kind: str) -> bool:
    return kind in SOFTMAX_KINDS


def resolve(kinds: Sequence[str], num_layers: int) -> list[str]:
    """``kinds`` as one entry per layer: ``[]`` means all ``attention``; any other length is an error."""
    if not kinds:
        return ["attention"] * num_layers
    if len(kinds) != num_layers:
        raise ValueError(f"{len(kinds)} layer kinds for {num_layers} layers")
    bad = sorted(set(kinds) - set(LAYER_KINDS))
    if bad:
        raise ValueError(f"unknown layer kinds {bad}; allowed: {list(LAYER_KINDS)}")
    return list(kinds)


def softmax_layers(kinds: Sequence[str], num_layers: int) -> list[int]:
    """Indices of the softmax-attention layers (``attention`` and ``shared_kv``)."""
    return [i for i, k in enumerate(resolve(kinds, num_layers)) if is_softmax(k)]


def kind_counts(kinds: Sequence[str], num_layers: int) -> dict[str, int]:
    """How many layers of each kind, every kind listed (zeros included), in :data:`LAYER_KINDS` order."""
    full = resolve(kinds, num_layers)
    return {k: full.count(k) for k in LAYER_KINDS}


def describe(kinds: Sequence[str], num_layers: int) -> str:
    """E.g. ``"24 layers: 6 attention, 18 linear"`` (kinds with no layer left out)."""
    counts = kind_counts(kinds, num_layers)
    return f"{num_layers} layers: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)


def require_softmax(kinds: Sequence[str], num_layers: int, who: str) -> list[int]:
    """The softmax-attention layers; a model without any is a clear error (nothing for BlindSight to do)."""
    layers = softmax_layers(kinds, num_layers)
    if not layers:
        raise ValueError(
            f"{who} has no softmax-attention layer ({describe(kinds, num_layers)}): BlindSight's masks apply to "
            "softmax attention only, so there is nothing to characterize, count or sparsify"
        )
    return layers


def first_mismatch(expected: Sequence[str], actual: Sequence[str], num_layers: int) -> int | None:
    """The first layer whose kind differs between two per-layer kind lists (``[]`` = all attention)."""
    a, b = resolve(expected, num_layers), resolve(actual, num_layers)
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def kinds_from_layer_types(
    layer_types: Sequence[str] | None, num_layers: int, kv_shared: Sequence[bool] | None = None
) -> list[str]:
    """Layer kinds from a transformers text config's ``layer_types`` (None: all softmax attention) and, for
    models with KV sharing, which layers reuse another layer's keys and values. An unknown layer type is an
    error that names it, so a new mixer is never silently taken for softmax attention."""
    kinds = []
    for i in range(num_layers):
        kind = "attention"
        if layer_types is not None:
            t = str(layer_types[i])
            if t in _LINEAR_TYPES:
                kind = "linear"
            elif t not in _SOFTMAX_TYPES:
                raise ValueError(
                    f"layer {i} has type {t!r}, which bsight does not know to be softmax attention or not; "
                    f"known softmax types: {sorted(_SOFTMAX_TYPES)}, non-softmax: {sorted(_LINEAR_TYPES)} "
                    "(an adapter can override layer_kinds())"
                )
        if kind == "attention" and kv_shared is not None and kv_shared[i]:
            kind = "shared_kv"
        kinds.append(kind)
    return kinds
