"""BlindSight's method made exact: layouts, masks, metadata, FLOPs, characterization and head maps.

This subpackage is the single source of truth for the semantics in DESIGN.md section 1; the Triton kernel,
the reference attention, the adapters and the baselines all build on it.
"""

from .categories import SPARSE_CATEGORIES, Category
from .layout import LayoutError, LayoutSpec, PromptLayout, SinkPolicy, Span, layout_from_ids, layouts_from_batch
from .metadata import LayoutMeta

__all__ = [
    "Category",
    "SPARSE_CATEGORIES",
    "LayoutError",
    "LayoutMeta",
    "LayoutSpec",
    "PromptLayout",
    "SinkPolicy",
    "Span",
    "layout_from_ids",
    "layouts_from_batch",
]
