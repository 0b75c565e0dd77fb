"""Former home of the method's data model, kept as the import path plugins already use.

The data model lives in :mod:`bsight.kernels.sparsity` (floor 1); this re-exports its public names so that
``from bsight.harness.sparsity import PromptLayout, SinkPolicy, ...`` keeps working.
"""

from bsight.kernels.sparsity import (
    SPARSE_CATEGORIES,
    Category,
    LayoutError,
    LayoutMeta,
    LayoutSpec,
    PromptLayout,
    SinkPolicy,
    Span,
    layout_from_ids,
    layouts_from_batch,
)

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
