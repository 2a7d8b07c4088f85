"""LLT's one-time mixed-precision search: an integer linear program over the learned indicators.

Main paper Eq. 4 as the official code implements it (reference notes, ``../shared/reference``). For
searchable layers ``l``, weight bit ``b_w`` and activation bit ``b_a``, one binary ``x[l, b_w, b_a]``:

    minimise    sum_{l, b_w, b_a} x[l, b_w, b_a] * (s_a[l][b_a] + alpha * s_w[l][b_w])
    subject to  sum_{b_w, b_a} x[l, b_w, b_a] = 1                                   for every layer l
                sum x * MAC_l * b_w * b_a  <=  budget_bitops           (BitOPs, optional)
                fixed_bits + sum x * b_w * numel_l  <=  budget_size_bits  (model size, optional)

``s_w``/``s_a`` are the indicators (learned LSQ steps), MACs come from ``core.bops`` (``limpq``: true
division, or ``exact``), ``fixed_bits`` are the non-searchable first conv and fc weights at 8 bits.
Before solving, the *non-monotone rule* (official ``ERASE_WIRED_POINT``) sets an indicator to
``penalty`` (1e8) where it is smaller than that of the next higher candidate bit, so the solver avoids
it unless the budget forces it.

Solver: ``scipy.optimize.milp`` (HiGHS) with ``mip_rel_gap=0``: the default relative gap (1e-4) is
far too loose once penalties of 1e8 are in the objective and returns a sub-optimal policy. PuLP/CBC
(the official solver) is not a dependency of mpq.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from core.errors import BudgetError, PolicyError

NONMONOTONE_PENALTY = 1e8  # official constant ``C`` for "wired points"
MB_BITS = 8 * 1024 * 1024  # MB = 2^20 bytes, as the official code counts
FP_BITS = 32


@dataclass(frozen=True)
class LayerCosts:
    """Per-layer cost data of the searchable layers (model order) and of the fixed-precision rest.

    ``macs`` and ``numel`` are aligned with ``names``; ``fixed_numel`` are the weight elements of the
    conv/linear layers outside the search (first conv and fc), stored at ``fixed_w_bits`` bits.
    """

    names: tuple[str, ...]
    macs: np.ndarray
    numel: np.ndarray
    fixed_numel: int
    fixed_macs: float = 0.0
    convention: str = "limpq"

    @property
    def total_numel(self) -> int:
        return int(self.numel.sum()) + int(self.fixed_numel)

    def bitops(self, w_bits: np.ndarray | float, a_bits: np.ndarray | float) -> float:
        """sum_l MAC_l * w_l * a_l over the searchable layers."""
        w, a = np.asarray(w_bits, dtype=np.float64), np.asarray(a_bits, dtype=np.float64)
        return float(np.sum(self.macs * w * a))

    def size_bits(self, w_bits: np.ndarray | float, fixed_w_bits: int = 8) -> float:
        """Weight storage in bits: fixed layers at ``fixed_w_bits``, searchable ones at their ``w_l``."""
        w = np.asarray(w_bits, dtype=np.float64)
        return float(self.fixed_numel * fixed_w_bits + np.sum(self.numel * w))

    def fp_size_bits(self) -> float:
        return float(FP_BITS * self.total_numel)


def uniform_bitops_budget(costs: LayerCosts, w_bits: float, a_bits: float) -> float:
    """BitOPs budget of the uniform ``W{w_bits}A{a_bits}`` model over the searchable layers."""
    return costs.bitops(w_bits, a_bits)


def size_budget_bits(costs: LayerCosts, compression: float) -> float:
    """Model-size budget ``32 * (all conv + fc weights) / CR`` in bits."""
    if not compression > 0:
        raise BudgetError(f"compression ratio must be > 0, got {compression}")
    return costs.fp_size_bits() / compression


def apply_nonmonotone_rule(table: np.ndarray, bits: list[int],
                           penalty: float = NONMONOTONE_PENALTY) -> np.ndarray:
    """Penalise non-monotone indicators (official ``ERASE_WIRED_POINT``).

    Lower bits should need larger steps. For each pair of neighbouring candidate bits ``hi > lo`` (in
    the order of the sorted list; the official code compares ``b`` with ``b - 1``), where
    ``s[lo] < s[hi]`` the value at ``lo`` becomes ``penalty``. Comparisons use the original values.
    Returns a new ``(layers, len(bits))`` array; columns follow ``bits``.
    """
    out = np.array(table, dtype=np.float64, copy=True)
    order = sorted(range(len(bits)), key=lambda i: -bits[i])  # column indices, high bit first
    hi, lo = np.array(order[:-1], dtype=int), np.array(order[1:], dtype=int)
    wired = table[:, lo] < table[:, hi]  # (layers, pairs)
    rows, pairs = np.nonzero(wired)
    out[rows, lo[pairs]] = penalty
    return out


@dataclass
class IlpSolution:
    """The optimum of Eq. 4: per-layer bits (aligned with ``LayerCosts.names``) and its statistics."""

    w_bits: list[int]
    a_bits: list[int]
    objective: float
    bitops: float
    size_bits: float
    penalised: list[str]  # "layer:w" / "layer:a" entries that took a penalised (non-monotone) value
    solve_time_s: float
    build_time_s: float
    status: str
    stats: dict = field(default_factory=dict)


def solve_ilp(weight_ind: np.ndarray, act_ind: np.ndarray, costs: LayerCosts, *, alpha: float,
              w_candidates: list[int], a_candidates: list[int], bitops_budget: float | None = None,
              size_budget: float | None = None, fixed_w_bits: int = 8, nonmonotone_rule: bool = True,
              penalty: float = NONMONOTONE_PENALTY, prune_dominated: bool = False,
              reduced_cost_fixing: bool = False,
              time_limit: float | None = None) -> IlpSolution:
    """Solve main paper Eq. 4 exactly (HiGHS branch-and-bound, relative gap 0).

    ``weight_ind`` is ``(L, len(w_candidates))``, ``act_ind`` is ``(L, len(a_candidates))`` (columns in
    candidate order; pass a zero column for a fixed activation width in weight-only search).
    ``bitops_budget`` and ``size_budget`` (bits) are upper bounds; ``None`` disables one, at least one
    must be given. Raises :class:`BudgetError` naming the smallest feasible budget when infeasible.

    Two exact pre-solve reductions are available (off by default: on the ResNet-50 instance they shrink
    the problem HiGHS sees from 1300 to 176 variables but did not make the solve faster here).
    ``prune_dominated`` drops every choice of a layer that another choice of the same layer beats or
    ties in objective and in every active constraint (1300 -> 891 variables). ``reduced_cost_fixing``
    removes the choices that LP duality proves absent from every optimum (see
    :func:`solve_multiple_choice`).
    """
    t0 = time.perf_counter()
    n_layers = len(costs.names)
    wb = np.asarray(w_candidates, dtype=np.float64)
    ab = np.asarray(a_candidates, dtype=np.float64)
    sw, sa = np.asarray(weight_ind, dtype=np.float64), np.asarray(act_ind, dtype=np.float64)
    if sw.shape != (n_layers, len(wb)) or sa.shape != (n_layers, len(ab)):
        raise PolicyError(f"indicator tables {sw.shape}/{sa.shape} do not match {n_layers} layers x "
                          f"{len(wb)} weight / {len(ab)} activation candidates")
    if bitops_budget is None and size_budget is None:
        raise BudgetError("no constraint selected: give a BitOPs budget (--w-bits/--a-bits), a compression "
                          "ratio (--compression), or both")
    if nonmonotone_rule:
        sw = apply_nonmonotone_rule(sw, list(w_candidates), penalty) if len(wb) > 1 else sw
        sa = apply_nonmonotone_rule(sa, list(a_candidates), penalty) if len(ab) > 1 else sa
    _check_feasible(costs, wb, ab, bitops_budget, size_budget, fixed_w_bits)

    n_w, n_a = len(wb), len(ab)
    # Per-layer choice tables, choice index j * n_a + k (j: weight candidate, k: activation candidate).
    cost = (alpha * sw[:, :, None] + sa[:, None, :]).reshape(n_layers, -1)
    resources = []  # (layers, choices) coefficient table and right-hand side, one per active constraint
    if bitops_budget is not None:
        resources.append(((costs.macs[:, None, None] * wb[None, :, None] * ab[None, None, :])
                          .reshape(n_layers, -1), bitops_budget))
    if size_budget is not None:
        per_w = np.broadcast_to(costs.numel[:, None, None] * wb[None, :, None], (n_layers, n_w, n_a))
        resources.append((per_w.reshape(n_layers, -1), size_budget - costs.fixed_numel * fixed_w_bits))
    keep = (_undominated(cost, [r for r, _ in resources]) if prune_dominated
            else np.ones(cost.shape, dtype=bool))
    t1 = time.perf_counter()
    chosen, stats = solve_multiple_choice(cost, resources, keep, reduced_cost_fixing=reduced_cost_fixing,
                                          time_limit=time_limit)
    t2 = time.perf_counter()
    j, k = np.divmod(chosen, n_a)
    w_bits, a_bits = wb[j].astype(int), ab[k].astype(int)
    penalised = ([f"{costs.names[i]}:w" for i in np.nonzero(sw[np.arange(n_layers), j] >= penalty)[0]]
                 + [f"{costs.names[i]}:a" for i in np.nonzero(sa[np.arange(n_layers), k] >= penalty)[0]])
    sol = IlpSolution(
        w_bits=w_bits.tolist(), a_bits=a_bits.tolist(),
        objective=float(np.sum(alpha * sw[np.arange(n_layers), j] + sa[np.arange(n_layers), k])),
        bitops=costs.bitops(w_bits, a_bits), size_bits=costs.size_bits(w_bits, fixed_w_bits),
        penalised=penalised, solve_time_s=t2 - t1, build_time_s=t1 - t0,
        status=stats.pop("status"), stats=stats)
    _verify(sol, bitops_budget, size_budget)
    return sol


def solve_multiple_choice(cost: np.ndarray, resources: list[tuple[np.ndarray, float]], keep: np.ndarray, *,
                          reduced_cost_fixing: bool = True, time_limit: float | None = None
                          ) -> tuple[np.ndarray, dict]:
    """Exact 0/1 multiple-choice program: one choice per layer, minimum total ``cost``, each
    ``sum table[l, choice_l] <= rhs``. Returns the chosen column per layer and solver statistics.

    With ``reduced_cost_fixing``: solve the LP relaxation (HiGHS), round it to a feasible incumbent of
    objective ``U`` and, with the LP optimum ``L`` and reduced costs ``r`` (``r >= 0``; any feasible
    ``x`` has objective ``>= L + sum_i r_i x_i``), drop every variable with ``L + r_i > U``: it cannot be
    in a solution better than the incumbent. The remaining program goes to HiGHS' MILP with
    ``mip_rel_gap=0``; if it has no solution better than ``U``, the incumbent is optimal.
    """
    n_layers = cost.shape[0]
    layer_of, choice_of = np.nonzero(keep)  # candidate variables, layer-major
    stats: dict = {"variables": int(cost.size), "after_pruning": int(layer_of.size)}
    incumbent = None
    if reduced_cost_fixing:
        lp = _lp_relaxation(cost, resources, layer_of, choice_of, n_layers)
        if lp is not None:
            lower, reduced = lp
            incumbent = _round_to_feasible(cost, resources, keep, layer_of, choice_of, reduced)
            upper = float(cost[np.arange(n_layers), incumbent].sum())
            slack = 1e-9 * max(1.0, abs(upper)) + 1e-9
            sel = lower + reduced <= upper + slack
            layer_of, choice_of = layer_of[sel], choice_of[sel]
            stats.update(lp_bound=lower, incumbent=upper)
    stats["after_fixing"] = int(layer_of.size)
    n_var = layer_of.size
    rows = [sparse.csr_matrix((np.ones(n_var), (layer_of, np.arange(n_var))), shape=(n_layers, n_var))]
    lb, ub = [np.ones(n_layers)], [np.ones(n_layers)]
    for table, rhs in resources:  # each row scaled to a right-hand side of 1
        rows.append(sparse.csr_matrix(table[layer_of, choice_of][None, :] / rhs))
        lb.append([-np.inf]), ub.append([1.0])
    # HiGHS' default feasibility tolerances (1e-7 / 1e-6 on the budget rows, scaled to 1) could let a
    # solution exceed a budget by a few BitOPs in a million; 1e-9 matches the check in ``_verify``.
    options: dict = {"mip_rel_gap": 0.0, "disp": False, "primal_feasibility_tolerance": 1e-9,
                     "mip_feasibility_tolerance": 1e-9}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    if incumbent is not None:  # HiGHS' own cutoff (scipy passes unknown options through, with a warning)
        options["objective_bound"] = stats["incumbent"] + 1e-7 * max(1.0, abs(stats["incumbent"]))
    covered = np.bincount(layer_of, minlength=n_layers).min() > 0
    res = None
    if covered:
        constraint = LinearConstraint(sparse.vstack(rows, format="csr"), np.concatenate(lb),
                                      np.concatenate(ub))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
            res = milp(cost[layer_of, choice_of], integrality=np.ones(n_var), bounds=Bounds(0, 1),
                       constraints=constraint, options=options)
    if res is not None and res.x is not None:
        chosen = np.full(n_layers, -1)
        picked = res.x > 0.5
        chosen[layer_of[picked]] = choice_of[picked]
        rows_idx = np.arange(n_layers)
        if incumbent is not None and cost[rows_idx, chosen].sum() > cost[rows_idx, incumbent].sum():
            chosen = incumbent
        stats["status"] = "optimal" if res.status == 0 else str(res.message)
    elif incumbent is not None:
        chosen, stats["status"] = incumbent, "optimal"  # nothing beats the incumbent
    else:
        raise BudgetError("the ILP solver found no solution"
                          + (f" ({res.message})" if res is not None else "")
                          + "; the budget may be too tight for the candidate bits or the time limit "
                          "too short")
    return chosen, stats


def _lp_relaxation(cost: np.ndarray, resources: list[tuple[np.ndarray, float]], layer_of: np.ndarray,
                   choice_of: np.ndarray, n_layers: int) -> tuple[float, np.ndarray] | None:
    """LP optimum and reduced costs of the relaxation ``x >= 0`` (``x <= 1`` follows from the rows)."""
    n_var = layer_of.size
    a_eq = sparse.csr_matrix((np.ones(n_var), (layer_of, np.arange(n_var))), shape=(n_layers, n_var))
    a_ub = np.stack([table[layer_of, choice_of] / rhs for table, rhs in resources])
    c = cost[layer_of, choice_of]
    res = linprog(c, A_ub=a_ub, b_ub=np.ones(len(resources)), A_eq=a_eq, b_eq=np.ones(n_layers),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        return None
    reduced = c - a_eq.T @ res.eqlin.marginals - a_ub.T @ res.ineqlin.marginals
    return float(res.fun), np.maximum(reduced, 0.0)


def _round_to_feasible(cost: np.ndarray, resources: list[tuple[np.ndarray, float]], keep: np.ndarray,
                       layer_of: np.ndarray, choice_of: np.ndarray, reduced: np.ndarray) -> np.ndarray:
    """A good feasible integer policy near the LP optimum (an upper bound for the fixing).

    Per layer the choice of least reduced cost; while a budget is exceeded, the single-layer switch that
    frees the most (normalised) resource per unit of objective; then single-layer improvements that stay
    within every budget (1-opt) until none is left. Falls back to the cheapest-resource choice per layer.
    """
    n_layers, n_choices = cost.shape
    rows = np.arange(n_layers)
    rc = np.full(cost.shape, np.inf)
    rc[layer_of, choice_of] = reduced
    chosen = rc.argmin(axis=1)
    for _ in range(n_layers * n_choices):  # repair
        over = [(t[rows, chosen].sum() - r) / r for t, r in resources]
        if max(over) <= 0:
            break
        table, rhs = resources[int(np.argmax(over))]
        saved = (table[rows, chosen][:, None] - table) / rhs
        extra = cost - cost[rows, chosen][:, None]
        no_worse = np.logical_and.reduce([t <= t[rows, chosen][:, None] for t, _ in resources])
        score = np.where(keep & no_worse & (saved > 0), saved / np.maximum(extra, 1e-12), -np.inf)
        layer, choice = np.unravel_index(np.argmax(score), score.shape)
        if not np.isfinite(score[layer, choice]):
            break
        chosen[layer] = choice
    if any(t[rows, chosen].sum() > r for t, r in resources):  # the smallest choices fit (checked before)
        usage = sum(t / r for t, r in resources)
        chosen = np.where(keep, usage, np.inf).argmin(axis=1)
    for _ in range(n_layers * n_choices):  # 1-opt improvement within the budgets
        ok = keep.copy()
        for table, rhs in resources:
            current = table[rows, chosen]
            ok &= current.sum() - current[:, None] + table <= rhs
        delta = np.where(ok, cost - cost[rows, chosen][:, None], np.inf)
        layer, choice = np.unravel_index(np.argmin(delta), delta.shape)
        if not delta[layer, choice] < 0:
            break
        chosen[layer] = choice
    return chosen


def _undominated(cost: np.ndarray, resources: list[np.ndarray]) -> np.ndarray:
    """``(layers, choices)`` mask of choices that no other choice of the same layer dominates.

    Choice ``m`` dominates ``i`` when it is no worse in objective and in every resource, and strictly
    better in one of them, or equal in all and ``m < i`` (one of identical choices is kept).
    """
    tables = [cost] + list(resources)
    le = np.ones(cost.shape + cost.shape[1:], dtype=bool)  # le[l, m, i]: m <= i in every table
    lt = np.zeros_like(le)
    for t in tables:
        le &= t[:, :, None] <= t[:, None, :]
        lt |= t[:, :, None] < t[:, None, :]
    n = cost.shape[1]
    earlier = np.tri(n, k=-1, dtype=bool).T  # earlier[m, i]: m < i
    dominated = le & (lt | earlier[None])
    dominated[:, np.arange(n), np.arange(n)] = False
    return ~dominated.any(axis=1)


def _check_feasible(costs: LayerCosts, wb: np.ndarray, ab: np.ndarray, bitops_budget: float | None,
                    size_budget: float | None, fixed_w_bits: int) -> None:
    """All layers at the smallest candidates minimise both BitOPs and size; compare with the budgets."""
    w_min, a_min = float(wb.min()), float(ab.min())
    if bitops_budget is not None:
        least = costs.bitops(w_min, a_min)
        if bitops_budget < least:
            raise BudgetError(
                f"BitOPs budget {bitops_budget / 1e9:.4f} G is infeasible: the smallest reachable is "
                f"{least / 1e9:.4f} G (every searchable layer at W{w_min:g}A{a_min:g}); raise the budget "
                "(--w-bits/--a-bits) or add lower candidate bits")
    if size_budget is not None:
        least = costs.size_bits(w_min, fixed_w_bits)
        if size_budget < least:
            raise BudgetError(
                f"model-size budget {size_budget / MB_BITS:.4f} MB (compression "
                f"{costs.fp_size_bits() / size_budget:.4f}) is infeasible: the smallest reachable is "
                f"{least / MB_BITS:.4f} MB, i.e. compression at most {costs.fp_size_bits() / least:.4f} "
                f"(every searchable weight at {w_min:g} bits, first conv and fc at {fixed_w_bits}); "
                "lower --compression or add lower candidate bits")


def _verify(sol: IlpSolution, bitops_budget: float | None, size_budget: float | None) -> None:
    """Re-check the returned policy in exact float64 arithmetic (the solver works with tolerances)."""
    if bitops_budget is not None and sol.bitops > bitops_budget * (1 + 1e-9):
        raise BudgetError(f"solver returned a policy over the BitOPs budget ({sol.bitops:.6g} > "
                          f"{bitops_budget:.6g}); please report this")
    if size_budget is not None and sol.size_bits > size_budget * (1 + 1e-9):
        raise BudgetError(f"solver returned a policy over the size budget ({sol.size_bits:.6g} > "
                          f"{size_budget:.6g}); please report this")
