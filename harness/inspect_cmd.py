"""``bsight inspect CONFIG --model M --task T --sample ID``: where one prompt's attention goes (issue 18).

Runs the model's prefill once through :class:`~bsight.harness.inspect_probe.InspectProbe` (dense attention; the
probe keeps only pooled maps and mass shares, chunked over query rows, never S x S) and writes into ``--out``:

* ``attention-L<layer>.<fmt>`` - per head, the attention matrix average-pooled to ``--bins`` cells a side, image
  segments outlined, each head titled with its category from ``--head-map`` (paper Figs. 2 and 7);
* ``inter-image-share.<fmt>`` - per layer, the share of image queries' attention mass on other images, and the
  inter-image share of the attention computation (Fig. 1b for one prompt);
* ``heads.csv`` / ``heads.md`` - per layer and head: mass on its own image, on other images' sinks, on other
  images' non-sinks, on text (mean over the queries of every image that has an earlier image);
* ``inspect.json`` - all of the above as numbers;
* with ``--images N1,N2,...``: the prompt cut to its first N segments (the text after the last segment, the
  question, kept) for each N, and ``inter-image-vs-images.<fmt>`` (Fig. 1b).

Bad input is refused before any model run: an unknown sample id names the nearest ids; a prompt without image
segments has nothing inter-image to show; a prompt whose estimated memory exceeds what is available is refused
with the estimate. Floor 5 (run machinery).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bsight.harness.config import load_model_and_task
from bsight.harness.inspect_probe import MASS_COLUMNS, InspectProbe, LayerMass, layer_shares, probe_bytes

if TYPE_CHECKING:
    from bsight.harness.interfaces import ModelAdapter, Prepared, Sample, Task
    from bsight.kernels.sparsity.headmap import HeadMap
    from bsight.kernels.sparsity.layout import PromptLayout

GIB = 2**30


class InspectError(ValueError):
    """Bad input to ``bsight inspect`` (exit 2): the message says what to change."""


# ------------------------------------------------------------------------------------------ inputs


def find_sample(task: Task, sample_id: str) -> Sample:
    """The task's sample ``sample_id``; otherwise an error naming the nearest ids."""
    ids = []
    for sample in task.samples():
        if sample.id == sample_id:
            return sample
        ids.append(sample.id)
    if not ids:
        raise InspectError(f"task {task.name!r} has no samples")
    near = difflib.get_close_matches(sample_id, ids, n=5, cutoff=0.0)
    raise InspectError(
        f"task {task.name!r} has no sample {sample_id!r} ({len(ids)} samples); nearest ids: {', '.join(near)}"
    )


def segment_parts(sample: Sample) -> list[int]:
    """Indices of the parts that become segments (images, passages)."""
    return [i for i, p in enumerate(sample.parts) if p.kind in ("image", "passage")]


def first_segments(sample: Sample, n: int) -> Sample:
    """The sample cut to its first ``n`` segments: the parts up to the ``n``-th segment, then the parts after the
    last segment (the question). The gold answer may sit in a dropped segment: this is for inspection only."""
    seg = segment_parts(sample)
    if not 1 <= n <= len(seg):
        raise InspectError(
            f"--images {n}: sample {sample.id!r} has {len(seg)} segments; choose 1..{len(seg)} "
            "(or a task whose prompts hold more images)"
        )
    if n == len(seg):
        return sample
    parts = sample.parts[: seg[n - 1] + 1] + sample.parts[seg[-1] + 1 :]
    return sample.model_copy(update={"id": f"{sample.id}@{n}", "parts": parts})


# ------------------------------------------------------------------------------------------ memory


def available_bytes(device: torch.device) -> int:
    """Free memory where the model runs: the GPU's free memory, else the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryEstimate:
    activations: int  # one layer's working set of the model's own prefill (hidden states, MLP, q/k/v)
    probe: int  # the probe's chunk and pooled maps
    total: int

    def text(self) -> str:
        return (
            f"{size(self.total)} beyond the loaded weights (model activations {size(self.activations)}, "
            f"inspection probe {size(self.probe)})"
        )


def size(n: float) -> str:
    """Bytes in the largest unit that keeps a digit before the point (``1.50 GiB``, ``12.0 MiB``)."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def estimate(adapter: ModelAdapter, length: int, layers: int, bins: int, chunk_bytes: int) -> MemoryEstimate:
    """A conservative estimate of the prefill's extra memory at ``length`` tokens: hidden states, an MLP of 4x
    the width (x3: gate, up, product), q/k/v and the attention output per token, at float32; plus the probe."""
    info = adapter.info
    cfg = getattr(getattr(adapter, "model", None), "config", None)
    cfg = getattr(cfg, "text_config", cfg)
    hidden = int(getattr(cfg, "hidden_size", 0) or info.num_heads * info.head_dim)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    qkvo = (2 * info.num_heads + 2 * info.num_kv_heads) * max(info.layer_head_dims())
    act = 4 * length * (4 * hidden + 3 * inter + 2 * qkvo)
    probe = probe_bytes(info.num_heads, length, layers, bins, chunk_bytes)
    return MemoryEstimate(act, probe, act + probe)


