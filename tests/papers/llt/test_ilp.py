"""LLT's ILP (main paper Eq. 4): optimality by brute force, each constraint, the non-monotone rule, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core.errors import BudgetError, PolicyError
from papers.llt.ilp import (
    NONMONOTONE_PENALTY,
    LayerCosts,
    apply_nonmonotone_rule,
    size_budget_bits,
    solve_ilp,
    uniform_bitops_budget,
)

BITS = [4, 3, 2]


def _instance(seed: int, n_layers: int = 4) -> tuple[np.ndarray, np.ndarray, LayerCosts]:
    rng = np.random.default_rng(seed)
    # steps grow as bits shrink (monotone), with layer-dependent scales
    base_w = rng.uniform(0.01, 0.1, size=(n_layers, 1))
    base_a = rng.uniform(0.05, 0.5, size=(n_layers, 1))
    growth = np.array([[1.0, 1.7, 3.1]])
    sw = base_w * growth * rng.uniform(0.9, 1.1, size=(n_layers, 3))
    sa = base_a * growth * rng.uniform(0.9, 1.1, size=(n_layers, 3))
    costs = LayerCosts(names=tuple(f"l{i}" for i in range(n_layers)),
                       macs=rng.integers(1, 100, n_layers).astype(float) * 1e6,
                       numel=rng.integers(1, 100, n_layers).astype(float) * 1e3, fixed_numel=5000)
    return sw, sa, costs


def _brute_force(sw, sa, costs, alpha, bitops_budget, size_budget, fixed_w_bits=8):
    """Every one of the 9^L policies, vectorised; returns (best objective, (w_bits, a_bits))."""
    n_layers, n = len(costs.names), len(BITS)
    combos = np.array(list(itertools.product(range(n * n), repeat=n_layers)))  # (9^L, L)
    j, k = combos // n, combos % n
    w, a = np.array(BITS)[j], np.array(BITS)[k]
    ok = np.ones(len(combos), dtype=bool)
    if bitops_budget is not None:
        ok &= (w * a * costs.macs).sum(axis=1) <= bitops_budget
    if size_budget is not None:
        ok &= costs.fixed_numel * fixed_w_bits + (w * costs.numel).sum(axis=1) <= size_budget
    layers = np.arange(n_layers)
    obj = (alpha * sw[layers, j] + sa[layers, k]).sum(axis=1)
    best = int(np.argmin(np.where(ok, obj, np.inf)))
    return float(obj[best]), (w[best].tolist(), a[best].tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("which", ["bitops", "size", "both"])
@pytest.mark.parametrize("solver", ["bnb", "highs"])
def test_ilp_is_optimal_against_brute_force(seed, which, solver):
    sw, sa, costs = _instance(seed)
    bitops = uniform_bitops_budget(costs, 3, 3) if which in ("bitops", "both") else None
    size = size_budget_bits(costs, 11.0) if which in ("size", "both") else None
    sol = solve_ilp(sw, sa, costs, alpha=2.0, w_candidates=BITS, a_candidates=BITS, bitops_budget=bitops,
                    size_budget=size, solver=solver)
    best_obj, (w_best, a_best) = _brute_force(sw, sa, costs, 2.0, bitops, size)
    assert sol.objective == pytest.approx(best_obj, rel=1e-12)
    assert (sol.w_bits, sol.a_bits) == (w_best, a_best)
    assert sol.status == "optimal"
    assert sol.stats["solver"] == solver


def test_each_constraint_alone_is_respected_and_binding():
    sw, sa, costs = _instance(5, n_layers=6)
    bitops = uniform_bitops_budget(costs, 3, 3)
    only_bitops = solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS,
                            bitops_budget=bitops)
    assert only_bitops.bitops <= bitops
    size = size_budget_bits(costs, 12.0)
    only_size = solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS, size_budget=size)
    assert only_size.size_bits <= size
    # the size constraint alone leaves activations free: they all take the highest bits
    assert set(only_size.a_bits) == {4}
    # without any budget pressure the best policy is all-highest; a budget must change it
    assert only_bitops.w_bits != [4] * 6 or only_bitops.a_bits != [4] * 6


def test_nonmonotone_rule_penalises_the_lower_bit():
    table = np.array([[0.1, 0.2, 0.15],    # s[2] < s[3]: the 2-bit value is penalised
                      [0.3, 0.2, 0.5],     # s[3] < s[4]: the 3-bit value is penalised
                      [0.1, 0.2, 0.4]])    # monotone: unchanged
    out = apply_nonmonotone_rule(table, BITS)
    assert out[0].tolist() == [0.1, 0.2, NONMONOTONE_PENALTY]
    assert out[1].tolist() == [0.3, NONMONOTONE_PENALTY, 0.5]
    assert out[2].tolist() == table[2].tolist()
    # comparisons use the original values, and the column order of ``bits`` does not matter
    out_rev = apply_nonmonotone_rule(table[:, ::-1], BITS[::-1])
    assert np.array_equal(out_rev, out[:, ::-1])


def test_nonmonotone_rule_changes_the_choice_and_is_a_named_option():
    sw, sa, costs = _instance(3, n_layers=3)
    sa = sa.copy()
    sa[0] = [0.5, 0.6, 0.45]  # the 2-bit step is below the 3-bit one: a "wired point"
    budget = uniform_bitops_budget(costs, 3, 3)
    on = solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS, bitops_budget=budget)
    off = solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS, bitops_budget=budget,
                    nonmonotone_rule=False)
    assert off.a_bits[0] == 2
    assert on.a_bits[0] != 2 and on.penalised == []


def test_budget_can_force_a_penalised_value():
    sw, sa, costs = _instance(4, n_layers=2)
    sw = sw.copy()
    sw[0] = [0.1, 0.3, 0.2]  # 2-bit weight of layer 0 penalised
    least = costs.size_bits(2)
    sol = solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS, size_budget=least)
    assert sol.w_bits == [2, 2] and sol.penalised == ["l0:w"]


def test_infeasible_budgets_name_the_smallest_feasible_one():
    sw, sa, costs = _instance(0)
    least_bitops = uniform_bitops_budget(costs, 2, 2)
    with pytest.raises(BudgetError, match=rf"smallest reachable is {least_bitops / 1e9:.4f} G"):
        solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS,
                  bitops_budget=0.99 * least_bitops)
    max_cr = costs.fp_size_bits() / costs.size_bits(2)
    with pytest.raises(BudgetError, match=rf"compression at most {max_cr:.4f}"):
        solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS,
                  size_budget=size_budget_bits(costs, max_cr * 1.01))
    # exactly the smallest budget is feasible: all layers at the lowest bits
    sol = solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS,
                    bitops_budget=least_bitops)
    assert sol.w_bits == [2] * 4 and sol.a_bits == [2] * 4
    with pytest.raises(BudgetError, match="no constraint selected"):
        solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS)


def test_weight_only_search_with_fixed_activations():
    sw, _, costs = _instance(1)
    zero = np.zeros((4, 1))
    budget = uniform_bitops_budget(costs, 3, 8)
    sol = solve_ilp(sw, zero, costs, alpha=1.0, w_candidates=BITS, a_candidates=[8], bitops_budget=budget)
    assert sol.a_bits == [8] * 4 and sol.bitops <= budget
    best_obj, _ = min(
        (float(np.sum(sw[np.arange(4), list(j)])), j) for j in itertools.product(range(3), repeat=4)
        if costs.bitops(np.array(BITS)[list(j)], 8) <= budget)
    assert sol.objective == pytest.approx(best_obj)


def test_shape_mismatch_is_a_policy_error():
    sw, sa, costs = _instance(0)
    with pytest.raises(PolicyError, match="do not match"):
        solve_ilp(sw[:, :2], sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS, bitops_budget=1e12)


def test_unknown_solver_is_a_policy_error():
    sw, sa, costs = _instance(0)
    with pytest.raises(PolicyError, match="unknown ILP solver 'cbc'"):
        solve_ilp(sw, sa, costs, alpha=1.0, w_candidates=BITS, a_candidates=BITS, bitops_budget=1e12,
                  solver="cbc")
