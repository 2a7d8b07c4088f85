"""Paired statistics over seeds, and the sentences the report builds from them.

Runs with the same seed share the network's initialisation and the training data order (the harness
checks it), so two entries are compared by the per-seed differences ``d_s = top1_a(s) - top1_b(s)``.
With few seeds (5 by default) a bootstrap interval is too narrow, so the interval is Student's t:
``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``; it needs n >= 2.

A sentence claims a difference ("beats", "is below") only when the interval excludes 0; otherwise it
says "no difference resolved". :func:`phrase` is the only place that words a comparison.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean paired difference (points) with its 95 % t interval over ``n`` seeds (None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes 0 (a difference is claimed)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def text(self) -> str:
        """``"+3.00 [+1.00, +5.00]"`` (``"+3.00 (no interval)"`` for one seed)."""
        if self.low is None:
            return f"{self.mean:+.2f} (no interval)"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def t_quantile(df: int, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def paired_interval(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> Interval | None:
    """The interval of ``a - b`` over the seeds both have (``{seed: top1}``); None when none is shared."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return Interval(mean, None, None, len(d))
    half = t_quantile(len(d) - 1, level) * statistics.stdev(d) / math.sqrt(len(d))
    return Interval(mean, mean - half, mean + half, len(d))


def phrase(name: str, other: str, iv: Interval | None) -> str:
    """One sentence comparing ``name`` with ``other``; claims a difference only if ``iv`` excludes 0."""
    if iv is None:
        return f"{name} and {other} share no seed: not compared."
    numbers = f"{iv.text()} points (n={iv.n})"
    if iv.low is None:
        return f"{name} vs {other}: {numbers}, one seed: no difference resolved."
    if iv.low > 0:
        return f"{name} beats {other} by {numbers}."
    if iv.high < 0:
        return f"{name} is below {other} by {numbers}."
    return f"no difference resolved between {name} and {other}: {numbers}."
