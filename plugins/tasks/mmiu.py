"""MMIU (Meng et al. 2024): 11,698 multiple-choice questions over 52 multi-image tasks, the benchmark the
BlindSight paper characterizes attention on.

Data: hub ``FanqingM/MMIU-Benchmark``, split ``test`` (``all.parquet``), one row per question with fields
``task``, ``visual_input_component``, ``source``, ``options`` ("A: ...\\nB: ..."), ``question``, ``context``,
``input_image_path`` (paths like ``./Low-level-semantic/<task>/<task>_0_0.jpg``) and ``output`` (the gold
letter). The images are not in the parquet: they ship as seven zip archives in the same hub repository
(``2D-spatial.zip``, ``3D-spatial.zip``, ``Continuous-temporal.zip``, ``Discrete-temporal.zip``,
``High-level-obj-semantic.zip``, ``High-level-sub-semantic.zip``, ``Low-level-semantic.zip``); each extracts
into the folder named after it, and the paths resolve against the folder holding those folders
(``image_root``; by default the local copy's own folder). The GitHub repository's ``VLMEvalKit/all.json``
(same records) loads too.

Prompt, as OpenGVLab/MMIU builds it (``VLMEvalKit/test_qwen3_vl.py``, same logic as the original evaluation
script): every image first, then ``question + "\\n" + context`` for the tasks in ``TASKS_QUESTION_FIRST``
and ``context + "\\n" + question`` otherwise, then ``"\\nPlease answer the option directly like A,B,C,D..."``.
The context already lists the options. Upstream's headline score is the mean of per-task accuracies
(``evaluate_correct.py``), hence ``headline = "macro"``.

Scoring protocols (``protocol`` option; see ``plugins/tasks/protocols.py``); lmms-eval has no MMIU task
(EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks`` holds none), so ``lmms-eval`` is not offered:

- ``bsight`` (default): the prompt above, greedy, 16 new tokens, the layered extractor.
- ``upstream``: the same prompt; generation as ``VLMEvalKit/test_qwen3_vl.py`` calls its model (max_tokens
  1024, temperature 0.7): this protocol *samples*, seeded per sample by the accuracy job. Extraction:
  ``evaluate.py`` takes a reply that is one letter a..n after trimming ".,()"; any other reply goes to an LLM
  judge (GPT-4o-mini picks the most similar option or Z). The judge needs the network, so the closest
  deterministic rule stands in for it - the layered extractor, its rule named ``judge_substitute:...``
  (:func:`bsight.harness.upstream_answers.mmiu_choice`); ``evaluate_correct.py``'s substring test against the
  gold letter is equality for one letter.
"""

from __future__ import annotations

import re
from typing import Any

from bsight.harness.interfaces import Decoding, Extraction, Sample, TextPart
from bsight.harness.upstream_answers import mmiu_choice
from bsight.plugins.tasks.hf_multiple_choice import BenchmarkOptions, HFBenchmark, RowContext

HUB_ID = "FanqingM/MMIU-Benchmark"

# Tasks whose prompt puts the question before the context (OpenGVLab/MMIU, `tasks_exist`).
TASKS_QUESTION_FIRST = frozenset(
    {
        "person_reid",
        "multiple_image_captioning",
        "spot_the_similarity",
        "face_retrieval",
        "sketch2image_retrieval",
        "handwritten_retrieval",
        "spot_the_diff",
        "image2image_retrieval",
        "vehicle_retrieval",
        "text2image_retrieval",
        "general_action_recognition",
        "video_captioning",
        "next_img_prediction",
        "temporal_ordering",
        "meme_vedio_understanding",
        "action_quality_assessment",
        "temporal_localization",
        "mevis",
        "ravens_progressive_matrices",
        "threed_indoor_recognition",
        "point_tracking",
        "threed_cad_recognition",
        "single_object_tracking",
    }
)
INSTRUCTION = "\nPlease answer the option directly like A,B,C,D..."
_OPTION_LINE = re.compile(r"^([A-Z])\s*[:.]\s?(.*)$")


def parse_options(text: str, ctx: RowContext) -> list[str]:
    """MMIU's ``options`` string ("A: ...\\nB: ...") as option texts; a line that starts no option continues
    the previous one. Letters must run A, B, C, ... without gaps."""
    options: list[str] = []
    for line in text.strip().split("\n"):
        m = _OPTION_LINE.match(line.strip())
        if m and m.group(1) == chr(ord("A") + len(options)):
            if options and not options[-1].strip():
                ctx.fail("options", f"option {chr(ord('A') + len(options) - 1)} is empty")
            options.append(m.group(2).strip())
        elif options:
            options[-1] += "\n" + line
        else:
            ctx.fail("options", f"expected lines 'A: ...', 'B: ...', got {text[:60]!r}")
    if options and not options[-1].strip():
        ctx.fail("options", f"option {chr(ord('A') + len(options) - 1)} is empty")
    return options


class MMIU(HFBenchmark):
    name = "mmiu"
    description = (
        "MMIU multi-image understanding: 52 tasks, 11,698 multiple-choice questions (hub FanqingM/MMIU-Benchmark)"
    )

    class Options(BenchmarkOptions):
        task_name = "mmiu"
        protocols = ("upstream", "bsight")
        source: str = HUB_ID
        split: str = "test"

    hub_id = HUB_ID
    id_field = None  # MMIU rows carry no id: the row index in the split is the id
    subtask_field = "task"
    required = ("task", "options", "question", "context", "input_image_path", "output")
    headline = "macro"
    decodings = {
        "bsight": Decoding(16),
        "upstream": Decoding(1024, temperature=0.7),  # VLMEvalKit/test_qwen3_vl.py: max_tokens 1024, temperature 0.7
    }
    image_hint = (
        "MMIU's images ship as zip archives in the hub repository (2D-spatial.zip, ...); extract each into the "
        "folder named after it and pass the folder that holds them as `image_root`."
    )

    def build(self, row: dict[str, Any], ctx: RowContext) -> Sample:
        task = ctx.text(row, "task")
        question = ctx.text(row, "question")
        context = ctx.text(row, "context", allow_empty=True)
        options = parse_options(ctx.text(row, "options"), ctx)
        answer = ctx.letter(ctx.text(row, "output"), "output", len(options))
        paths = ctx.texts(row, "input_image_path")
        images = [ctx.image(p, f"input_image_path[{k}]") for k, p in enumerate(paths)]
        text = f"{question}\n{context}" if task in TASKS_QUESTION_FIRST else f"{context}\n{question}"
        relationship = paths[0].lstrip("./").split("/")[0] if paths[0].startswith("./") else ""
        return Sample(
            id=ctx.sample_id,
            task=self.name,
            subtask=ctx.subtask,
            parts=[*images, TextPart(text=text + INSTRUCTION)],
            options=options,
            answer=answer,
            meta={
                "relationship": relationship,
                "source": row.get("source"),
                "visual_input_component": row.get("visual_input_component"),
                "num_images": len(images),
            },
        )

    def extract(self, generation: str, sample: Sample) -> Extraction:
        if self.protocol == "upstream":
            return mmiu_choice(generation, sample.options)
        return super().extract(generation, sample)
