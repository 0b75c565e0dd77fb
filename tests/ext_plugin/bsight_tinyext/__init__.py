"""Example third-party bsight plugin: adds one model adapter, one task and one attention method.

Registered by its package's entry point (group ``bsight``), exactly as bsight's built-ins are.
"""

from bsight.harness.hookspecs import hookimpl

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