def check_memory(need: MemoryEstimate, length: int, available: int) -> None:
    if need.total > available:
        raise InspectError(
            f"a {length}-token prompt needs about {need.text()}; {size(available)} is available: "
            "inspect a shorter prompt (--images N keeps the first N segments) or a machine with more memory"
        )


# ------------------------------------------------------------------------------------------ running


@dataclass
class Inspection:
    """One prompt's recorded layers."""

    sample_id: str
    layout: PromptLayout
    layers: dict[int, LayerMass]
    computation_share: float  # inter-image share of the attention computation (pairs), full-attention layers
    seconds: float

    @property
    def shares(self) -> dict[int, float]:
        return layer_shares(self.layers.items())


def _device(adapter: ModelAdapter) -> torch.device:
    model = getattr(adapter, "model", None)
    try:
        return next(model.parameters()).device  # type: ignore[union-attr]
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def inspect_prompt(
    adapter: ModelAdapter,
    sample: Sample,
    *,
    layers: list[int] | None,
    bins: int,
    chunk_bytes: int,
    sinks: Any = None,
    memory_bytes: int | None = None,
    need_two: bool = True,
) -> Inspection:
    """Prepare ``sample``, refuse it when it has no segments or would not fit, then run the probe over it."""
    from bsight.harness.inspect_probe import pair_share
    from bsight.kernels.sparsity.metadata import LayoutMeta

    prepared: Prepared = adapter.prepare(sample)
    if len(prepared.layouts) != 1:
        raise InspectError(f"sample {sample.id!r}: prepare() gave a batch of {len(prepared.layouts)}; one prompt only")
    layout = prepared.layouts[0]
    if layout.num_images == 0:
        raise InspectError(
            f"sample {sample.id!r} has no image (or passage) segments in its prompt ({layout.num_valid} tokens of "
            "text): there is nothing inter-image to show"
        )
    if need_two and layout.num_images < 2:
        raise InspectError(
            f"sample {sample.id!r} has one image segment: there is nothing inter-image to show (it needs two or more)"
        )
    info = adapter.info
    recorded = len(layers) if layers is not None else len(info.attention_layers())
    need = estimate(adapter, layout.num_valid, recorded, bins, chunk_bytes)
    check_memory(need, layout.num_valid, available_bytes(_device(adapter)) if memory_bytes is None else memory_bytes)
    sinks = sinks or adapter.layout_spec().sinks
    prepared = type(prepared)(prepared.inputs, [lay.with_sinks(sinks) for lay in prepared.layouts])
    probe = InspectProbe({"layers": layers, "bins": bins, "chunk_bytes": chunk_bytes})
    probe.setup(info)
    t0 = time.perf_counter()
    with torch.no_grad():
        adapter.prefill(prepared, probe)
    seconds = time.perf_counter() - t0
    recorded_layers = probe.take()
    if not recorded_layers:
        raise RuntimeError(
            f"sample {sample.id!r}: no attention call reached the probe (attn_implementation not 'bsight'?)"
        )
    meta = LayoutMeta.build(prepared.layouts[0].unpadded())
    return Inspection(sample.id, prepared.layouts[0].unpadded(), recorded_layers, pair_share(meta), seconds)


# ------------------------------------------------------------------------------------------ writing


def head_rows(ins: Inspection) -> list[dict[str, Any]]:
    rows = []
    for layer, m in ins.layers.items():
        for h in range(m.mass.shape[0]):
            row: dict[str, Any] = {"layer": layer, "head": h}
            row.update({c: round(float(m.mass[h, j]), 6) for j, c in enumerate(MASS_COLUMNS)})
            rows.append(row)
    return rows


