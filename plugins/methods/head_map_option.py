"""What the two head-map methods (``blindsight``, ``flex``) tell jobs about their ``head_map`` option.

Both read a head map from the option ``head_map`` (a file, or the head map itself) or take ``uniform`` (one
category for every head). Jobs never read these options: they ask :meth:`artifacts` and :meth:`with_artifact`.
"""

from __future__ import annotations

from typing import Any, ClassVar

HEAD_MAP = "head_map"


class HeadMapOption:
    """Mixin for :class:`~bsight.harness.interfaces.AttentionMethod` subclasses with a ``head_map`` option."""

    accepts: ClassVar[tuple[str, ...]] = (HEAD_MAP,)

    @classmethod
    def artifacts(cls, options: dict[str, Any]) -> list[tuple[str, str]]:
        value = options.get("head_map")
        return [(HEAD_MAP, str(value))] if isinstance(value, str) else []

    @classmethod
    def with_artifact(cls, options: dict[str, Any], kind: str, value: Any) -> dict[str, Any]:
        if kind != HEAD_MAP:
            raise NotImplementedError(f"method {cls.name!r} takes no {kind} (it accepts: {HEAD_MAP})")  # type: ignore[attr-defined]
        return {**{k: v for k, v in options.items() if k != "uniform"}, "head_map": value}

    def describe(self) -> dict[str, Any]:
        uniform = getattr(self.options, "uniform", None)  # type: ignore[attr-defined]
        if uniform is not None:  # a uniform map is not a characterized one: no head map provenance
            return {"notes": [f"every head {uniform}"]}
        return super().describe()  # type: ignore[misc]
