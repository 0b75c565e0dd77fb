"""Example third-party bsight plugin: adds one model adapter, one task, one attention method and one job type.

Registered by its package's entry point (group ``bsight``), exactly as bsight's built-ins are.
"""

from bsight.harness.hookspecs import hookimpl

from .job import PromptStatsJob
from .method import SinkWindow
from .model import TinyLlama
from .task import BrightestImage


@hookimpl
def bsight_model_adapters():
    return [TinyLlama]


@hookimpl
def bsight_tasks():
    return [BrightestImage]


@hookimpl
def bsight_attention_methods():
    return [SinkWindow]


@hookimpl
def bsight_job_types():
    return [PromptStatsJob]
