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

Scoring protocols (``protocol`` option; see ``plugins/tasks/protocols.py``):

- ``bsight`` (default): the prompt above, greedy, 64 new tokens, the layered extractor.
- ``upstream``: the same prompt; greedy with 1,024 new tokens, as the authors run their models
  (TIGER-AI-Lab/Mantis ``examples/run_mantis.py``: max_new_tokens 1024, num_beams 1, do_sample False; ``eval.py``
  leaves decoding to each model wrapper); extraction ``get_prediction`` of ``mantis/benchmark/eval.py``
  (:func:`bsight.harness.upstream_answers.mantis_prediction`; short answers: ``parse_answer``, then equality).
- ``lmms-eval``: EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/mantis/utils.py`` (``mantis_doc_to_text``): the
  question, then "\\nAnswer with the option's letter from the given choices directly.", then the ``options``
  list formatted as Python formats a list (``f"{option}"``: "['A', 'B']"; the options are not lettered); the
  short-answer template as above; images at their ``<image>`` tags. ``mantis.yaml``'s ``generation_kwargs``:
  max_new_tokens 64, temperature 0.2, do_sample True: this protocol *samples*, seeded per sample by the
  accuracy job (plain temperature sampling, top_p 1, top_k off). Extraction as ``upstream`` (lmms-eval's
  ``get_prediction`` has the same steps).
"""

from __future__ import annotations

from typing import Any

from bsight.harness.answers import extract_short_answer
from bsight.harness.interfaces import Decoding, Extraction, Sample
from bsight.harness.upstream_answers import mantis_prediction
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
        task_name = "mantis"
        protocols = ("upstream", "lmms-eval", "bsight")
        source: str = HUB_ID
        config: str | None = "mantis_eval"
        split: str = "test"

    hub_id = HUB_ID
    id_field = "id"
    subtask_field = "category"
    required = ("id", "question_type", "question", "images", "options", "answer", "category")
    headline = "micro"
    decodings = {
        "bsight": Decoding(64),  # lmms-eval's budget, greedy
        "upstream": Decoding(1024),  # examples/run_mantis.py: 1024 new tokens, greedy
        "lmms-eval": Decoding(64, temperature=0.2),  # mantis.yaml: 64 new tokens, temperature 0.2, do_sample
    }

    def build(self, row: dict[str, Any], ctx: RowContext) -> Sample:
        kind = ctx.text(row, "question_type")
        question = ctx.text(row, "question")
        answer = ctx.text(row, "answer")
        images = ctx.images(row, "images")
        if kind == "multi-choice":
            options = ctx.options(row, "options")
            letters = ctx.letters(len(options), "options")
            if self.protocol == "lmms-eval":
                prompt = MULTI_CHOICE.format(question=question) + str(list(options))
            else:
                for letter, option in zip(letters, options):
                    labelled = any(f"{letter}{d}" in option.upper() for d in "):.")
                    question += f"\n {option}" if labelled else f"\n ({letter}) {option}"
                prompt = MULTI_CHOICE.format(question=question)
            gold = _gold_letter(answer, len(options), ctx)
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
            meta={
                "question_type": kind,
                "data_source": row.get("data_source"),
                "num_images": len(images),
                "raw_options": list(row.get("options") or []) if kind == "multi-choice" else [],
            },
        )

    def extract(self, generation: str, sample: Sample) -> Extraction:
        if self.protocol in ("upstream", "lmms-eval"):
            if sample.options:
                return mantis_prediction(generation, sample.meta["raw_options"])
            return extract_short_answer(generation)  # Mantis' parse_answer; scored by equality
        return super().extract(generation, sample)


def _gold_letter(answer: str, num_options: int, ctx: RowContext) -> str:
    """Mantis' reading of a gold answer: strip "()" and blanks; if more than one character is left, its first
    letter (eval.py, ``get_prediction``)."""
    ref = answer.strip("()\n ")
    if len(ref) != 1:
        ref = next((c for c in ref if c.isalpha()), ref)
    return ctx.letter(ref, "answer", num_options)
