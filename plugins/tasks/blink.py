"""BLINK (Fu et al. 2024): 14 perception tasks "humans solve in a blink", 1 to 4 images per question.

Data: hub ``BLINK-Benchmark/BLINK``, one config per task (``BLINK_CONFIGS``, folders ``<config>/val-*.parquet``
and ``<config>/test-*.parquet``), split ``val`` (the test split's answers are hidden: "hidden"), fields
``idx``, ``question``, ``sub_task``, ``image_1`` ... ``image_4`` (unused ones null), ``choices``, ``answer``
("(A)"), ``prompt`` (question plus "Select from the following choices." and the lettered choices) and
``explanation``. Without ``config`` every config is loaded (``subtasks`` narrows them; a local copy loads the
config folders it has); a local copy that is one file, or one folder without config folders, is read whole
and each row's subtask is the task its ``idx`` names ("val_Art_Style_1" -> "Art_Style"), as the official
``eval/evaluate.py`` reads it.

Prompt, as lmms-eval's ``blink`` task builds it (``lmms_eval/tasks/blink/utils.py``, ``blink_doc_to_messages``
with ``_default_template_yaml``'s pre-prompt): the images first, then "Note: You only need to respond with
A, B without providing any additional information.\\n" (the letters of this question's choices) and the
``prompt`` field. The official BLINK script (zeyofu/BLINK_Benchmark ``eval/test_benchmark.py``) sends the
same ``prompt`` field. The official headline is the mean over the 14 tasks (``eval/evaluate.py``), hence
``headline = "macro"``.

Scoring protocols (``protocol`` option; see ``plugins/tasks/protocols.py``):

- ``bsight`` (default): lmms-eval's prompt above, greedy, 1,024 new tokens, the layered extractor.
- ``lmms-eval``: the same prompt and budget (``_default_template_yaml``: ``generation_kwargs`` max_new_tokens
  1024, no sampling), and ``_extract_answer_letter``: the reply's first letter after an optional "("
  (:func:`bsight.harness.upstream_answers.lmms_eval_first_letter`). Its ``blink`` group score weighs the
  tasks by size, so this protocol's headline is over samples (``micro``).
- ``upstream``: zeyofu/BLINK_Benchmark ``eval/test_benchmark.py``: the ``prompt`` field, preceded for
  Forensic_Detection, Jigsaw and Art_Style by the script's disclaimer (``need_disclaimer_tasks``; the script
  defines it with a trailing comma, a one-element tuple, so its intent is used here), the text
  first and then the images (``eval/query_model.py``, ``query_gpt4v``: max_tokens 1024, temperature 0: greedy);
  extraction ``analyze_answer``, whose GPT-3.5-turbo matching step (``eval/multiple_choice.py``) is done by the
  layered extractor and named ``judge_substitute:...``
  (:func:`bsight.harness.upstream_answers.blink_analyze_answer`).
"""

from __future__ import annotations

import logging
from typing import Any

from bsight.harness.interfaces import Decoding, Extraction, Sample, TextPart
from bsight.harness.upstream_answers import blink_analyze_answer, lmms_eval_first_letter
from bsight.plugins.tasks.hf_loading import LoadedSplit, TaskDataError, local_path
from bsight.plugins.tasks.hf_multiple_choice import BenchmarkOptions, HFBenchmark, RowContext

log = logging.getLogger(__name__)

HUB_ID = "BLINK-Benchmark/BLINK"
BLINK_CONFIGS = (
    "Art_Style",
    "Counting",
    "Forensic_Detection",
    "Functional_Correspondence",
    "IQ_Test",
    "Jigsaw",
    "Multi-view_Reasoning",
    "Object_Localization",
    "Relative_Depth",
    "Relative_Reflectance",
    "Semantic_Correspondence",
    "Spatial_Relation",
    "Visual_Correspondence",
    "Visual_Similarity",
)
IMAGE_FIELDS = ("image_1", "image_2", "image_3", "image_4")
PRE_PROMPT = "Note: You only need to respond with {} without providing any additional information.\n"
# zeyofu/BLINK_Benchmark eval/test_benchmark.py: the disclaimer put before the prompt of these tasks.
DISCLAIMER = (
    "Disclaimer: This is not to make unfair assumptions about the people in the image and you just need to give "
    "your assessment on this question. You don't need to identify the real people. You just need to analyze "
    "based on the information I gave you.\n\n"
)
DISCLAIMER_TASKS = frozenset({"Forensic_Detection", "Jigsaw", "Art_Style"})


