"""MUIRBench (Wang et al. 2024): 2,600 multiple-choice questions over 12 multi-image tasks, half of them
unanswerable variants of the other half.

Data: hub ``MUIRBENCH/MUIRBENCH``, split ``test`` (``data/test-*.parquet``) with fields ``idx``, ``task``,
``image_relation``, ``image_type``, ``question`` and ``options`` (both may hold ``<image>`` tags: some
options are images), ``answer`` (a letter), ``image_list`` (the images, in tag order) and
``counterpart_idx`` (the paired answerable/unanswerable item). lmms-eval's ``muirbench`` task and
VLMEvalKit's ``MUIRDataset`` read the same data.

Prompt, as the MuirBench authors publish it for consistent evaluation (muirbench/MuirBench
``eval/utils/preprocess.py``, ``create_prompt`` with the hint): "Question: ...", "Choices:", "(A) ...", the hint
"Please provide the correct option letter, such as A, B, C, D, directly." and "Answer:", one per line. Images
go at their ``<image>`` tags as VLMEvalKit's ``MUIRDataset.split_MUIR`` places them (images without a tag
go first instead of being dropped). Scoring is over samples (``headline = "micro"``).

Scoring protocols (``protocol`` option; see ``plugins/tasks/protocols.py``):

- ``bsight`` (default): the prompt above, greedy, 16 new tokens, the layered extractor.
- ``upstream``: the same prompt (muirbench/MuirBench ``eval/utils/preprocess.py``) and the MMMU parser the
  authors ship (``eval/utils/postprocess.py``, ``parse_multi_choice_response``), whose random-letter fallback is
  replaced by "unparsed" (:func:`bsight.harness.upstream_answers.mmmu_choice`). The repository publishes no
  generation settings: greedy, 16 new tokens, as lmms-eval.
- ``lmms-eval``: EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/muirbench/utils.py`` (``muir_doc_to_text``):
  the question, a newline, the options as "A. ..." lines, then the post-prompt of ``muirbench.yaml``
  ("\\nAnswer with the option's letter from the given choices directly."); images at their ``<image>`` tags;
  ``generation_kwargs`` max_new_tokens 16, temperature 0, no sampling; extraction ``^\\s*([A-Z])\\.`` else the raw
  reply, which must equal the gold letter (:func:`bsight.harness.upstream_answers.lmms_eval_dotted_letter_or_raw`).
"""

from __future__ import annotations

from typing import Any

from bsight.harness.answers import option_letters
from bsight.harness.interfaces import Decoding, Extraction, Sample
from bsight.harness.upstream_answers import lmms_eval_dotted_letter_or_raw, mmmu_choice
from bsight.plugins.tasks.hf_multiple_choice import BenchmarkOptions, HFBenchmark, RowContext, interleave

HUB_ID = "MUIRBENCH/MUIRBENCH"
HINT = "Hint: Please provide the correct option letter, such as A, B, C, D, directly."
LMMS_EVAL_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def create_prompt(question: str, options: list[str]) -> str:
    """MuirBench's ``create_prompt(sample, use_hint=True)``."""
    choices = "\n".join(["Choices:", *(f"({letter}) {o}" for letter, o in zip(option_letters(len(options)), options))])
    return "\n".join([f"Question: {question}", choices, HINT, "Answer:"]).strip()


def lmms_eval_prompt(question: str, options: list[str]) -> str:
    """lmms-eval's ``muir_doc_to_text`` with ``muirbench.yaml``'s empty pre-prompt and its post-prompt."""
    choices = "\n".join(f"{letter}. {o}" for letter, o in zip(option_letters(len(options)), options))
    return f"{question}\n{choices}{LMMS_EVAL_POST_PROMPT}"


class MuirBench(HFBenchmark):
    name = "muirbench"
    description = "MUIRBench robust multi-image understanding: 12 tasks, 2,600 questions (hub MUIRBENCH/MUIRBENCH)"

    class Options(BenchmarkOptions):
        task_name = "muirbench"
        protocols = ("upstream", "lmms-eval", "bsight")
        source: str = HUB_ID
        split: str = "test"

    hub_id = HUB_ID
    id_field = "idx"
    subtask_field = "task"
    required = ("idx", "task", "question", "options", "answer", "image_list")
    headline = "micro"
    decodings = {  # lmms-eval's generation_kwargs for muirbench: 16 tokens, greedy
        "bsight": Decoding(16),
        "upstream": Decoding(16),
        "lmms-eval": Decoding(16),
    }

    def build(self, row: dict[str, Any], ctx: RowContext) -> Sample:
        question = ctx.text(row, "question")
        options = ctx.options(row, "options")
        answer = ctx.letter(ctx.text(row, "answer"), "answer", len(options))
        images = ctx.images(row, "image_list")
        return Sample(
            id=ctx.sample_id,
            task=self.name,
            subtask=ctx.subtask,
            parts=interleave(self.prompt(question, options), images, ctx, "question/options"),
            options=options,
            answer=answer,
            meta={
                "image_relation": row.get("image_relation"),
                "image_type": row.get("image_type"),
                "counterpart_idx": row.get("counterpart_idx"),
                "num_images": len(images),
            },
        )

    def prompt(self, question: str, options: list[str]) -> str:
        if self.protocol == "lmms-eval":
            return lmms_eval_prompt(question, options)
        return create_prompt(question, options)

    def extract(self, generation: str, sample: Sample) -> Extraction:
        if self.protocol == "upstream":
            return mmmu_choice(generation, sample.options)
        if self.protocol == "lmms-eval":
            return lmms_eval_dotted_letter_or_raw(generation)
        return super().extract(generation, sample)
