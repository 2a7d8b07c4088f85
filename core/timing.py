"""Timing for the perf scripts: medians of repeated calls, and of calls interleaved across variants.

Both run with Python's garbage collector off while they time (as ``timeit`` does), so that a collection
lands in no measurement. ``timer`` is any clock returning seconds: ``time.perf_counter`` (wall, default)
or ``time.thread_time`` (the CPU time of the calling thread; meaningful with one torch thread).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def _collector_off() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1,
                timer: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    with _collector_off():
        for _ in range(repeats):
            start = timer()
            fn()
            times.append(timer() - start)
    return statistics.median(times)


def interleaved_samples(steps: Mapping[str, Callable[[], object]], rounds: int, block: int = 1,
                        timer: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Each step's times over ``rounds`` rounds; a round calls every step ``block`` times, in order, so
    that a slow phase of a shared machine hits all of them alike. No warm-up here: call the steps first."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    with _collector_off():
        for _ in range(rounds):
            for name, step in steps.items():
                for _ in range(block):
                    start = timer()
                    step()
                    samples[name].append(timer() - start)
    return samples


def interleaved_medians(steps: Mapping[str, Callable[[], object]], rounds: int, block: int = 1,
                        timer: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """The median of each step's :func:`interleaved_samples`."""
    samples = interleaved_samples(steps, rounds, block, timer)
    return {name: statistics.median(s) for name, s in samples.items()}
