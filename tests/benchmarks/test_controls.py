"""The ``random`` control: uniform draws from the search space inside the budget window."""

from __future__ import annotations

import math

import pytest

from benchmarks.controls import search_random
from benchmarks.recipe import seeded_builder
from core.bops import count
from core.errors import BudgetError
from core.method import SearchRequest
from core.models import build_model

W, A = (2, 3, 4), (2, 3, 4)


def _request(budget: float, seed: int = 0, **options) -> tuple[SearchRequest, list, float]:
    build = seeded_builder(lambda: build_model("digits_resnet", num_classes=10, widths=[4, 8, 16], blocks=1),
                           seed)
    rows = count(build(), (3, 16, 16), convention="bpnas").counted_rows
    macs = sum(r.macs for r in rows)
    req = SearchRequest(build, (3, 16, 16), 10, None, None, W, A, budget ** 2 * macs, budget, "unused",
                        seed=seed, options=options)
    return req, rows, macs


@pytest.mark.parametrize("budget", [2.25, 2.6, 3.0, 3.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_policy_respects_budget_window_and_search_space(budget, seed) -> None:
    req, rows, macs = _request(budget, seed, draws=8, tolerance_bits=0.05)
    policy = search_random(req)
    assert policy.names == [r.name for r in rows]  # every searchable layer, model order
    assert all(w in W and a in A for _, (w, a) in policy.items())
    bops = count(req.build_model(), (3, 16, 16), policy=policy, convention="bpnas").bops
    assert bops == pytest.approx(policy.meta["bops"])
    assert (budget - 0.05) ** 2 * macs - 1e-6 <= bops <= req.budget_bops  # inside [b - tol, b]
    assert policy.meta["draws"] == 8 and math.sqrt(bops / macs) <= budget


def test_random_policy_is_seeded_and_keeps_the_draw_closest_to_the_budget() -> None:
    req, _, _ = _request(2.6, seed=3, draws=16, tolerance_bits=0.3)
    a, b = search_random(req), search_random(req)
    assert a.to_dict() == b.to_dict()  # deterministic per (seed, budget)
    other = search_random(_request(2.6, seed=4, draws=16, tolerance_bits=0.3)[0])
    assert other.to_dict()["layers"] != a.to_dict()["layers"]
    one = search_random(_request(2.6, seed=3, draws=1, tolerance_bits=0.3)[0])
    assert one.meta["bops"] <= a.meta["bops"]  # more draws: at least as close to the budget


def test_random_policy_with_an_empty_window_says_how_to_fix_it() -> None:
    req, _, _ = _request(1.5, draws=4, tolerance_bits=0.05, max_proposals=20000)  # below W2A2
    with pytest.raises(BudgetError, match="raise the tolerance"):
        search_random(req)
