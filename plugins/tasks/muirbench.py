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
"""

from __future__ import annotations

from typing import Any

from bsight.harness.answers import option_letters
from bsight.harness.interfaces import Sample
from bsight.plugins.tasks.hf_multiple_choice import BenchmarkOptions, HFBenchmark, RowContext, interleave

HUB_ID = "MUIRBENCH/MUIRBENCH"
HINT = "Hint: Please provide the correct option letter, such as A, B, C, D, directly."


def create_prompt(question: str, options: list[str]) -> str:
    """MuirBench's ``create_prompt(sample, use_hint=True)``."""
    choices = "\n".join(["Choices:", *(f"({letter}) {o}" for letter, o in zip(option_letters(len(options)), options))])
    return "\n".join([f"Question: {question}", choices, HINT, "Answer:"]).strip()


class MuirBench(HFBenchmark):
    name = "muirbench"
    description = "MUIRBench robust multi-image understanding: 12 tasks, 2,600 questions (hub MUIRBENCH/MUIRBENCH)"

    class Options(BenchmarkOptions):
        source: str = HUB_ID
        split: str = "test"

    hub_id = HUB_ID
    id_field = "idx"
    subtask_field = "task"
    required = ("idx", "task", "question", "options", "answer", "image_list")
    headline = "micro"
    default_max_new_tokens = 16  # lmms-eval's generation_kwargs for muirbench

    def build(self, row: dict[str, Any], ctx: RowContext) -> Sample:
        question = ctx.text(row, "question")
        options = ctx.texts(row, "options")
        ctx.letters(len(options), "options")
        answer = ctx.letter(ctx.text(row, "answer"), "answer", len(options))
        images = ctx.images(row, "image_list")
        return Sample(
            id=ctx.sample_id,
            task=self.name,
            subtask=ctx.subtask,
            parts=interleave(create_prompt(question, options), images, ctx, "question/options"),
            options=options,
            answer=answer,
            meta={
                "image_relation": row.get("image_relation"),
                "image_type": row.get("image_type"),
                "counterpart_idx": row.get("counterpart_idx"),
                "num_images": len(images),
            },
        )
