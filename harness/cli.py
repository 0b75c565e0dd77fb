"""The ``bsight`` command: ``plugins``, ``run``, ``characterize``, ``report``, ``compare``.

Exit status: 0 success; 1 a unit failed or is incomplete (``run``) or a regression was flagged (``compare``);
2 bad input (config, arguments, not a run folder), reported as one line per problem without a traceback;
3 an error: an OS-level failure (read-only or full disk) in one line, a crash, or (``compare``) a comparison
that cannot vouch for the new run (a metric missing from it, a failed or incomplete unit, different configs
without ``--allow-config-change``); 130 interrupted.

``torchrun --nproc-per-node N -m bsight.harness.cli run CONFIG`` runs the config data-parallel over N
processes (see :mod:`bsight.harness.distributed`); rank 0 prints, the other ranks exit with its status.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bsight.harness.plugins import Registry, load_registry, plugin_description
from bsight.kernels.sparsity.artifacts import tool_version

DEFAULT_CONFIG = "benchmarks.yaml"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class UsageError(ValueError):
    """Bad command-line input; exit status 2."""


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:  # pipes and logs: wide enough that tables do not wrap names
        console = Console(stderr=stderr, width=200)
    return console


@contextmanager
def _logs_to(console: Console) -> Iterator[None]:
    """Show bsight's INFO messages (a model's one-time conversion, loading times) on ``console``, above the
    progress bars, while a command runs."""
    from rich.logging import RichHandler

    logger = logging.getLogger("bsight")
    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _registry(err: Console) -> Registry:
    logging.getLogger("bsight.harness.plugins").setLevel(logging.ERROR)  # failures are printed below instead
    registry = load_registry()
    for line in registry.unmet:
        err.print(f"[yellow]warning:[/] {escape(line)}")
    for f in registry.failures:
        err.print(
            f"[yellow]warning:[/] plugin {escape(repr(f.plugin))} from package {escape(f.package)} was "
            f"skipped: {escape(f.error)}"
        )
    return registry


def resolve_config(arg: str | None) -> Path:
    """The config to run: the argument, else ./benchmarks.yaml, else the one at the source checkout's root."""
    if arg is not None:
        return Path(arg)
    for candidate in (Path(DEFAULT_CONFIG), SOURCE_ROOT / DEFAULT_CONFIG):
        if candidate.is_file():
            return candidate
    raise UsageError(f"no CONFIG given and no {DEFAULT_CONFIG} in the current directory")


def cmd_plugins(args: argparse.Namespace) -> int:
    out, err = _console(), _console(stderr=True)
    registry = _registry(err)
    table = Table(title="bsight plugins")
    for col in ("family", "name", "package", "version", "description"):
        table.add_column(col, overflow="fold")
    for info in registry.all():
        table.add_row(info.family, info.name, info.package, info.version, plugin_description(info.cls))
    out.print(table)
    if registry.failures:
        failed = Table(title="plugins that failed to load (skipped)")
        for col in ("plugin", "package", "error"):
            failed.add_column(col, overflow="fold")
        for f in registry.failures:
            failed.add_row(f.plugin, f.package, f.error)
        out.print(failed)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bsight.harness.config import load_config
    from bsight.harness.distributed import launched, session
    from bsight.harness.preflight import preflight
    from bsight.harness.runner import default_run_dir, execute, plan

    err = _console(stderr=True)
    path = resolve_config(args.config)
    registry = _registry(err)
    config = load_config(path, registry)
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    if launched() and os.environ.get("RANK", "0") != "0" and args.dry_run:
        return 0  # one listing per launch
    units = plan(config)
    preflight(config, registry, [u for _, u in units])  # head maps and task sources, before any work
    if args.dry_run:
        out = _console()
        out.print(
            f"config {escape(str(path))} is valid (hash {config.config_hash()}); run folder {escape(str(run_dir))}"
        )
        for _, unit in units:
            out.print(f"  {escape(unit.id)}  [dim]{unit.fingerprint}[/]")
        out.print(f"{len(units)} units")
        return 0
    with session() as dist:
        console = err if dist.is_main else Console(stderr=True, quiet=True)
        processes = f" over {dist.world_size} processes ({dist.backend})" if dist.world_size > 1 else ""
        console.print(
            f"config {escape(str(path))} -> run folder "
            f"{escape(str(run_dir))}{' (fresh)' if args.fresh else ''}{processes}"
        )
        with _logs_to(console):
            outcome = execute(config, registry, run_dir, fresh=args.fresh, config_file=path, console=console, dist=dist)
    if outcome.report is None:
        return 1
    if dist.is_main:
        print(f"report: {outcome.report.resolve()}")
    if outcome.failed:
        console.print(
            f"[red]{len(outcome.failed)} of {outcome.units} units failed:[/] {escape(', '.join(outcome.failed))}"
        )
        return 1
    if outcome.incomplete:
        console.print(
            f"[red]{len(outcome.incomplete)} of {outcome.units} units are incomplete:[/] "
            f"{escape(', '.join(outcome.incomplete))}"
        )
        return 1
    return 0


