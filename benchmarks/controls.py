"""The ``random`` control of the cross-method benchmark: a policy drawn uniformly at the budget.

Built into the harness (not a paper), it runs through the same :class:`core.method.SearchRequest` and is
trained with the same recipe as every method. Per (seed, budget):

1. propose policies by drawing each searchable layer's (w_bits, a_bits) uniformly and independently from
   the candidates (the search space), in batches, from a generator seeded by (seed, budget);
2. accept a proposal when its average bits sqrt(BOPs / MACs) lies in ``[b - tolerance_bits, b]`` for the
   budget's b: rejection sampling, so each accepted policy is uniform over the policies in that window;
3. after ``draws`` acceptances, keep the one with the most BOPs (the first on a tie): closest to the
   budget, as the methods' policies are, and chosen without looking at data or accuracy.

``request.options``: ``draws`` (16) and ``tolerance_bits`` (0.05); the suite sets them from its settings
(``random_draws``, ``random_tolerance_bits``). If ``max_proposals`` (2,000,000) proposals find no policy
in the window, a :class:`~core.errors.BudgetError` says to widen it.
"""

from __future__ import annotations

import math

import numpy as np

from core.bops import count
from core.errors import BudgetError, ConfigError
from core.method import SearchMethod, SearchRequest
from core.policy import BitPolicy

DEFAULTS = {"draws": 16, "tolerance_bits": 0.05, "max_proposals": 2_000_000}
_BATCH = 8192


def sample_policies(macs: np.ndarray, w_candidates: tuple[int, ...], a_candidates: tuple[int, ...],
                    low_bops: float, high_bops: float, draws: int, rng: np.random.Generator,
                    max_proposals: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Up to ``draws`` accepted (w, a) bit arrays (``draws, layers``) with BOPs in [low, high], and the
    number of proposals made."""
    w, a = np.asarray(w_candidates), np.asarray(a_candidates)
    ws, as_, proposals = [], [], 0
    while sum(len(x) for x in ws) < draws and proposals < max_proposals:
        wi = rng.integers(0, len(w), size=(_BATCH, len(macs)))
        ai = rng.integers(0, len(a), size=(_BATCH, len(macs)))
        bops = (macs * w[wi] * a[ai]).sum(axis=1)
        ok = (bops >= low_bops) & (bops <= high_bops)
        ws.append(w[wi[ok]])
        as_.append(a[ai[ok]])
        proposals += _BATCH
    wb = np.concatenate(ws)[:draws] if ws else np.zeros((0, len(macs)), dtype=int)
    ab = np.concatenate(as_)[:draws] if as_ else np.zeros((0, len(macs)), dtype=int)
    return wb, ab, proposals


def search_random(request: SearchRequest) -> BitPolicy:
    """The control's policy for the request (module docstring)."""
    unknown = sorted(set(request.options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"random: unknown option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **request.options}
    draws, tol = int(opts["draws"]), float(opts["tolerance_bits"])
    if draws < 1 or tol < 0:
        raise ConfigError(f"random: draws must be >= 1 and tolerance_bits >= 0, got {draws}, {tol}")
    rows = count(request.build_model(), tuple(request.input_size), convention="bpnas").counted_rows
    names = [r.name for r in rows]
    macs = np.array([r.macs for r in rows], dtype=np.float64)
    b = math.sqrt(request.budget_bops / macs.sum())
    low = max(0.0, b - tol) ** 2 * macs.sum()
    rng = np.random.default_rng([int(request.seed), round(request.budget_bops)])
    wb, ab, proposals = sample_policies(macs, tuple(request.w_candidates), tuple(request.a_candidates), low,
                                        request.budget_bops, draws, rng, int(opts["max_proposals"]))
    if len(wb) == 0:
        raise BudgetError(f"random: no policy of the search space within [{b - tol:.3f}, {b:.3f}] average "
                          f"bits in {proposals:,} uniform proposals; raise the tolerance "
                          "(random_tolerance_bits) or change the budget")
    bops = (macs * wb * ab).sum(axis=1)
    best = int(np.argmax(bops))  # first of the maxima
    bits = {n: (int(w), int(a)) for n, w, a in zip(names, wb[best], ab[best])}
    return BitPolicy(bits, {"method": "random", "draws": len(wb), "proposals": proposals,
                            "window_avg_bits": [b - tol, b],
                            "bops": float(bops[best]), "budget_bops": request.budget_bops})


RANDOM = SearchMethod(name="random", paper="control (benchmarks/controls.py)", search=search_random,
                      description="uniform draws from the search space within [budget - tolerance, budget], "
                                  "the one closest to the budget")
