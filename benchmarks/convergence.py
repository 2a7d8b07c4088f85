"""Did a search converge? One criterion per kind of diagnostics (``policy.meta["diagnostics"]``).

The benchmark compares the *policies* searches return, so each criterion asks whether the returned policy
is what the search learned, rather than its starting point or a tie-break (the kinds and their keys are
the contract of :mod:`core.method`):

- **distribution** (``max_prob``): *decided*. Per distribution over K candidates (a layer's weights or
  activations), the confidence ``(p_max - 1/K) / (1 - 1/K)`` is 0 for a uniform pi and 1 for a one-hot
  one; the search converged when the mean confidence is at least :data:`MIN_CONFIDENCE` (0.5: on average
  halfway from uniform to one-hot; e.g. p_max >= 0.667 for K = 3). A frozen architecture learning rate
  leaves pi uniform (confidence 0), and its winner-take-all policy is tie noise.
- **importance** (``monotone_fraction``, ``indicator_change``): *trained and sane*. At least
  :data:`MIN_MONOTONE` (90 %) of the indicator rows decrease strictly with the bit-width, and the
  indicators moved from their data-driven initialisation by a mean ``|log(s_end / s_init)|`` of at least
  :data:`MIN_INDICATOR_CHANGE` (0.02, i.e. 2 %). Initial LSQ steps are monotone by construction, so
  monotonicity alone cannot tell a trained indicator from an untouched one.
- **evolution** (``best_so_far``): *plateaued*. The last quarter of the iterations improved the best
  fitness by at most :data:`MAX_LATE_GAIN` (10 %) of the whole run's improvement (at least 4 iterations).

Any kind: ``"fallback": true`` (the returned policy is not the search's result) is not converged. A search
that reports no diagnostics is ``unverified``. The benchmark ranks only converged rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MIN_CONFIDENCE = 0.5
MIN_MONOTONE = 0.9
MIN_INDICATOR_CHANGE = 0.02
MAX_LATE_GAIN = 0.1

CRITERIA = {
    "distribution": f"mean confidence (p_max - 1/K)/(1 - 1/K) of pi >= {MIN_CONFIDENCE}",
    "importance": f"monotone indicator rows >= {MIN_MONOTONE:.0%} and mean |log(s_end/s_init)| >= "
                  f"{MIN_INDICATOR_CHANGE}",
    "evolution": f"last quarter of the iterations gains <= {MAX_LATE_GAIN:.0%} of the total gain",
}


@dataclass
class Verdict:
    """``converged``: True / False, or None when the search reported no diagnostics."""

    kind: str  # distribution | importance | evolution | unknown | none
    converged: bool | None
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)


def _flat(values: Any, ks: tuple[int, int, int]) -> list[tuple[float, int]]:
    """Pairs (value, K) from per-layer entries: one number (K = ks[2]) or [weights, activations]."""
    out = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out += [(float(x), int(k)) for x, k in zip(v, ks[:2])]
        else:
            out.append((float(v), int(ks[2])))
    return out


def _distribution(d: dict, w_candidates: tuple, a_candidates: tuple) -> Verdict:
    default_k = (len(w_candidates), len(a_candidates), len(w_candidates) * len(a_candidates))
    pairs = _flat(d["max_prob"], default_k)
    if d.get("num_candidates") is not None:  # the method's own K per distribution
        ks = [int(k) for k, _ in _flat(d["num_candidates"], default_k)]
        pairs = [(p, k) for (p, _), k in zip(pairs, ks)]
    if not pairs:
        return Verdict("distribution", False, "no layer in max_prob")
    conf = [(p - 1 / k) / (1 - 1 / k) if k > 1 else 1.0 for p, k in pairs]
    numbers = {"confidence": sum(conf) / len(conf), "mean_max_prob": sum(p for p, _ in pairs) / len(pairs)}
    if d.get("entropy") is not None:
        ents = [e / math.log(k) for (e, _), (_, k) in zip(_flat(d["entropy"], default_k), pairs) if k > 1]
        if ents:
            numbers["norm_entropy"] = sum(ents) / len(ents)
    eb = d.get("expected_bops")
    if isinstance(eb, dict) and "start" in eb and "end" in eb:
        numbers["exp_bops_start"], numbers["exp_bops_end"] = float(eb["start"]), float(eb["end"])
    ok = numbers["confidence"] >= MIN_CONFIDENCE
    return Verdict("distribution", ok, f"confidence {numbers['confidence']:.2f} "
                                       f"{'>=' if ok else '<'} {MIN_CONFIDENCE}", numbers)


def _importance(d: dict) -> Verdict:
    mono = float(d["monotone_fraction"])
    change = float(d.get("indicator_change", 0.0))
    numbers = {"monotone_fraction": mono, "indicator_change": change}
    if "last_epoch_change" in d:
        numbers["last_epoch_change"] = float(d["last_epoch_change"])
    problems = []
    if mono < MIN_MONOTONE:
        problems.append(f"monotone {mono:.2f} < {MIN_MONOTONE}")
    if change < MIN_INDICATOR_CHANGE:
        problems.append(f"indicator change {change:.3f} < {MIN_INDICATOR_CHANGE}")
    return Verdict("importance", not problems, "; ".join(problems) or
                   f"monotone {mono:.2f}, indicator change {change:.3f}", numbers)


def _evolution(d: dict) -> Verdict:
    curve = [float(x) for x in d["best_so_far"]]
    if len(curve) < 4:
        return Verdict("evolution", False, f"{len(curve)} iterations: too few to judge a plateau (>= 4)")
    total = curve[-1] - curve[0]
    late = curve[-1] - curve[int(0.75 * (len(curve) - 1))]
    numbers = {"iterations": float(len(curve)), "total_gain": total, "late_gain": late}
    ok = late <= MAX_LATE_GAIN * total or total <= 0
    return Verdict("evolution", ok, f"last-quarter gain {late:.3g} of {total:.3g}", numbers)


def judge(diagnostics: dict | None, w_candidates: tuple = (2, 3, 4), a_candidates: tuple = (2, 3, 4)
          ) -> Verdict:
    """The verdict of one search from its ``meta["diagnostics"]`` (see the module docstring)."""
    if not diagnostics:
        return Verdict("none", None, "no diagnostics reported (core/method.py)")
    d = diagnostics
    try:
        if "max_prob" in d:
            verdict = _distribution(d, tuple(w_candidates), tuple(a_candidates))
        elif "monotone_fraction" in d:
            verdict = _importance(d)
        elif "best_so_far" in d:
            verdict = _evolution(d)
        else:
            return Verdict("unknown", None, f"diagnostics of an unknown kind (keys {sorted(d)[:6]})")
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as exc:
        return Verdict("unknown", False, f"malformed diagnostics: {type(exc).__name__}: {exc}")
    if d.get("fallback"):
        verdict.converged = False
        verdict.reason = "fallback policy (not the search's result); " + verdict.reason
    return verdict
