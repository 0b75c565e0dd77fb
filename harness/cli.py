"""The ``bsight`` command: ``plugins``, ``run``, ``report``, ``compare``.

Exit status: 0 success; 1 a unit failed (``run``) or a regression was flagged (``compare``); 2 bad input
(config, arguments, not a run folder), reported as one line per problem without a traceback; 130 interrupted.

``torchrun --nproc-per-node N -m bsight.harness.cli run CONFIG`` runs the config data-parallel over N
processes (see :mod:`bsight.harness.distributed`); rank 0 prints, the other ranks exit with its status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .plugins import Registry, load_registry

DEFAULT_CONFIG = "benchmarks.yaml"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class UsageError(ValueError):
    """Bad command-line input; exit status 2."""


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:  # pipes and logs: wide enough that tables do not wrap names
        console = Console(stderr=stderr, width=200)
    return console


def _registry(err: Console) -> Registry:
    logging.getLogger("bsight.harness.plugins").setLevel(logging.ERROR)  # failures are printed below instead
    registry = load_registry()
    for f in registry.failures:
        err.print(f"[yellow]warning:[/] plugin {escape(repr(f.plugin))} from package {escape(f.package)} was skipped: {escape(f.error)}")
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
        table.add_row(info.family, info.name, info.package, info.version, info.cls.description)
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
    from .config import load_config
    from .distributed import launched, session
    from .runner import default_run_dir, execute, plan

    err = _console(stderr=True)
    path = resolve_config(args.config)
    registry = _registry(err)
    config = load_config(path, registry)
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    if args.dry_run:
        if launched() and os.environ.get("RANK", "0") != "0":
            return 0  # one listing per launch
        units = plan(config)
        out = _console()
        out.print(f"config {escape(str(path))} is valid (hash {config.config_hash()}); run folder {escape(str(run_dir))}")
        for _, unit in units:
            out.print(f"  {escape(unit.id)}  [dim]{unit.fingerprint}[/]")
        out.print(f"{len(units)} units")
        return 0
    with session() as dist:
        console = err if dist.is_main else Console(stderr=True, quiet=True)
        processes = f" over {dist.world_size} processes ({dist.backend})" if dist.world_size > 1 else ""
        console.print(f"config {escape(str(path))} -> run folder {escape(str(run_dir))}{' (fresh)' if args.fresh else ''}{processes}")
        outcome = execute(config, registry, run_dir, fresh=args.fresh, config_file=path, console=console, dist=dist)
    if outcome.report is None:
        return 1
    if dist.is_main:
        print(f"report: {outcome.report.resolve()}")
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} of {outcome.units} units failed:[/] {escape(', '.join(outcome.failed))}")
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render_report

    html, md = render_report(Path(args.run))
    print(f"report: {html.resolve()}")
    print(f"markdown: {md.resolve()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs, render_comparison
    from .store import RunFolder

    a, b = RunFolder.open(args.run_a), RunFolder.open(args.run_b)
    cmp = compare_runs(a, b, threshold=args.threshold, rel_threshold=args.rel_threshold)
    html, md = render_comparison(cmp, Path(args.out) if args.out else b.root)
    out = _console()
    for c in cmp.regressions:
        out.print(f"[red]REGRESSION[/] {escape(c.name)}: {c.a:.4g} -> {c.b:.4g}")
    out.print(f"{len(cmp.changes)} shared metrics, {len(cmp.regressions)} regressions (threshold {args.threshold}, relative {args.rel_threshold})")
    print(f"comparison: {html.resolve()}")
    return 1 if cmp.regressions else 0


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsight", description="BlindSight evaluation harness")
    parser.add_argument("--version", action="version", version=f"bsight {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list registered model adapters, tasks and attention methods")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("run", help="run (or resume) the jobs of a benchmarks.yaml")
    p.add_argument("config", nargs="?", metavar="CONFIG", help=f"config file (default: ./{DEFAULT_CONFIG})")
    p.add_argument("--out", metavar="DIR", help="run folder (default: <run.output_dir>/<run.name>)")
    p.add_argument("--fresh", action="store_true", help="ignore and delete cached results in the run folder")
    p.add_argument("--dry-run", action="store_true", help="validate the config and list the units, run nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="re-render a run folder's index.html and report.md")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="compare two runs and flag regressions (exit 1 when any)")
    p.add_argument("run_a", metavar="RUN_A", help="old run folder (reference)")
    p.add_argument("run_b", metavar="RUN_B", help="new run folder")
    p.add_argument("--threshold", type=_non_negative, default=0.02, help="absolute change that counts as a regression for rates (default 0.02)")
    p.add_argument("--rel-threshold", type=_non_negative, default=0.10, help="relative change that counts for timings (default 0.10)")
    p.add_argument("--out", metavar="DIR", help="where to write compare.html/compare.md (default: RUN_B)")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .config import ConfigError
    from .distributed import LaunchError
    from .runner import PlanError
    from .store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, StoreError, PlanError, UsageError, LaunchError) as e:
        for line in str(e).splitlines():
            print(f"bsight: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bsight: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
