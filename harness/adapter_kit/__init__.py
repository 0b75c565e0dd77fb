"""The adapter kit: what an adapter author needs to check an adapter, installed with bsight.

* :mod:`~bsight.harness.adapter_kit.tiny_vlms` - tiny random-weight checkpoints of transformers' VLM classes in
  the exact on-disk schema (:data:`~bsight.harness.adapter_kit.tiny_vlms.BUILDERS` by ``model_type``);
* :mod:`~bsight.harness.adapter_kit.reference_masks` - the independent side of the mask checks: the model on
  transformers' SDPA with explicit per-head boolean masks;
* :mod:`~bsight.harness.adapter_kit.prompts` - interleaved samples with random images, padded batches.

``bsight check-adapter NAME`` runs the adapter contract on any adapter with these; tests import them too.
The kit needs transformers and PIL only (no torchvision).
"""
