"""The hooks through which plugins add model adapters, tasks, attention methods and job types.

Every plugin, built-in or third party, is a module (or object) registered under the entry-point group
``bsight`` and implementing one or more of the hooks below with ``@hookimpl``. A hook returns a list of
classes; the core instantiates them from a run's config. Built-ins in ``bsight.plugins`` are registered
through the same entry-point group as third-party packages, so nothing about them is special.

A minimal third-party plugin package::

    # my_plugin.py
    from bsight.harness.hookspecs import hookimpl

    @hookimpl
    def bsight_tasks():
        return [MyTask]

    # pyproject.toml
    [project.entry-points.bsight]
    my_plugin = "my_plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from bsight.harness.interfaces import AttentionMethod, ModelAdapter, Task
    from bsight.harness.jobtypes import JobType

PROJECT = "bsight"
ENTRY_POINT_GROUP = "bsight"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def bsight_model_adapters() -> list[type[ModelAdapter]]:
    """Return the model adapter classes this plugin provides.

    An adapter loads one family of VLMs (or segmented text models), exposes its prompt layout (special
    token ids, sink policy, bidirectional image attention) and runs greedy generation with a chosen
    attention method. See :class:`bsight.harness.interfaces.ModelAdapter`.
    """


@hookspec
def bsight_tasks() -> list[type[Task]]:
    """Return the task classes this plugin provides.

    A task yields deterministic samples (interleaved text and images or passages, options, gold answer)
    and extracts answers from generated text. See :class:`bsight.harness.interfaces.Task`.
    """


@hookspec
def bsight_attention_methods() -> list[type[AttentionMethod]]:
    """Return the attention method classes this plugin provides.

    A method computes prefill attention for one layer given q, k, v and the prompt's layout metadata,
    and reports its own run-time overhead. See :class:`bsight.harness.interfaces.AttentionMethod`.
    """


@hookspec
def bsight_job_types() -> list[type[JobType]]:
    """Return the job type classes this plugin provides (the kinds of work a config lists under ``jobs:``).

    A job type plans resumable units from its config entry, runs them, and renders its report section and
    compare metrics. See :class:`bsight.harness.jobtypes.JobType`; the built-ins live in
    :mod:`bsight.harness.jobs`.
    """