def _csv_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


CHARACTERIZE_JOB = "characterize"


def characterize_job(args: argparse.Namespace) -> dict:
    """The ``characterize`` job entry the command's arguments describe."""
    job: dict = {"type": "characterize", "name": CHARACTERIZE_JOB, "models": [args.model], "task": args.task}
    for key in (
        "limit",
        "tau",
        "delta",
        "gamma",
        "sweep_taus",
        "sweep_deltas",
        "sweep_gammas",
        "chunk_size",
        "publish",
    ):
        value = getattr(args, key)
        if value is not None:
            job[key] = value
    if args.sink_fraction is not None:
        job["sinks"] = {"kind": "fraction", "fraction": args.sink_fraction}
    elif args.sink_offsets is not None:
        job["sinks"] = {"kind": "offsets", "offsets": args.sink_offsets}
    elif args.discover_sinks is not None:
        job["discover_sinks"] = {"top_k": args.discover_sinks}
    return job


def _option_errors(job: dict, registry: Registry) -> list[str]:
    """The job's parameter errors phrased as command-line options (``--tau: ...``)."""
    from pydantic import ValidationError

    flags = {"sinks": "--sink-fraction/--sink-offsets", "discover_sinks": "--discover-sinks"}
    try:
        registry.job_type(job["type"]).Spec.model_validate(job)
    except ValidationError as e:
        out = []
        for err in e.errors(include_url=False):
            field = str(err["loc"][0]) if err["loc"] else ""
            flag = flags.get(field, "--" + field.replace("_", "-")) if field else "arguments"
            got = f" (got {err['input']!r})" if field and not isinstance(err.get("input"), (dict, list)) else ""
            out.append(f"{flag}: {err['msg'].removeprefix('Value error, ')}{got}")
        return out
    return []


