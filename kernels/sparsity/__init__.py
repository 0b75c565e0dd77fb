"""Floor 1, the method's data model: BlindSight (DESIGN.md section 1) made exact, with no plugin, kernel or
run machinery above it. Every other floor builds on it.

* ``layout`` - segments and sinks from token ids; ``metadata`` - O(S) per-prompt tables on the device;
  ``masks`` - FlexAttention-style mask predicates; ``categories`` - the four head categories.
* ``flops`` - exact kept-pair counts, model-level reduction, CDF data.
* ``characterization`` - the stored per-prompt NMSE tables and the prompt-level rule; ``aggregate`` - the
  dataset-level rule and :func:`~.aggregate.build_head_map`; ``headmap`` - the artifact; ``param_sweep`` -
  FLOPs vs fidelity over (tau, delta, gamma); ``artifacts`` - reading JSON artifacts, the tool version.
* ``planted`` - synthetic q, k, v with known categories; ``strategies`` - hypothesis strategies for tests.

Running a model to fill the tables is floor 3 (:mod:`bsight.harness.characterize`, :mod:`bsight.harness.sinks`).
"""

from bsight.kernels.sparsity.categories import SPARSE_CATEGORIES, Category
from bsight.kernels.sparsity.layout import (
    LayoutError,
    LayoutSpec,
    PromptLayout,
    SinkPolicy,
    Span,
    layout_from_ids,
    layouts_from_batch,
)
from bsight.kernels.sparsity.metadata import LayoutMeta

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
