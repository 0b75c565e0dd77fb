"""Issue 16: the order methods run in must not change their reported steady-state times (fake clock, CPU)."""

from __future__ import annotations

import pytest

from bsight.harness.benchmarks.protocol import Interleaved, medians, one_time, rotated


class FakeDevice:
    """A fake GPU: each call costs its method's time, plus a per-shape cost on the first call of a shape by
    any method (a process-wide cache, as cuDNN's plan cache and compiled kernels are)."""

    def __init__(self, cost_ms: dict[str, float], per_shape_ms: float = 55.0) -> None:
        self.now = 0.0
        self.cost_ms, self.per_shape_ms = cost_ms, per_shape_ms
        self.seen: set[int] = set()

    def clock(self) -> float:
        return self.now

    def call(self, method: str, shape: int) -> dict:
        self.now += self.cost_ms[method] / 1e3
        if shape not in self.seen:
            self.seen.add(shape)
            self.now += self.per_shape_ms / 1e3
        return {"shape": shape}


def _run(order: list[str], rotate: bool = True):
    dev = FakeDevice({"dense": 30.0, "blindsight": 30.0, "flex": 50.0})
    runner = Interleaved(dev.call, repeats=3, clock=dev.clock, sync=lambda: None, rotate=rotate)
    return runner.run(order, [1763, 2403, 4691, 6579])


def test_swapping_method_order_keeps_steady_medians():
    a = medians(_run(["dense", "blindsight", "flex"]))
    b = medians(_run(["flex", "blindsight", "dense"]))
    assert a == b == {"dense": pytest.approx(30.0), "blindsight": pytest.approx(30.0), "flex": pytest.approx(50.0)}
    # identical computations read identical (the false 2x of issue 16 came from charging the shape to one of them)
    assert a["dense"] == a["blindsight"]


def test_without_rotation_steady_medians_still_fair_and_one_time_costs_apart():
    for order in (["dense", "blindsight"], ["blindsight", "dense"]):
        timings = _run(order, rotate=False)
        assert medians(timings) == {"dense": pytest.approx(30.0), "blindsight": pytest.approx(30.0)}
        first = one_time(timings)
        # the method that met each new shape first carries its per-shape cost, as a one-time cost only
        assert first[order[0]] == pytest.approx(55.0) and first[order[1]] == pytest.approx(0.0)


def test_cold_calls_are_what_naive_timing_reports():
    timings = _run(["dense", "blindsight"], rotate=False)
    cold = {t.method: t.cold_ms for t in timings if t.sample == 0}
    assert cold["dense"] == pytest.approx(85.0) and cold["blindsight"] == pytest.approx(30.0)


def test_rotation_puts_each_method_first_once():
    firsts = {rotated(["a", "b", "c"], i)[0] for i in range(3)}
    assert firsts == {"a", "b", "c"}
