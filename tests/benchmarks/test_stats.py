"""Paired intervals over seeds and the sentences generated from them."""

from __future__ import annotations

import random
import re

import pytest

from benchmarks.quick_report import findings
from benchmarks.stats import paired_interval, phrase


def test_a_method_compared_with_itself_has_an_interval_containing_zero() -> None:
    top1 = {0: 91.2, 1: 88.4, 2: 93.0, 3: 90.1, 4: 89.7}
    iv = paired_interval(top1, dict(top1))
    assert iv.n == 5 and iv.low <= 0 <= iv.high and not iv.resolved
    assert "no difference resolved" in phrase("m", "m", iv)


def test_t_interval_values() -> None:
    from scipy import stats

    a = {0: 3.0, 1: 5.0, 2: 4.0, 3: 6.0}
    b = {0: 1.0, 1: 1.0, 2: 2.0, 3: 2.0, 9: 50.0}  # seed 9 has no pair: ignored
    iv = paired_interval(a, b)
    d = [2.0, 4.0, 2.0, 4.0]
    half = stats.t.ppf(0.975, 3) * stats.tstd(d) / 2
    assert (iv.n, iv.mean) == (4, 3.0)
    assert iv.low == pytest.approx(3 - half) and iv.high == pytest.approx(3 + half)
    assert iv.resolved and phrase("m", "random", iv).startswith("m beats random by +3.00")
    assert paired_interval({0: 1.0}, {0: 2.0}).low is None  # one seed: no interval
    assert paired_interval({0: 1.0}, {1: 2.0}) is None


def test_prose_never_claims_a_difference_whose_interval_contains_zero() -> None:
    rng = random.Random(0)
    claims = 0
    for _ in range(400):
        n = rng.choice([1, 2, 3, 5, 8])
        a = {s: rng.gauss(90, 3) for s in range(n)}
        shift = rng.choice([0.0, 0.5, 3.0, -3.0])
        b = {s: a[s] - shift + rng.gauss(0, 1.5) for s in range(n)}
        iv = paired_interval(a, b)
        text = phrase("m", "o", iv)
        claimed = bool(re.search(r"\b(beats|is below)\b", text))
        contains_zero = iv.low is None or iv.low <= 0 <= iv.high
        assert claimed != contains_zero, (text, iv)
        claims += claimed
    assert claims > 50  # the generator does produce resolved differences


def _row(method, kind, budget, by_seed, converged=True, **extra):
    return {"method": method, "kind": kind, "budget_avg_bits": budget, "by_seed": by_seed, "bops": 1.0,
            "converged": converged, "converged_seeds": 5 if converged else 2, "searched_seeds": 5,
            "verdict_reasons": [] if converged else ["confidence 0.10 < 0.5"], **extra}


def test_report_findings_follow_the_intervals_and_skip_unconverged_rows() -> None:
    from benchmarks.analysis import _compare

    seeds = range(5)
    rows = [_row("uniform W2A2", "baseline", None, {s: 80.0 + s for s in seeds}),
            _row("random", "control", 2.25, {s: 82.0 + s + (0.3 if s % 2 else -0.3) for s in seeds}),
            _row("good", "method", 2.25, {s: 86.0 + s + 0.1 * s for s in seeds}),
            _row("tied", "method", 2.25, {s: 82.0 + s + (0.5 if s % 2 else -0.5) for s in seeds}),
            _row("stuck", "method", 2.25, {s: 99.0 for s in seeds}, converged=False)]
    _compare(rows)
    text = "\n".join(findings(rows))
    assert "good @ 2.25 beats random @ 2.25" in text and "good @ 2.25 beats uniform W2A2" in text
    assert "no difference resolved between tied @ 2.25 and random @ 2.25" in text
    assert "stuck @ 2.25: the search did not converge on 3 of 5 seeds" in text
    assert "stuck @ 2.25 beats" not in text
    for line in text.splitlines():  # every claim's interval excludes 0
        for lo, hi in re.findall(r"\[([-+][\d.]+), ([-+][\d.]+)\]", line):
            if re.search(r"\b(beats|is below)\b", line):
                assert float(lo) > 0 or float(hi) < 0
