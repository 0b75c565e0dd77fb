"""``bsight check-adapter NAME [--checkpoint DIR]``: the adapter contract, run on any registered adapter.

Checks, in order (each on CPU in float32, on prompts with random images):

``load``             the adapter loads the checkpoint (without ``--checkpoint``: a tiny random checkpoint of its
                     family from :mod:`bsight.harness.adapter_kit.tiny_vlms`);
``hybrid_layers``    the layer kinds the adapter reports (``ModelInfo.layer_kinds``) are the layers that really call
                     the attention interface in a prefill: softmax layers do, linear-attention / Mamba ones don't;
``layout``           per sample, each image's token count in the processor's own output (the runs of image tokens
                     it wrote into the ids) equals the layout reader's segment, and there is one segment per image;
``dense_equals_model`` dense through the bsight bridge == the model on transformers' own SDPA with its own masks;
``category_masks``   each category (uniform head maps, then a random per-head map) == the model run with explicit
                     per-head boolean masks (:mod:`bsight.harness.adapter_kit.reference_masks`);
``generation``       greedy generation under ``dense`` round-trips: its tokens are the argmax of teacher-forced
                     prefill logits over the prompt plus those tokens, and generation under all-dense blindsight
                     gives the same tokens.

It prints a pass/fail table and, for the first failing check, its evidence; the exit status is 0 only when every
check passes (1 when one fails, 2 for usage errors such as an unknown adapter or a checkpoint no adapter loads).
Floor 5 (run machinery): it loads adapters through the plugin registry.
"""

from __future__ import annotations

import argparse
import difflib
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bsight.harness.interfaces import ImagePart, ModelAdapter, Prepared, Sample
from bsight.kernels.dispatch import LayerCall
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.layerkinds import describe
from bsight.kernels.sparsity.layout import PromptLayout
from bsight.kernels.sparsity.metadata import LayoutMeta

TOLERANCE = 1e-4  # float32 logits: dense through the bridge vs the model's own SDPA
SIZES = [[(64, 96), (96, 64), (64, 64)], [(48, 48), (80, 40)]]  # images (height, width) of each sample


class CheckUsageError(ValueError):
    """The command cannot run the checks at all (unknown adapter, unloadable checkpoint)."""


@dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str
    evidence: str = ""
    seconds: float = 0.0


@dataclass
class Subject:
    """What the checks share: the loaded adapter and its samples."""

    adapter: Any
    samples: list[Sample] = field(default_factory=list)
    prepared: list[Prepared] = field(default_factory=list)


class CheckFailed(AssertionError):
    def __init__(self, summary: str, evidence: str = "") -> None:
        super().__init__(summary)
        self.summary, self.evidence = summary, evidence


# ------------------------------------------------------------------------------------ resolving the subject


def model_type_of(checkpoint: Path) -> str:
    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        raise CheckUsageError(f"checkpoint {checkpoint} has no config.json")
    model_type = json.loads(config.read_text()).get("model_type")
    if not model_type:
        raise CheckUsageError(f"{config} names no model_type")
    return str(model_type)


def adapters_by_model_type(registry) -> dict[str, str]:
    """``model_type`` -> adapter name for every registered adapter that declares ``model_types``."""
    out: dict[str, str] = {}
    for name in registry.names("model"):
        for model_type in getattr(registry.get("model", name), "model_types", ()) or ():
            out.setdefault(model_type, name)
    return out


def closest(name: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.0)
    return match[0] if match else None


def resolve_adapter(registry, name: str, checkpoint: Path | None) -> type:
    """The adapter class, checked against the checkpoint's ``model_type`` (clear errors naming what exists)."""
    names = registry.names("model")
    if name not in names:
        near = closest(name, names)
        raise CheckUsageError(
            f"no model adapter {name!r}; registered adapters: {', '.join(names)}"
            + (f" (closest: {near!r})" if near else "")
        )
    cls = registry.get("model", name)
    if checkpoint is not None:
        model_type = model_type_of(checkpoint)
        types = tuple(getattr(cls, "model_types", ()) or ())
        if types and model_type not in types:
            by_type = adapters_by_model_type(registry)
            if model_type in by_type:
                hint = f"adapter {by_type[model_type]!r} loads it"
            else:
                near = closest(model_type, list(by_type))
                hint = (
                    f"no registered adapter loads {model_type!r}; adapters: "
                    + ", ".join(
                        f"{n} ({', '.join(getattr(registry.get('model', n), 'model_types', ()) or ['?'])})"
                        for n in names
                    )
                    + (f"; closest model type: {near!r} (adapter {by_type[near]!r})" if near else "")
                )
            raise CheckUsageError(
                f"{checkpoint} holds a {model_type!r} model, adapter {name!r} loads {', '.join(types)}: {hint}"
            )
    return cls


