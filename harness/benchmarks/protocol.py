"""Fair timing of several methods on the same inputs: one-time costs apart, steady state after warm-up, methods
interleaved per sample.

Why: on a GPU the first call on a new shape pays costs that later calls do not (cuDNN builds a plan per shape,
Triton and torch.compile compile, block masks are built), and those caches are shared by every method of the
process. Timing each method once, one method after the other, charges them to whichever method meets a shape
first: identical computations then read 2x apart. So for every sample:

* the methods run in an order rotated by the sample's index (method ``i`` goes first on sample ``i mod n``);
* each method's first call on the sample is its *cold* call (``cold_ms``: includes any one-time cost);
* then ``repeats`` steady calls on the same inputs (``steady_ms``); their median is the method's time;
* ``one_time_ms = cold_ms - median(steady_ms)`` is reported apart, never mixed into the steady medians.

Time comes from ``clock`` (seconds, default ``time.perf_counter``) after ``sync`` (default: CUDA
synchronize when a GPU is present), so a test can drive the protocol with a fake clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

S = TypeVar("S")


def _default_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Timing:
    """One method on one sample: the cold call, the steady calls, and what each call returned."""

    method: str
    sample: int
    position: int  # where the method ran among the methods on this sample (0: first)
    cold_ms: float
    steady_ms: list[float]
    cold_info: dict[str, Any] = field(default_factory=dict)
    steady_info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.steady_ms)

    @property
    def one_time_ms(self) -> float:
        return max(0.0, self.cold_ms - self.median_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "sample": self.sample,
            "position": self.position,
            "cold_ms": self.cold_ms,
            "steady_ms": self.steady_ms,
            "median_ms": self.median_ms,
            "one_time_ms": self.one_time_ms,
        }


def rotated(methods: Sequence[str], index: int) -> list[str]:
    """``methods`` starting at ``index mod n``: over n samples every method runs first once."""
    n = len(methods)
    return [methods[(index + j) % n] for j in range(n)] if n else []


@dataclass
class Interleaved(Generic[S]):
    """Runs ``call(method, sample)`` for every sample and method, as the module docstring says."""

    call: Callable[[str, S], dict[str, Any] | None]
    repeats: int = 2
    clock: Callable[[], float] = time.perf_counter
    sync: Callable[[], None] = _default_sync
    rotate: bool = True

    def timed(self, method: str, sample: S) -> tuple[float, dict[str, Any]]:
        self.sync()
        t0 = self.clock()
        info = self.call(method, sample) or {}
        self.sync()
        return 1e3 * (self.clock() - t0), info

    def run(self, methods: Sequence[str], samples: Sequence[S], start: int = 0) -> list[Timing]:
        out = []
        for i, sample in enumerate(samples):
            order = rotated(methods, start + i) if self.rotate else list(methods)
            for position, method in enumerate(order):
                cold, cold_info = self.timed(method, sample)
                steady = [self.timed(method, sample) for _ in range(self.repeats)]
                out.append(
                    Timing(method, start + i, position, cold, [t for t, _ in steady], cold_info, [x for _, x in steady])
                )
        return out


def medians(timings: Sequence[Timing]) -> dict[str, float]:
    """Per method: the median over samples of each sample's steady median (the number reports show)."""
    by: dict[str, list[float]] = {}
    for t in timings:
        by.setdefault(t.method, []).append(t.median_ms)
    return {m: statistics.median(v) for m, v in by.items()}


def one_time(timings: Sequence[Timing]) -> dict[str, float]:
    """Per method: the largest one-time cost seen (its first sample's compilation, plan building, ...)."""
    by: dict[str, float] = {}
    for t in timings:
        by[t.method] = max(by.get(t.method, 0.0), t.one_time_ms)
    return by