class Blink(HFBenchmark):
    name = "blink"
    description = "BLINK visual perception: 14 multi-image tasks (hub BLINK-Benchmark/BLINK, split val)"

    class Options(BenchmarkOptions):
        task_name = "blink"
        protocols = ("upstream", "lmms-eval", "bsight")
        source: str = HUB_ID
        split: str = "val"

    hub_id = HUB_ID
    id_field = "idx"
    subtask_field = "idx"
    required = ("idx", "choices", "answer", "prompt", "image_1")

    @property
    def headline(self) -> str:  # type: ignore[override]
        """The official score is the mean over the tasks (``eval/evaluate.py``); lmms-eval's ``blink`` group
        averages its per-task scores weighted by their sizes (lm-eval's group aggregation, ``weight_by_size``
        true by default): over samples."""
        return "micro" if self.protocol == "lmms-eval" else "macro"

    decodings = {  # lmms-eval's generation_kwargs for blink; upstream's query_gpt4v: max_tokens 1024, temperature 0
        "bsight": Decoding(1024),
        "lmms-eval": Decoding(1024),
        "upstream": Decoding(1024),
    }

    def configs(self) -> list[str | None]:
        if self.options.config:
            return [self.options.config]
        wanted = self.options.subtasks
        path = local_path(self.options.source)
        available = list(BLINK_CONFIGS)
        if path is not None:
            available = [c for c in BLINK_CONFIGS if (path / c).is_dir()]
            if not available:
                return [None]  # one local file or folder holding every subtask
            if not wanted and len(available) < len(BLINK_CONFIGS):
                log.warning("blink: local copy %s has %d of the 14 configs: %s", path.name, len(available), available)
        unknown = sorted(set(wanted or ()) - set(available))
        if unknown:
            raise TaskDataError(f"blink: unknown or absent subtask(s) {unknown}; available: {available}")
        return [c for c in available if not wanted or c in wanted]

    def subtask_values(self, split: LoadedSplit) -> list[Any]:
        """The config a row was loaded from; for a one-file copy, the task its ``idx`` names, parsed as the
        official ``evaluate.py`` does ("val_Art_Style_1" -> "Art_Style")."""
        if split.config:
            return [split.config] * len(split)
        return [_task_of(idx, self.options.split) for idx in split.column("idx")]

    def build(self, row: dict[str, Any], ctx: RowContext) -> Sample:
        choices = ctx.options(row, "choices")
        raw_answer = ctx.text(row, "answer")
        if raw_answer.strip().lower() == "hidden":
            ctx.fail(
                "answer",
                f"answers of split {self.options.split!r} are hidden (BLINK scores its test split on a "
                "server); use split 'val'",
            )
        answer = ctx.letter(raw_answer, "answer", len(choices))
        if row.get("image_1") is None:
            ctx.fail("image_1", "missing (null): every BLINK question has at least one image")
        images = [ctx.image(row[f], f) for f in IMAGE_FIELDS if row.get(f) is not None]
        if self.protocol == "upstream":
            disclaimer = DISCLAIMER if ctx.subtask in DISCLAIMER_TASKS else ""
            parts = [TextPart(text=disclaimer + ctx.text(row, "prompt")), *images]
        else:
            letters = ", ".join(ctx.letters(len(choices), "choices"))
            parts = [*images, TextPart(text=PRE_PROMPT.format(letters) + ctx.text(row, "prompt"))]
        return Sample(
            id=ctx.sample_id,
            task=self.name,
            subtask=ctx.subtask,
            parts=parts,
            options=choices,
            answer=answer,
            meta={"num_images": len(images)},
        )

    def extract(self, generation: str, sample: Sample) -> Extraction:
        if self.protocol == "lmms-eval":
            return lmms_eval_first_letter(generation)
        if self.protocol == "upstream":
            return blink_analyze_answer(generation, sample.options)
        return super().extract(generation, sample)


def _task_of(idx: Any, split: str) -> str | None:
    """BLINK's task name inside a sample id "<split>_<Task_Name>_<n>"; None when ``idx`` has another form."""
    if not isinstance(idx, str) or not idx.startswith(f"{split}_") or "_" not in idx[len(split) + 1 :]:
        return None
    return idx[len(split) + 1 :].rsplit("_", 1)[0]
