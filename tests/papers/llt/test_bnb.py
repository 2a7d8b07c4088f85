"""mpq's branch and bound for LLT's search (``papers/llt/bnb.py``): exact against brute force and HiGHS,
including repeated layers (symmetry cuts) and exact ties; its bounds are valid relaxations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from papers.llt import bnb
from papers.llt.ilp import solve_multiple_choice


def _problem(seed: int, n_layers: int, n_choices: int, repeats: int = 1, ties: bool = False):
    """Random multiple-choice instance; ``repeats`` copies of each layer's resource rows (like the blocks
    of a ResNet stage), with equal costs too when ``ties``. Budgets sit between the least and the most use."""
    rng = np.random.default_rng(seed)
    base = n_layers // repeats
    use1 = np.repeat(rng.uniform(0.1, 1.0, (base, n_choices)), repeats, axis=0)
    use2 = np.repeat(rng.uniform(0.1, 1.0, (base, n_choices)), repeats, axis=0)
    cost = rng.uniform(0.0, 1.0, (n_layers, n_choices))
    if ties:
        cost = np.repeat(cost[:base], repeats, axis=0)
    budgets = []
    for use in (use1, use2):
        lo, hi = use.min(axis=1).sum(), use.max(axis=1).sum()
        budgets.append(lo + rng.uniform(0.2, 0.6) * (hi - lo))
    return cost, [(use1, budgets[0]), (use2, budgets[1])]


def _brute_force(cost, resources):
    n_layers, n_choices = cost.shape
    combos = np.array(list(itertools.product(range(n_choices), repeat=n_layers)))
    rows = np.arange(n_layers)
    ok = np.ones(len(combos), dtype=bool)
    for table, rhs in resources:
        ok &= table[rows, combos].sum(axis=1) <= rhs
    total = np.where(ok, cost[rows, combos].sum(axis=1), np.inf)
    return float(total.min())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budgets", ["both", "first", "second"])
@pytest.mark.parametrize("repeats,ties", [(1, False), (3, False), (3, True)])
def test_branch_and_bound_matches_brute_force(seed, budgets, repeats, ties):
    cost, resources = _problem(seed, n_layers=6, n_choices=4, repeats=repeats, ties=ties)
    resources = {"both": resources, "first": resources[:1], "second": resources[1:]}[budgets]
    chosen, stats = solve_multiple_choice(cost, resources, solver="bnb")
    assert stats["solver"] == "bnb" and stats["status"] == "optimal"
    rows = np.arange(cost.shape[0])
    for table, rhs in resources:
        assert table[rows, chosen].sum() <= rhs * (1 + 1e-9)
    assert cost[rows, chosen].sum() == pytest.approx(_brute_force(cost, resources), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_branch_and_bound_agrees_with_highs_on_larger_instances(seed):
    """30 layers x 25 choices with ten-fold repeated rows: too many for brute force, exact for both."""
    cost, resources = _problem(100 + seed, n_layers=30, n_choices=25, repeats=10)
    chosen_bnb, stats = solve_multiple_choice(cost, resources, solver="bnb")
    chosen_highs, _ = solve_multiple_choice(cost, resources, solver="highs")
    rows = np.arange(cost.shape[0])
    assert stats["solver"] == "bnb"
    assert cost[rows, chosen_bnb].sum() == pytest.approx(cost[rows, chosen_highs].sum(), rel=1e-9)


def test_node_limit_falls_back_to_highs_with_the_same_answer():
    cost, resources = _problem(7, n_layers=6, n_choices=4)
    chosen, stats = solve_multiple_choice(cost, resources, solver="bnb", max_nodes=1)
    assert stats["solver"].startswith("highs (the branch and bound stopped after")
    rows = np.arange(cost.shape[0])
    assert cost[rows, chosen].sum() == pytest.approx(_brute_force(cost, resources), rel=1e-12)


def test_three_budgets_are_refused():
    cost, resources = _problem(0, n_layers=3, n_choices=2)
    with pytest.raises(ValueError, match="one or two budgets"):
        bnb.solve_branch_and_bound(cost, [t / r for t, r in resources] * 2)


@pytest.mark.parametrize("seed", range(5))
def test_coverage_bound_is_a_lower_bound_of_every_completion(seed):
    """F(D) <= min over integer choices of sum r + mu * (D - sum a)^+, for needs D across the range."""
    rng = np.random.default_rng(seed)
    n_layers, n_choices, mu = 4, 5, float(rng.uniform(0.5, 3.0))
    use = [[rng.uniform(0, 1, n_choices).tolist(), [0.0] * n_choices] for _ in range(n_layers)]
    red = []
    for _ in range(n_layers):
        r = rng.uniform(0, 1, n_choices)
        r[rng.integers(n_choices)] = 0.0  # every layer has a choice of reduced cost 0, as after the LP
        red.append(r.tolist())
    fn = bnb._coverage_tables(use, red, 0, mu)[0]
    combos = list(itertools.product(range(n_choices), repeat=n_layers))
    for need in np.linspace(-0.5, n_layers + 0.5, 41):
        exact = min(sum(red[l][c] for l, c in enumerate(cs))
                    + mu * max(0.0, need - sum(use[l][0][c] for l, c in enumerate(cs))) for cs in combos)
        bound = bnb._evaluate(fn, float(need), mu)
        assert bound <= exact + 1e-12
    # and it is not vacuous: beyond the most use, every unit of need costs mu
    top = sum(max(u[0]) for u in use)
    assert bnb._evaluate(fn, top + 1.0, mu) >= mu * 1.0


def test_lower_hull_skips_points_above_the_chords():
    hull = bnb._lower_hull_right_of([0.0, 1.0, 2.0, 3.0, 2.0], [0.0, 2.0, 1.0, 3.0, 5.0], 0.0, 0.0)
    assert hull == [(2.0, 1.0), (3.0, 3.0)]


def test_undominated_keeps_one_of_identical_choices_and_drops_dominated_ones():
    cost = np.array([[1.0, 1.0, 2.0, 0.5]])
    use = [np.array([[1.0, 1.0, 1.0, 2.0]])]
    assert bnb.undominated(cost, use).tolist() == [[True, False, False, True]]
