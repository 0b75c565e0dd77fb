"""Entry point ``benchmark_tasks``: the four multi-image benchmarks of the BlindSight paper's Table 1."""

from __future__ import annotations

from bsight.harness.hookspecs import hookimpl
from bsight.plugins.tasks.blink import Blink
from bsight.plugins.tasks.mantis import MantisEval
from bsight.plugins.tasks.mmiu import MMIU
from bsight.plugins.tasks.muirbench import MuirBench


@hookimpl
def bsight_tasks():
    return [MMIU, MantisEval, MuirBench, Blink]