def cmd_characterize(args: argparse.Namespace) -> int:
    """Characterize one model on one task (models and tasks as the config defines them) into a run folder."""
    from bsight.harness.config import load_config, parse_config
    from bsight.harness.runner import execute
    from bsight.harness.store import RunFolder

    if args.config and args.config_opt and args.config != args.config_opt:
        raise UsageError(f"two configs given: {args.config} and --config {args.config_opt}")
    err = _console(stderr=True)
    path = resolve_config(args.config or args.config_opt)
    registry = _registry(err)
    base = load_config(path, registry)
    problems = []
    for flag, value, section in (("--model", args.model, "models"), ("--task", args.task, "tasks")):
        defined = ", ".join(getattr(base, section)) or "none"
        if value is None:
            problems.append(f"{flag} is required; {section} defined in {path}: {defined}")
        elif value not in getattr(base, section):
            problems.append(f"{flag} {value!r} is not defined under `{section}:` in {path}; defined: {defined}")
    if problems:
        raise UsageError("\n".join(problems))
    job = characterize_job(args)
    problems = _option_errors(job, registry)
    if problems:
        raise UsageError("\n".join(problems))
    out = Path(args.out)
    data = {
        "run": {
            "name": f"characterize-{args.model}",
            "output_dir": str(out.parent),
            "seed": base.run.seed,
            "description": f"bsight characterize --model {args.model} --task {args.task}",
        },
        "models": {args.model: base.models[args.model].model_dump()},
        "tasks": {args.task: base.tasks[args.task].model_dump()},
        "jobs": [job],
    }
    config = parse_config(data, registry, source=f"bsight characterize (models and tasks from {path})")
    err.print(
        f"characterize {escape(args.model)} on {escape(args.task)} (config {escape(str(path))}) -> "
        f"{escape(str(out))}{' (fresh)' if args.fresh else ''}"
    )
    with _logs_to(err):
        outcome = execute(
            config, registry, out, fresh=args.fresh, console=err
        )  # the run is this command, not the whole CONFIG
    (rec,) = RunFolder.open(out).manifest().units
    if rec.status != "done":
        err.print(
            f"[red]characterization failed:[/] {escape(rec.error or rec.status)} (details in "
            f"{escape(str(out / 'errors.log'))})"
        )
        return 1
    files = rec.info.get("files", {})
    stem = out / "plots" / f"characterization-{CHARACTERIZE_JOB}-{args.model}"
    print(f"head map: {(out / files['head_map']).resolve()}")
    if "published" in files:
        print(f"published head map: {Path(files['published']).resolve()}")
    print(f"heatmap: {Path(f'{stem}-heatmap.svg').resolve()}")
    print(f"layer shares: {Path(f'{stem}-shares.svg').resolve()}")
    if "sweep" in files:
        print(f"sweep: {(out / files['sweep']).resolve()}")
        print(f"sweep plot: {Path(f'{stem}-pareto.svg').resolve()}")
    print(f"per-prompt tables: {(out / files['characterization']).resolve()}")
    if outcome.report is not None:
        print(f"report: {outcome.report.resolve()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bsight.harness.report import render_report

    html, md = render_report(Path(args.run))
    print(f"report: {html.resolve()}")
    print(f"markdown: {md.resolve()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bsight.harness.compare import compare_runs, render_comparison
    from bsight.harness.store import RunFolder

    a, b = RunFolder.open(args.run_a), RunFolder.open(args.run_b)
    cmp = compare_runs(
        a, b, threshold=args.threshold, rel_threshold=args.rel_threshold, allow_config_change=args.allow_config_change
    )
    html, md = render_comparison(cmp, Path(args.out) if args.out else b.root)
    out = _console()
    for c in cmp.regressions:
        out.print(f"[red]REGRESSION[/] {escape(c.name)}: {c.a:.4g} -> {c.b:.4g}")
    out.print(
        f"{len(cmp.changes)} shared metrics, {len(cmp.regressions)} regressions (threshold {args.threshold}, "
        f"relative {args.rel_threshold})"
    )
    print(f"comparison: {html.resolve()}")
    for line in cmp.problems:
        out.print(f"[red]INCOMPLETE[/] {escape(line)}")
    if cmp.problems:
        return 3
    return 1 if cmp.regressions else 0


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 and finite, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsight", description="BlindSight evaluation harness")
    parser.add_argument("--version", action="version", version=f"bsight {tool_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list registered model adapters, tasks and attention methods")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("run", help="run (or resume) the jobs of a benchmarks.yaml")
    p.add_argument("config", nargs="?", metavar="CONFIG", help=f"config file (default: ./{DEFAULT_CONFIG})")
    p.add_argument("--out", metavar="DIR", help="run folder (default: <run.output_dir>/<run.name>)")
    p.add_argument("--fresh", action="store_true", help="ignore and delete cached results in the run folder")
    p.add_argument("--dry-run", action="store_true", help="validate the config and list the units, run nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "characterize",
        help="characterize one model on one task: head map, heatmap and per-layer shares (and a tau sweep) in "
        "a run folder",
        description="Characterize a model defined in CONFIG on a task defined in CONFIG and write its head "
        "map. The output "
        "folder is a run folder: running the same command again resumes, prompt by prompt.",
    )
    p.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help=f"config whose models and tasks to use (default: ./{DEFAULT_CONFIG})",
    )
    p.add_argument("--config", dest="config_opt", metavar="CONFIG", help="the same as CONFIG")
    p.add_argument("--model", help="model name from the config's `models:`")
    p.add_argument("--task", help="task name from the config's `tasks:`")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output run folder (head map under DIR/headmaps/characterize/, plots under DIR/plots/)",
    )
    p.add_argument("--limit", type=int, help="first N prompts of the task")
    p.add_argument("--tau", type=float, help="NMSE threshold per prompt (default 0.05)")
    p.add_argument("--delta", type=float, help="dense share above which a head stays dense (default 0.2)")
    p.add_argument("--gamma", type=float, help="share the predominant sparse category needs (default 0.5)")
    p.add_argument(
        "--sweep-taus",
        type=_csv_floats,
        metavar="T1,T2,...",
        help="also sweep FLOPs reduction vs NMSE over these tau values",
    )
    p.add_argument("--sweep-deltas", type=_csv_floats, metavar="D1,D2,...", help="sweep these delta values too")
    p.add_argument("--sweep-gammas", type=_csv_floats, metavar="G1,G2,...", help="sweep these gamma values too")
    sinks = p.add_mutually_exclusive_group()
    sinks.add_argument(
        "--sink-fraction", type=float, metavar="F", help="sinks: the first ceil(F * len) tokens of each image"
    )
    sinks.add_argument(
        "--sink-offsets", type=_csv_ints, metavar="O1,O2,...", help="sinks: these offsets inside each image"
    )
    sinks.add_argument(
        "--discover-sinks",
        type=int,
        metavar="K",
        help="find the K most attended in-image offsets first (fixed-offset models)",
    )
    p.add_argument("--chunk-size", type=int, help="image-query rows per chunk of the NMSE probe (default 256)")
    p.add_argument("--publish", metavar="PATH", help="also write the head map to PATH")
    p.add_argument("--fresh", action="store_true", help="ignore and delete results already in DIR")
    p.set_defaults(func=cmd_characterize)

    p = sub.add_parser("report", help="re-render a run folder's index.html and report.md")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "compare", help="compare two runs: exit 0 no regression, 1 regression, 2 bad input, 3 error or incomplete"
    )
    p.add_argument("run_a", metavar="RUN_A", help="old run folder (reference)")
    p.add_argument("run_b", metavar="RUN_B", help="new run folder")
    p.add_argument(
        "--threshold",
        type=_non_negative,
        default=0.02,
        help="absolute change that counts as a regression for rates (default 0.02)",
    )
    p.add_argument(
        "--rel-threshold",
        type=_non_negative,
        default=0.10,
        help="relative change that counts for timings (default 0.10)",
    )
    p.add_argument("--out", metavar="DIR", help="where to write compare.html/compare.md (default: RUN_B)")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="compare runs of different configs (otherwise exit 3)",
    )
    p.set_defaults(func=cmd_compare)

    from bsight.harness.prompts_cmd import add_parser as add_prompts_parser

    add_prompts_parser(sub)
    from bsight.harness.check_adapter import add_parser as add_check_adapter_parser

    add_check_adapter_parser(sub)
    from bsight.harness.random_models import add_parser as add_random_model_parser

    add_random_model_parser(sub)
    from bsight.harness.inspect_cmd import add_parser as add_inspect_parser

    add_inspect_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from bsight.harness.config import ConfigError
    from bsight.harness.distributed import LaunchError
    from bsight.harness.preflight import PreflightError
    from bsight.harness.runner import PlanError
    from bsight.harness.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, StoreError, PlanError, UsageError, LaunchError, PreflightError) as e:
        for line in str(e).splitlines():
            print(f"bsight: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bsight: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as e:  # read-only or full disk, a file where a folder should be: one line, no traceback
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"bsight: error: {e.strerror or e}{where}", file=sys.stderr)
        return 3
    except Exception as e:  # a crash is an error, never a "regression" (1): exit 3, traceback shown
        import traceback

        traceback.print_exc()
        print(f"bsight: error: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