def _categories(head_map: HeadMap | None, layer: int) -> list[str] | None:
    if head_map is None or not head_map.categories[layer]:
        return None
    return list(head_map.categories[layer])


def write_outputs(
    ins: Inspection,
    out: Path,
    *,
    model: str,
    weights: str,
    head_map: HeadMap | None,
    fmt: str,
    map_layers: list[int] | None,
) -> dict[str, str]:
    """Figures, tables and JSON for one inspected prompt; returns ``{what: path}``."""
    from bsight.harness.paper_figures import attention_maps, inter_image_share

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    spans = [(s.start, s.end) for s in ins.layout.spans]
    who = f"{model} ({weights} weights), sample {ins.sample_id}"
    for layer, m in ins.layers.items():
        if map_layers is not None and layer not in map_layers:
            continue
        fig = attention_maps(
            m.pooled.numpy(), ins.layout.length, spans, _categories(head_map, layer), title=f"{who}: layer {layer}"
        )
        path = out / f"attention-L{layer:02d}.{fmt}"
        fig.savefig(path, dpi=150)
        files[f"attention maps, layer {layer}"] = str(path)
    fig = inter_image_share(
        ins.shares,
        ins.computation_share,
        title=f"{who}: {ins.layout.num_images} segments, {ins.layout.length} tokens",
    )
    path = out / f"inter-image-share.{fmt}"
    fig.savefig(path, dpi=150)
    files["inter-image share"] = str(path)
    rows = head_rows(ins)
    with (out / "heads.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["layer", "head", *MASS_COLUMNS, *(["category"] if head_map else [])])
        w.writeheader()
        for r in rows:
            cats = _categories(head_map, r["layer"])
            w.writerow({**r, **({"category": cats[r["head"]] if cats else ""} if head_map else {})})
    files["per-head table (csv)"] = str(out / "heads.csv")
    md = ["| layer | head | " + " | ".join(MASS_COLUMNS) + (" | category |" if head_map else " |")]
    md.append("|---:|---:|" + "---:|" * len(MASS_COLUMNS) + ("---|" if head_map else ""))
    for r in rows:
        cats = _categories(head_map, r["layer"])
        cells = " | ".join(f"{100 * r[c]:.1f}%" for c in MASS_COLUMNS)
        cat = f" {cats[r['head']]} |" if head_map and cats else (" |" if head_map else "")
        md.append(f"| {r['layer']} | {r['head']} | {cells} |{cat}")
    (out / "heads.md").write_text(
        f"Attention mass of image queries (images with an earlier image), {who}:\n\n" + "\n".join(md) + "\n"
    )
    files["per-head table (md)"] = str(out / "heads.md")
    return files


def summary(ins: Inspection) -> dict[str, Any]:
    return {
        "sample": ins.sample_id,
        "tokens": ins.layout.length,
        "segments": ins.layout.num_images,
        "segment_tokens": [s.length for s in ins.layout.spans],
        "image_queries": next(iter(ins.layers.values())).queries if ins.layers else 0,
        "computation_share": ins.computation_share,
        "mass_share_per_layer": {str(k): v for k, v in ins.shares.items()},
        "mass_share_mean": float(sum(ins.shares.values()) / len(ins.shares)) if ins.shares else None,
        "prefill_seconds": round(ins.seconds, 3),
    }


# ------------------------------------------------------------------------------------------ command


def run_inspect(args: Any) -> dict[str, str]:
    """The command; returns ``{what: path}`` of everything written."""
    from bsight.kernels.sparsity.headmap import HeadMap

    layers = args.layers
    images = args.images
    out = Path(args.out)
    adapter, task = load_model_and_task(args.config, args.model, args.task)
    sample = find_sample(task, args.sample)
    if images:
        n_seg = len(segment_parts(sample))
        if not n_seg:
            raise InspectError(
                f"sample {sample.id!r} has no image (or passage) parts: there is nothing inter-image to show"
            )
        for n in images:
            first_segments(sample, n)  # every N checked before the model loads
    head_map = None
    if args.head_map:
        try:
            head_map = HeadMap.load(args.head_map)
        except (OSError, ValueError) as e:
            raise InspectError(f"--head-map {args.head_map}: {e}") from None
    adapter.load()
    info = adapter.info
    attention = info.attention_layers()
    if layers is not None:
        bad = [i for i in layers if i not in attention]
        if bad:
            raise InspectError(
                f"--layers {bad}: {info.model_id} has softmax-attention layers {attention[0]}..{attention[-1]}"
                + (
                    f" (not {sorted(set(range(info.num_layers)) - set(attention))})"
                    if len(attention) < info.num_layers
                    else ""
                )
            )
    if head_map is not None:
        try:
            head_map.check_model(info.num_layers, info.num_heads, info.layer_kinds or None)
        except ValueError as e:
            raise InspectError(f"--head-map {args.head_map}: {e}") from None
    sinks = head_map.sink_policy if head_map is not None else None
    memory = None if args.memory_gib is None else int(args.memory_gib * GIB)
    common = {"bins": args.bins, "chunk_bytes": args.chunk_mib * 2**20, "sinks": sinks, "memory_bytes": memory}
    ins = inspect_prompt(adapter, sample, layers=layers, **common)
    files = write_outputs(
        ins, out, model=args.model, weights=info.weights, head_map=head_map, fmt=args.format, map_layers=layers
    )
    report: dict[str, Any] = {
        "model": args.model,
        "model_id": info.model_id,
        "weights": info.weights,
        "task": args.task,
        "head_map": args.head_map,
        "sink_policy": (sinks or adapter.layout_spec().sinks).model_dump(),
        "prompt": summary(ins),
        "heads": head_rows(ins),
    }
    if images:
        from bsight.harness.paper_figures import inter_image_vs_images

        sweep = []
        for n in images:
            cut = first_segments(sample, n)
            one = ins if n == ins.layout.num_images and cut is sample else None
            one = one or inspect_prompt(adapter, cut, layers=layers, need_two=False, **common)
            sweep.append(summary(one))
        fig = inter_image_vs_images(
            [s["segments"] for s in sweep],
            [{int(k): v for k, v in s["mass_share_per_layer"].items()} for s in sweep],
            [s["computation_share"] for s in sweep],
            title=f"{args.model} ({info.weights} weights), sample {sample.id}",
        )
        path = out / f"inter-image-vs-images.{args.format}"
        fig.savefig(path, dpi=150)
        files["inter-image share vs images"] = str(path)
        report["images_sweep"] = sweep
    (out / "inspect.json").write_text(json.dumps(report, indent=1) + "\n")
    files["numbers"] = str(out / "inspect.json")
    return files


def _csv_ints(text: str) -> list[int]:
    import argparse

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 0, got {text!r}")
    return values


def _positive_float(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_parser(sub: Any) -> None:
    """Register ``bsight inspect`` on the CLI's subparsers (one line in :mod:`bsight.harness.cli`)."""
    p = sub.add_parser(
        "inspect",
        help="one prompt's attention: pooled maps per head, inter-image share per layer, mass per head",
        description="Run one sample's prefill with dense attention and write, for each layer, the attention matrix "
        "of every head average-pooled (segments outlined, categories from --head-map), the share of image queries' "
        "attention on other images, and a per-head table of attention mass on own image / other images' sinks / "
        "other images' non-sinks / text. Chunked over queries: never S x S in memory.",
    )
    p.add_argument("config", metavar="CONFIG", help="config whose models and tasks to use")
    p.add_argument("--model", required=True, help="model name from the config's `models:`")
    p.add_argument("--task", required=True, help="task name from the config's `tasks:`")
    p.add_argument("--sample", required=True, metavar="ID", help="sample id (bsight prompts lists them)")
    p.add_argument("--layers", type=_csv_ints, metavar="L1,L2,...", help="layers to record (default: all)")
    p.add_argument("--head-map", metavar="FILE", help="head map whose categories title the heads (and sinks)")
    p.add_argument("--out", default="inspect", metavar="DIR", help="output folder (default: ./inspect)")
    p.add_argument(
        "--images", type=_csv_ints, metavar="N1,N2,...", help="also: inter-image share vs the first N segments"
    )
    p.add_argument("--bins", type=_positive_int, default=96, help="pooled map cells per side (default 96)")
    p.add_argument("--chunk-mib", type=_positive_int, default=256, help="float32 MiB per query chunk (default 256)")
    p.add_argument("--memory-gib", type=_positive_float, help="memory to plan with (default: what the device has free)")
    p.add_argument("--format", choices=("svg", "png", "pdf"), default="svg", help="figure format (default svg)")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: Any) -> int:
    import sys

    try:
        files = run_inspect(args)
    except InspectError as e:
        print(f"bsight: error: {e}", file=sys.stderr)
        return 2
    for what, path in files.items():
        print(f"{what}: {path}")
    return 0
