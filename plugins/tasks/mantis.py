"""MANTIS-eval (Jiang et al. 2024): 217 hand-written multi-image questions, mostly multiple choice, some
short answer.

Data: hub ``TIGER-Lab/Mantis-Eval``, config ``mantis_eval``, split ``test``
(``mantis_eval/test-00000-of-00001.parquet``) with fields ``id``, ``question_type`` ("multi-choice" or
"short-answer"), ``question`` (with ``<image>`` tags), ``images`` (a list of images), ``options`` (a list of
strings, sometimes already labelled "(A) ..."), ``answer`` (a letter, maybe parenthesized, or the short
answer), ``data_source`` and ``category``. The Mantis eval script also reads a local JSON of the same records
with ``images`` as paths relative to the JSON file, which loads here too.

Prompt, as TIGER-AI-Lab/Mantis ``mantis/benchmark/eval.py`` builds it: each option appended to the question
as ``"\\n (A) text"`` (or ``"\\n text"`` when the option already carries its letter), then the template
``templates/multi-choice.txt`` ("{question}\\nAnswer with the option's letter from the given choices
directly.") or ``templates/short-answer.txt``; each image at its ``<image>`` tag, images without a tag
first. lmms-eval's ``mantis`` task reads the same hub data. Scoring is over samples (``headline = "micro"``).
"""

from __future__ import annotations

from typing import Any

from bsight.harness.interfaces import Sample
from bsight.plugins.tasks.hf_multiple_choice import BenchmarkOptions, HFBenchmark, RowContext, interleave, strip_label

HUB_ID = "TIGER-Lab/Mantis-Eval"
MULTI_CHOICE = "{question}\nAnswer with the option's letter from the given choices directly."
SHORT_ANSWER = (
    "Given the images, answer the following short answer vqa question:\nQ: {question}\n"
    'You can first give your analysis, and then give your final answer as "Final Answer:"'
)


class MantisEval(HFBenchmark):
    name = "mantis"
    description = "MANTIS-eval: 217 interleaved multi-image questions (hub TIGER-Lab/Mantis-Eval)"

    class Options(BenchmarkOptions):
        source: str = HUB_ID
        config: str | None = "mantis_eval"
        split: str = "test"

    hub_id = HUB_ID
    id_field = "id"
    subtask_field = "category"
    required = ("id", "question_type", "question", "images", "options", "answer", "category")
    headline = "micro"
    default_max_new_tokens = 64  # lmms-eval's generation_kwargs for mantis

    def build(self, row: dict[str, Any], ctx: RowContext) -> Sample:
        kind = ctx.text(row, "question_type")
        question = ctx.text(row, "question")
        answer = ctx.text(row, "answer")
        images = ctx.images(row, "images")
        if kind == "multi-choice":
            options = ctx.texts(row, "options")
            letters = ctx.letters(len(options), "options")
            for letter, option in zip(letters, options):
                labelled = any(f"{letter}{d}" in option.upper() for d in "):.")
                question += f"\n {option}" if labelled else f"\n ({letter}) {option}"
            prompt, gold = MULTI_CHOICE.format(question=question), _gold_letter(answer, len(options), ctx)
            texts = [strip_label(o, letter) for letter, o in zip(letters, options)]
        elif kind == "short-answer":
            prompt, gold, texts = SHORT_ANSWER.format(question=question), answer.strip("()\n "), []
        else:
            ctx.fail("question_type", f"{kind!r} is neither 'multi-choice' nor 'short-answer'")
        return Sample(
            id=ctx.sample_id,
            task=self.name,
            subtask=ctx.subtask,
            parts=interleave(prompt, images, ctx, "question"),
            options=texts,
            answer=gold,
            meta={"question_type": kind, "data_source": row.get("data_source"), "num_images": len(images)},
        )


def _gold_letter(answer: str, num_options: int, ctx: RowContext) -> str:
    """Mantis' reading of a gold answer: strip "()" and blanks; if more than one character is left, its first
    letter (eval.py, ``get_prediction``)."""
    ref = answer.strip("()\n ")
    if len(ref) != 1:
        ref = next((c for c in ref if c.isalpha()), ref)
    return ctx.letter(ref, "answer", num_options)
