"""Checks a config's values get before pydantic's lax coercion can hide a mistake.

pydantic (lax mode) reads ``limit: true`` as 1 and ``publish_all: "yes"`` as True, and lets NaN and infinity
through a ``float`` field; a NaN in a list of taus then ends up as ``"tau": null`` in a sweep file. These
checks walk the raw (parsed YAML) value along a model's field annotations and name each such field:

* a boolean where an integer is expected, anything but a boolean where a boolean is expected;
* a float that is not finite (NaN, +-inf) anywhere in the value.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel

Loc = tuple[str | int, ...]


def _members(ann: Any) -> list[Any]:
    """The alternatives of an annotation with Annotated and Optional stripped."""
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _members(typing.get_args(ann)[0])
    if origin in (Union, types.UnionType):
        return [m for a in typing.get_args(ann) if a is not type(None) for m in _members(a)]
    return [ann]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def non_finite(value: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Every float inside ``value`` (dicts and lists walked) that is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(loc, f"must be a finite number (got {value})")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, (*loc, str(k)))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in non_finite(v, (*loc, i))]
    return []


def strict_scalars(ann: Any, value: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Booleans given for integers, and non-booleans given for booleans, along ``ann`` (a model, a list or
    dict of them, or a scalar annotation)."""
    members = _members(ann)
    if isinstance(value, bool):
        if any(m is int for m in members) and not any(m is bool for m in members):
            return [(loc, f"must be an integer, not a boolean (got {str(value).lower()})")]
        return []
    if members == [bool] and value is not None:
        return [(loc, f"must be true or false (got {_shown(value)})")]
    out: list[tuple[Loc, str]] = []
    for m in members:
        if isinstance(m, type) and issubclass(m, BaseModel) and isinstance(value, dict):
            for name, field in m.model_fields.items():
                key = field.alias or name
                if key in value:
                    out += strict_scalars(field.annotation, value[key], (*loc, key))
            return out
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin in (list, tuple, set, frozenset) and args and isinstance(value, (list, tuple)):
            fixed = origin is tuple and Ellipsis not in args  # tuple[int, str]: one annotation per place
            for i, v in enumerate(value):
                item = args[i] if fixed and i < len(args) else args[0]
                out += strict_scalars(item, v, (*loc, i))
            return out
        if origin is dict and len(args) == 2 and isinstance(value, dict):
            for k, v in value.items():
                out += strict_scalars(args[1], v, (*loc, str(k)))
            return out
        if origin is Literal:
            continue
    return out


def value_problems(model: type[BaseModel], raw: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """:func:`strict_scalars` and :func:`non_finite` of ``raw`` read as ``model``, each problem once."""
    seen: dict[Loc, str] = {}
    for where, msg in strict_scalars(model, raw, loc) + non_finite(raw, loc):
        seen.setdefault(where, msg)
    return list(seen.items())