def tiny_checkpoint(cls: type, directory: Path) -> Path:
    """A tiny random checkpoint of the adapter's family: the adapter's own ``tiny_checkpoint(directory)`` (external
    families), else the kit's builder for one of its model types."""
    from bsight.harness.adapter_kit.tiny_vlms import BUILDERS

    own = getattr(cls, "tiny_checkpoint", None)
    if callable(own):
        return Path(own(directory / cls.name))
    for model_type in getattr(cls, "model_types", ()) or ():
        if model_type in BUILDERS:
            return BUILDERS[model_type](directory / model_type)
    raise CheckUsageError(
        f"adapter {cls.name!r} loads {', '.join(getattr(cls, 'model_types', ()) or ['?'])}, a family the adapter kit "
        f"cannot build a tiny checkpoint of (it knows {', '.join(sorted(BUILDERS))}): pass --checkpoint DIR"
    )


def random_samples(seed: int = 0) -> list[Sample]:
    from bsight.harness.adapter_kit.prompts import interleaved_sample

    rng = np.random.default_rng(seed)
    out = []
    for i, sizes in enumerate(SIZES):
        sample = interleaved_sample(rng, sizes, words=4 + 3 * i, options=["yes", "no"] if i else None)
        out.append(sample.model_copy(update={"id": f"random-{i}"}))
    return out


# ------------------------------------------------------------------------------------------------ checks


class _Recorder:
    """Dense attention that records which layers called the attention interface."""

    def __init__(self) -> None:
        from bsight.plugins.methods.dense import Dense

        class Recording(Dense):
            layers: set[int] = set()

            def prefill(self, q, k, v, meta: LayoutMeta, call: LayerCall):
                self.layers.add(call.layer_idx)
                return super().prefill(q, k, v, meta, call)

        self.method = Recording()
        self.method.layers = set()


def check_hybrid_layers(s: Subject) -> str:
    info = s.adapter.info
    rec = _Recorder()
    s.adapter.prefill(s.prepared[0], rec.method)
    called = sorted(rec.method.layers)
    reported = info.attention_layers()
    if called != reported:
        raise CheckFailed(
            f"adapter reports softmax attention in layers {reported}, the model called attention in {called}",
            f"ModelInfo.layer_kinds = {info.kinds()}; layers that made an attention call in a prefill: {called}. "
            "Layers that are not softmax attention (linear attention, Mamba) must be kind 'linear'.",
        )
    return describe(info.layer_kinds, info.num_layers)


def _inner_runs(ids: list[int], inner: set[int]) -> list[int]:
    runs, n = [], 0
    for t in ids + [-1]:
        if t in inner:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def check_layout(s: Subject) -> str:
    spec = s.adapter.layout_spec()
    inner = set(spec.inner_ids)
    total = 0
    for sample, prep in zip(s.samples, s.prepared):
        layout = prep.layouts[0]
        ids = [int(t) for t in prep.inputs["input_ids"][0].tolist()]
        processor = _inner_runs(ids, inner)  # what the processor wrote: one run of image tokens per image
        edges = int(bool(spec.start_ids)) + int(bool(spec.end_ids))  # a segment holds its boundary tokens
        reader = [sp.length - edges for sp in layout.spans]  # image tokens the layout reader gives each image
        boundaries = [(ids[sp.start] in spec.start_ids, ids[sp.end - 1] in spec.end_ids) for sp in layout.spans]
        images = sum(isinstance(p, ImagePart) for p in sample.parts)
        if processor != reader or len(reader) != images:
            raise CheckFailed(
                f"sample {sample.id}: image token counts differ",
                f"sample {sample.id} ({images} images): processor's image tokens per image {processor}, "
                f"layout reader's segments hold {reader} (segment lengths {[sp.length for sp in layout.spans]})",
            )
        if not all(a and b for a, b in boundaries):
            raise CheckFailed(
                f"sample {sample.id}: a segment does not start/end on the spec's boundary tokens",
                f"spans {[(sp.start, sp.end) for sp in layout.spans]}; ids at the edges "
                f"{[(ids[sp.start], ids[sp.end - 1]) for sp in layout.spans]}; spec {spec.start_ids} / {spec.end_ids}",
            )
        total += len(reader)
    return f"{total} image segments in {len(s.samples)} samples match the processor's counts"


