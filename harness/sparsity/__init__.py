"""BlindSight's method made exact: layouts, masks, metadata, FLOPs, characterization and head maps.

This subpackage is the single source of truth for the semantics in DESIGN.md section 1; the Triton kernel,
the reference attention, the adapters and the baselines all build on it.

* ``layout`` - segments and sinks from token ids; ``metadata`` - O(S) per-prompt tables on the device;
  ``masks`` - FlexAttention-style mask predicates; ``categories`` - the four head categories.
* ``flops`` - exact kept-pair counts, model-level reduction, CDF data.
* ``characterize`` - per-layer NMSE tables, the probe, prompt-level selection, the stored result;
  ``aggregate`` - the dataset-level rule and :func:`~.aggregate.build_head_map`; ``headmap`` - the artifact;
  ``sweep`` - FLOPs vs fidelity over (tau, delta, gamma); ``sinks`` - fixed-offset sink discovery.
* ``planted`` - synthetic q, k, v with known categories; ``footprint`` - peak-memory measurement;
  ``figures`` - matplotlib figures; ``strategies`` - hypothesis strategies for tests.

Only the light modules are re-exported here (``characterize`` and the probes import the plugin interfaces,
which import this package).
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
