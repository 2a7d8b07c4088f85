"""core.timing: medians over a given clock, interleaved order, the collector off only while timing."""

from __future__ import annotations

import gc

import pytest

from core.timing import interleaved_medians, interleaved_samples, median_time


class FakeClock:
    """A clock that each timed call advances by the duration it chooses."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float):
        def step() -> None:
            self.now += seconds
        return step


def test_median_time_skips_the_warmup_and_takes_the_median():
    clock = FakeClock()
    durations = iter([100.0, 3.0, 1.0, 2.0])  # the first is the warm-up

    def fn() -> None:
        clock.now += next(durations)

    assert median_time(fn, repeats=3, warmup=1, timer=clock) == 2.0


def test_interleaved_samples_call_every_step_in_each_round_with_the_collector_off():
    clock, order, collector = FakeClock(), [], []

    def step(name: str, seconds: float):
        spend = clock.spend(seconds)

        def call() -> None:
            order.append(name)
            collector.append(gc.isenabled())
            spend()
        return call

    was_enabled = gc.isenabled()
    gc.enable()
    try:
        samples = interleaved_samples({"a": step("a", 1.0), "b": step("b", 2.0)}, rounds=3, block=2,
                                      timer=clock)
        assert gc.isenabled()  # restored
    finally:
        if not was_enabled:
            gc.disable()
    assert order == ["a", "a", "b", "b"] * 3
    assert not any(collector)
    assert samples == {"a": [1.0] * 6, "b": [2.0] * 6}
    medians = interleaved_medians({"a": clock.spend(1.0), "b": clock.spend(4.0)}, rounds=2, timer=clock)
    assert medians == pytest.approx({"a": 1.0, "b": 4.0})
