"""Named scoring protocols of the task plugins (DESIGN.md section 5).

A protocol fixes a task's prompt text, its generation settings (:class:`~bsight.harness.interfaces.Decoding`)
and its answer extraction:

- ``upstream`` - the benchmark authors' own prompt, generation settings and extraction, where these run
  offline; an LLM-judge step upstream is done by the closest deterministic rule, named as such in each
  extraction's rule (``judge_substitute:...``; see :mod:`bsight.harness.upstream_answers`);
- ``lmms-eval`` - lmms-eval's task of the same benchmark;
- ``bsight`` - the default: the prompts the task modules document, greedy decoding and the lenient layered
  extractor of :mod:`bsight.harness.answers`.

A task option ``protocol`` selects one; a protocol the task does not have is a config error that names the
task and the protocols it has. Nothing falls back to another protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

PROTOCOLS = ("upstream", "lmms-eval", "bsight")
DEFAULT = "bsight"
PROTOCOL_HELP = "scoring protocol: upstream (benchmark authors), lmms-eval, or bsight (default; lenient extractor)"


def check_protocol(task: str, supported: Sequence[str], value: Any) -> str:
    """``value`` if ``task`` has that protocol, else a ValueError naming the task and its protocols."""
    if value not in supported:
        raise ValueError(
            f"task {task!r} has no scoring protocol {value!r}; its protocols: {', '.join(supported)}"
            + ("" if value in PROTOCOLS else f" (protocols known to bsight: {', '.join(PROTOCOLS)})")
        )
    return value


class ProtocolOption(BaseModel):
    """Mixin of task options: the ``protocol`` field, checked against ``task_name`` and ``protocols``."""

    task_name: ClassVar[str] = "?"
    protocols: ClassVar[tuple[str, ...]] = (DEFAULT,)
    protocol: str = Field(default=DEFAULT, description=PROTOCOL_HELP)

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: Any) -> str:
        return check_protocol(cls.task_name, cls.protocols, value)
