"""``bsight prompts CONFIG --model M --task T [--limit N]``: the exact model input of each sample, as a researcher
checks it before trusting a number (lmms-eval's ``--log_samples`` is the anchor).

For each sample the adapter's ``prepare`` builds the inputs the accuracy job feeds the model; their token ids
are decoded with the adapter's tokenizer, special tokens included, and each image segment (boundary tokens
included) is shown as one marker ``<image k: N tokens>`` so that the text stays readable. The header gives the
task's scoring protocol and generation settings. Floor 5 (run machinery): the accuracy job imports
:func:`prompt_record` for the per-sample prompt hash and length.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bsight.harness.interfaces import ImagePart

if TYPE_CHECKING:
    from bsight.harness.interfaces import ModelAdapter, Prepared, Sample, Task

DEFAULT_MAX_NEW_TOKENS = 16  # the accuracy job's default for tasks that declare none (kept equal to it)


@dataclass(frozen=True)
class PromptRecord:
    """One sample's model input: the decoded text (images collapsed), its SHA-256 and its length in tokens."""

    text: str
    sha256: str
    num_tokens: int
    image_tokens: tuple[int, ...]  # tokens of each image segment, in order


def _ids(prepared: Prepared) -> list[int]:
    ids = prepared.inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError(f"one prompt at a time, got a batch of {ids.shape[0]}")
    return [int(i) for i in ids[0].tolist()]


def decode_ids(adapter: ModelAdapter, ids: list[int]) -> str:
    """Token ids as text with special tokens kept; adapters without a tokenizer show the ids themselves."""
    tokenizer = getattr(adapter, "tokenizer", None)
    if tokenizer is None:
        return "<ids " + " ".join(map(str, ids)) + ">" if ids else ""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def prompt_record(adapter: ModelAdapter, sample: Sample, prepared: Prepared) -> PromptRecord:
    """The decoded model input of ``prepared`` (one row). Image segments collapse to ``<image k: N tokens>``;
    passage segments (text-only adapters) stay text. The hash is over this text."""
    ids = _ids(prepared)
    layout = prepared.layouts[0]
    images = sum(isinstance(p, ImagePart) for p in sample.parts)
    spans = layout.spans if images else ()
    if images and len(spans) != images:
        raise ValueError(f"sample {sample.id!r}: {images} images but {len(spans)} image segments in the token ids")
    pieces: list[str] = []
    at = layout.valid_start
    for k, span in enumerate(spans):
        pieces.append(decode_ids(adapter, ids[at : span.start]))
        pieces.append(f"<image {k + 1}: {span.length} tokens>")
        at = span.end
    pieces.append(decode_ids(adapter, ids[at : layout.valid_end]))
    text = "".join(pieces)
    return PromptRecord(
        text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        num_tokens=layout.num_valid,
        image_tokens=tuple(s.length for s in spans),
    )


def generation_settings(task: Task, max_new_tokens: int | None = None) -> dict[str, Any]:
    """What the accuracy job generates with for ``task``: protocol, budget, greedy or seeded sampling."""
    decoding = task.decoding()
    budget = max_new_tokens or decoding.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    settings: dict[str, Any] = {"protocol": task.protocol, "max_new_tokens": budget}
    if decoding.greedy:
        settings["decoding"] = "greedy"
    else:
        settings.update(decoding="sampling (seeded per sample)", temperature=decoding.temperature, top_p=decoding.top_p)
    return settings


def render(adapter: ModelAdapter, task: Task, samples: list[Sample], max_new_tokens: int | None = None) -> str:
    """The text ``bsight prompts`` prints: the generation settings, then each sample's exact model input."""
    settings = generation_settings(task, max_new_tokens)
    head = ", ".join(f"{k}={v}" for k, v in settings.items())
    out = [f"# task {task.name}: {head}"]
    for sample in samples:
        rec = prompt_record(adapter, sample, adapter.prepare(sample))
        images = f", images: {len(rec.image_tokens)} ({sum(rec.image_tokens)} tokens)" if rec.image_tokens else ""
        out.append(
            f"\n=== sample {sample.id} (subtask {sample.subtask or '-'}; gold {sample.answer!r}): "
            f"{rec.num_tokens} tokens{images}; sha256 {rec.sha256[:16]}"
        )
        out.append(rec.text)
    return "\n".join(out) + "\n"


def run_prompts(config_path: str, model: str, task_name: str, limit: int | None, max_new_tokens: int | None) -> str:
    """Load the config's model ``model`` and task ``task_name`` (their options validated as ``bsight run`` does;
    the config's jobs are not needed) and render their first ``limit`` samples."""
    from bsight.harness.config import load_model_and_task

    adapter, task = load_model_and_task(config_path, model, task_name)
    samples = []
    for sample in task.samples():
        if limit is not None and len(samples) >= limit:
            break
        samples.append(sample)
    adapter.load()
    return render(adapter, task, samples, max_new_tokens)


def add_parser(sub: Any) -> None:
    """Register ``bsight prompts`` on the CLI's subparsers (one line in :mod:`bsight.harness.cli`)."""
    p = sub.add_parser(
        "prompts",
        help="print the exact decoded model input of a task's samples and the generation settings",
        description="Build each sample's model input as the accuracy job does and print its decoded token ids "
        "(special tokens kept; each image shown as <image k: N tokens>), with the task's scoring protocol and "
        "generation settings. Loads the model's tokenizer and processor (and weights).",
    )
    p.add_argument("config", metavar="CONFIG", help="config whose models and tasks to use")
    p.add_argument("--model", required=True, help="model name from the config's `models:`")
    p.add_argument("--task", required=True, help="task name from the config's `tasks:`")
    p.add_argument("--limit", type=_positive, default=None, help="first N samples (default: all)")
    p.add_argument("--max-new-tokens", type=_positive, default=None, help="budget to show (default: the protocol's)")
    p.set_defaults(func=cmd_prompts)


def cmd_prompts(args: Any) -> int:
    print(run_prompts(args.config, args.model, args.task, args.limit, args.max_new_tokens), end="")
    return 0


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value