def _model_logits(adapter, prep: Prepared, masks: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    from bsight.harness.adapter_kit import reference_masks

    with torch.no_grad():
        if masks is None:
            with reference_masks.text_attention(adapter.model, "sdpa"):
                return adapter.model(**prep.inputs).logits.float()
        with reference_masks.explicit_masks(adapter.model, masks):
            return adapter.model(**prep.inputs).logits.float()


def _compare(name: str, ours: torch.Tensor, theirs: torch.Tensor, prep: Prepared, sample: Sample) -> float:
    diff = 0.0
    for row, layout in enumerate(prep.layouts):
        lo, hi = layout.valid_start, layout.valid_end
        d = (ours[row, lo:hi] - theirs[row, lo:hi]).abs()
        diff = max(diff, float(d.max()))
        if float(d.max()) > TOLERANCE * (1 + float(theirs[row, lo:hi].abs().max())):
            pos = int(d.max(dim=-1).values.argmax())
            raise CheckFailed(
                f"{name}: sample {sample.id}: logits differ by {float(d.max()):.3g}",
                f"sample {sample.id}, {name}: max |ours - reference| = {float(d.max()):.4g} at position {lo + pos} "
                f"of {layout.num_valid} (tolerance {TOLERANCE} relative); image segments "
                f"{[(sp.start, sp.end) for sp in layout.spans]}",
            )
    return diff


def check_dense(s: Subject) -> str:
    from bsight.plugins.methods.dense import Dense

    worst = 0.0
    for sample, prep in zip(s.samples, s.prepared):
        worst = max(
            worst, _compare("dense", s.adapter.logits(prep, Dense()), _model_logits(s.adapter, prep), prep, sample)
        )
    return f"max |dense - model's own SDPA| = {worst:.2g}"


def check_categories(s: Subject) -> str:
    from bsight.harness.adapter_kit import reference_masks
    from bsight.kernels.sparsity.headmap import HeadMap
    from bsight.plugins.methods.blindsight import Blindsight

    info = s.adapter.info
    sinks = s.adapter.layout_spec().sinks
    maps = [
        (c.label, HeadMap.uniform(info.model_id, info.num_layers, info.num_heads, c, sinks, layer_kinds=info.kinds()))
        for c in Category
    ]
    maps.append(
        (
            "random per-head",
            reference_masks.random_head_map(info.model_id, info.num_layers, info.num_heads, 7, sinks, info.layer_kinds),
        )
    )
    worst = 0.0
    for label, head_map in maps:
        method = Blindsight({"head_map": head_map})
        for sample, prep in zip(s.samples, s.prepared):
            masks = reference_masks.layer_masks(
                prep.layouts, head_map, info.sliding_windows, bidirectional=info.bidirectional_layers
            )
            ours = s.adapter.logits(prep, method)
            worst = max(worst, _compare(f"category {label}", ours, _model_logits(s.adapter, prep, masks), prep, sample))
    return f"{len(maps)} head maps x {len(s.samples)} samples; max |blindsight - explicit masks| = {worst:.2g}"


def check_generation(s: Subject, max_new_tokens: int = 4) -> str:
    from bsight.plugins.methods.blindsight import Blindsight
    from bsight.plugins.methods.dense import Dense
    from bsight.plugins.models.hf_vlm import append_tokens

    adapter, sample, prep = s.adapter, s.samples[0], s.prepared[0]
    if not hasattr(adapter, "generate_ids"):  # a non-transformers adapter: text round trip only
        gen = adapter.generate(prep, Dense(), max_new_tokens)
        if gen.prompt_tokens != prep.layouts[0].num_valid:
            raise CheckFailed("generation reports another prompt length", f"{gen.prompt_tokens} vs {prep.num_tokens}")
        return f"generated {gen.text!r}"
    ids = adapter.generate_ids(prep, Dense(), max_new_tokens).tolist()
    again = adapter.generate_ids(prep, Blindsight({"uniform": "dense"}), max_new_tokens).tolist()
    if ids != again:
        raise CheckFailed(
            "dense and all-dense blindsight generate different tokens", f"dense {ids}, blindsight {again}"
        )
    eos = adapter.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    forced_ids = ids[:-1] if ids and ids[-1] in eos else ids
    if not forced_ids:
        return "generation stopped at once (end of sequence)"
    P, n = prep.inputs["input_ids"].shape[1], len(forced_ids)
    lay = prep.layouts[0]  # the appended tokens are text after the prompt: same segments, n more valid positions
    forced = Prepared(
        append_tokens(prep.inputs, forced_ids),
        [PromptLayout(lay.length + n, lay.spans, lay.valid_start, lay.valid_end + n)],
    )
    logits = adapter.logits(forced, Dense())
    predicted = logits[0, P - 1 : P + n - 1].argmax(-1).tolist()
    if predicted != forced_ids:
        raise CheckFailed(
            "generated tokens are not the argmax of teacher-forced logits",
            f"sample {sample.id}: generated {forced_ids}, teacher-forced argmax {predicted}",
        )
    text = adapter.tokenizer.decode(ids) if getattr(adapter, "tokenizer", None) is not None else ""
    return f"{len(ids)} tokens ({text!r}) round-trip through teacher forcing"


CHECKS: list[tuple[str, Callable[[Subject], str]]] = [
    ("hybrid_layers", check_hybrid_layers),
    ("layout", check_layout),
    ("dense_equals_model", check_dense),
    ("category_masks", check_categories),
    ("generation", check_generation),
]


def run_checks(adapter: ModelAdapter, samples: list[Sample] | None = None) -> list[CheckResult]:
    """Every check on a loaded adapter (the ``load`` check is the caller's); never raises for a failing check."""
    results = []
    subject = Subject(adapter, samples or random_samples())
    t0 = time.perf_counter()
    try:
        subject.prepared = [adapter.prepare(s) for s in subject.samples]
    except Exception as e:  # noqa: BLE001 - a failing prepare fails every check, with its evidence
        evidence = "".join(traceback.format_exception_only(type(e), e)).strip()
        return [CheckResult(name, False, f"prepare() failed: {e}", evidence) for name, _ in CHECKS]
    for name, check in CHECKS:
        t0 = time.perf_counter()
        try:
            results.append(CheckResult(name, True, check(subject), seconds=time.perf_counter() - t0))
        except CheckFailed as e:
            results.append(CheckResult(name, False, e.summary, e.evidence, time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001 - an exception in a check is that check's failure
            evidence = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:]).strip()
            results.append(CheckResult(name, False, f"{type(e).__name__}: {e}", evidence, time.perf_counter() - t0))
    return results


def check_adapter(name: str, checkpoint: Path | None = None, registry=None, workdir: Path | None = None):
    """Resolve, load and check adapter ``name``; returns ``(results, checkpoint used)``."""
    from bsight.harness.plugins import load_registry

    registry = registry or load_registry()
    cls = resolve_adapter(registry, name, checkpoint)
    t0 = time.perf_counter()
    if checkpoint is None:
        workdir = workdir or Path(tempfile.mkdtemp(prefix="bsight-check-"))
        checkpoint = tiny_checkpoint(cls, workdir)
    torch.manual_seed(0)
    try:
        adapter = cls({"checkpoint": str(checkpoint), "dtype": "float32", "device": "cpu"})
        adapter.load()
    except Exception as e:  # noqa: BLE001
        evidence = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:]).strip()
        return [CheckResult("load", False, f"{type(e).__name__}: {e}", evidence, time.perf_counter() - t0)], checkpoint
    info = adapter.info
    load = CheckResult(
        "load",
        True,
        f"{info.model_id}: {describe(info.layer_kinds, info.num_layers)}, {info.num_heads} heads",
        seconds=time.perf_counter() - t0,
    )
    return [load, *run_checks(adapter)], checkpoint


def render(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  result  seconds  detail"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {'PASS' if r.passed else 'FAIL':<6}  {r.seconds:7.1f}  {r.summary}")
    failed = [r for r in results if not r.passed]
    if failed:
        first = failed[0]
        lines += ["", f"first failing check: {first.name}", first.evidence or first.summary]
    lines += ["", f"{sum(r.passed for r in results)}/{len(results)} checks passed"]
    return "\n".join(lines)


def cmd_check_adapter(args: argparse.Namespace) -> int:
    import sys

    torch.set_num_threads(max(1, min(torch.get_num_threads(), args.threads)))
    try:
        results, checkpoint = check_adapter(args.adapter, Path(args.checkpoint) if args.checkpoint else None)
    except CheckUsageError as e:
        print(f"bsight: error: {e}", file=sys.stderr)
        return 2
    print(f"adapter {args.adapter}, checkpoint {checkpoint}")
    print(render(results))
    return 0 if all(r.passed for r in results) else 1


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check-adapter",
        help="run the adapter contract checks (layout, dense == model, masks, generation, hybrid layers)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("adapter", help="registered model adapter name (bsight plugins lists them)")
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint directory; default: a tiny random one of the adapter's family"
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.set_defaults(func=cmd_check_adapter)
