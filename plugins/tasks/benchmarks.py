"""Entry point ``benchmark_tasks``: the four multi-image benchmarks of the BlindSight paper's Table 1."""

from __future__ import annotations

from bsight.harness.hookspecs import hookimpl

from .blink import Blink
from .mantis import MantisEval
from .mmiu import MMIU
from .muirbench import MuirBench


@hookimpl
def bsight_tasks():
    return [MMIU, MantisEval, MuirBench, Blink]
