"""LLT's one-time mixed-precision search: an integer linear program over the learned indicators.

Main paper Eq. 4 as the official code implements it (reference notes, ``../shared/reference``). For
searchable layers ``l``, weight bit ``b_w`` and activation bit ``b_a``, one binary ``x[l, b_w, b_a]``:

    minimise    sum_{l, b_w, b_a} x[l, b_w, b_a] * (s_a[l][b_a] + alpha * s_w[l][b_w])
    subject to  sum_{b_w, b_a} x[l, b_w, b_a] = 1                                   for every layer l
                sum x * MAC_l * b_w * b_a  <=  budget_bitops           (BitOPs, optional)
                fixed_bits + sum x * b_w * numel_l  <=  budget_size_bits  (model size, optional)

``s_w``/``s_a`` are the indicators (learned LSQ steps), MACs come from ``core.bops`` (``limpq``: true
division, ``limpq_int``: the official truncated counts, or ``exact``), ``fixed_bits`` are the
non-searchable first conv and fc weights at 8 bits. Before solving, the *non-monotone rule* (official
``ERASE_WIRED_POINT``) sets an indicator to ``penalty`` (1e8) where it is smaller than that of the next
higher candidate bit, so the solver avoids it unless the budget forces it. The objective is then minimised
exactly as penalty units first and the rest second (:func:`solve_lexicographic`): the official 1e8
objective in exact arithmetic, which float64 cannot resolve next to forced penalties.

Solvers (``solver=``), both exact:

- ``"bnb"`` (default): mpq's branch and bound for this multiple-choice knapsack (``bnb.py``: LP multipliers,
  reduced-cost fixing, convex coverage bounds, dominance and symmetry cuts); ResNet-50 in about 50 ms.
  Where forced penalties make the penalty units a third budget row, that stage goes to HiGHS.
- ``"highs"``: the generic MILP ``scipy.optimize.milp`` (HiGHS) with ``mip_rel_gap=0`` and
  ``mip_abs_gap=1e-9``; also the fallback when the branch and bound hits its node or time limit.
  PuLP/CBC (the official solver) is not a dependency of mpq.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from core.errors import BudgetError, PolicyError
from papers.llt.bnb import solve_branch_and_bound

NONMONOTONE_PENALTY = 1e8  # official constant ``C`` for "wired points"
MB_BITS = 8 * 1024 * 1024  # MB = 2^20 bytes, as the official code counts
FP_BITS = 32
SOLVERS = ("bnb", "highs")


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
    objective: float  # penalty * penalty_units + unpenalised, as the official objective counts it
    penalty_units: float  # alpha per penalised weight value plus 1 per penalised activation value
    unpenalised: float  # the objective without the penalised values
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
              penalty: float = NONMONOTONE_PENALTY, solver: str = "bnb",
              time_limit: float | None = None) -> IlpSolution:
    """Solve main paper Eq. 4 exactly.

    ``weight_ind`` is ``(L, len(w_candidates))``, ``act_ind`` is ``(L, len(a_candidates))`` (columns in
    candidate order; pass a zero column for a fixed activation width in weight-only search).
    ``bitops_budget`` and ``size_budget`` (bits) are upper bounds; ``None`` disables one, at least one
    must be given. Raises :class:`BudgetError` naming the smallest feasible budget when infeasible.
    ``solver``: ``"bnb"`` or ``"highs"`` (module docstring).
    """
    if solver not in SOLVERS:
        raise PolicyError(f"unknown ILP solver {solver!r}; choose one of {SOLVERS}")
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
    # The objective splits into penalty units (alpha per penalised weight value, 1 per penalised
    # activation value) times ``penalty`` and the un-penalised rest (``lexicographic_units``).
    pen_w, pen_a = (sw >= penalty).astype(np.float64), (sa >= penalty).astype(np.float64)
    units = (alpha * pen_w[:, :, None] + pen_a[:, None, :]).reshape(n_layers, -1)
    real = (alpha * np.where(pen_w > 0, 0.0, sw)[:, :, None]
            + np.where(pen_a > 0, 0.0, sa)[:, None, :]).reshape(n_layers, -1)
    resources = []  # (layers, choices) coefficient table and right-hand side, one per active constraint
    if bitops_budget is not None:
        resources.append(((costs.macs[:, None, None] * wb[None, :, None] * ab[None, None, :])
                          .reshape(n_layers, -1), bitops_budget))
    if size_budget is not None:
        per_w = np.broadcast_to(costs.numel[:, None, None] * wb[None, :, None], (n_layers, n_w, n_a))
        resources.append((per_w.reshape(n_layers, -1), size_budget - costs.fixed_numel * fixed_w_bits))
    t1 = time.perf_counter()
    granularity = lexicographic_units(units, real, penalty, alpha)
    if granularity:
        chosen, stats = solve_lexicographic(units, real, resources, granularity=granularity, solver=solver,
                                            time_limit=time_limit)
    else:
        chosen, stats = solve_multiple_choice(penalty * units + real, resources, solver=solver,
                                              time_limit=time_limit)
    t2 = time.perf_counter()
    j, k = np.divmod(chosen, n_a)
    w_bits, a_bits = wb[j].astype(int), ab[k].astype(int)
    rows = np.arange(n_layers)
    penalised = ([f"{costs.names[i]}:w" for i in np.nonzero(pen_w[rows, j])[0]]
                 + [f"{costs.names[i]}:a" for i in np.nonzero(pen_a[rows, k])[0]])
    sol = IlpSolution(
        w_bits=w_bits.tolist(), a_bits=a_bits.tolist(),
        objective=float(penalty * units[rows, chosen].sum() + real[rows, chosen].sum()),
        penalty_units=float(units[rows, chosen].sum()), unpenalised=float(real[rows, chosen].sum()),
        bitops=costs.bitops(w_bits, a_bits), size_bits=costs.size_bits(w_bits, fixed_w_bits),
        penalised=penalised, solve_time_s=t2 - t1, build_time_s=t1 - t0,
        status=stats.pop("status"), stats=stats)
    _verify(sol, bitops_budget, size_budget)
    return sol


def lexicographic_units(units: np.ndarray, real: np.ndarray, penalty: float, alpha: float) -> float:
    """The least difference between two reachable totals of penalty ``units`` when minimising
    ``penalty * units + real`` is the same as minimising ``units`` first and ``real`` second, else 0.

    Totals are ``alpha * i + j`` (``i``/``j`` penalised weight/activation values), so two different totals
    differ by at least ``g = min |alpha * di + dj| > 0`` over ``|di|, |dj| <= layers``. The orders agree
    when ``penalty * g`` exceeds the widest possible spread of the un-penalised sum; with the official
    1e8 they always do (``real`` sums are below 1e3). 0 also when no choice is penalised.
    """
    if not units.any():
        return 0.0
    n = units.shape[0]
    d = np.arange(-n, n + 1, dtype=np.float64)
    diffs = np.abs(alpha * d[:, None] + d[None, :]).ravel()
    diffs = diffs[diffs > 1e-9 * max(1.0, abs(alpha)) * n]  # equal totals (integer alpha) are no gap
    granularity = float(diffs.min())
    spread = float(np.sum(real.max(axis=1) - real.min(axis=1)))
    return granularity if penalty * granularity > spread else 0.0


def solve_lexicographic(units: np.ndarray, real: np.ndarray, resources: list[tuple[np.ndarray, float]], *,
                        granularity: float, solver: str = "bnb", time_limit: float | None = None,
                        max_nodes: int = 2_000_000) -> tuple[np.ndarray, dict]:
    """Minimise the penalty ``units`` first and ``real`` second, i.e. the official objective
    ``1e8 * units + real`` in exact arithmetic, in two exact solves.

    1. ``U* = min sum units`` under the budgets (totals differ by at least ``granularity``: the branch and
       bound stops as soon as no improvement of that size is left).
    2. ``min sum real`` under the budgets and ``sum units <= U*``. With ``U* = 0`` (no penalised choice
       forced, the usual case) the penalised choices are forbidden; otherwise the units become one more
       budget row. The branch and bound takes that row when it is the second one; with two budgets
       already (three rows) HiGHS solves this stage: its cuts close the LP gaps of 1-15 % that such
       instances have, where the branch and bound's single-row bounds ran into their node limit.

    One objective with the penalties in it (as officially) is both slower and inexact in float64: the
    LP bound is then off by penalty-sized fractions, and a total near ``1.8e9`` holds the un-penalised
    part only to about ``1e-6``.
    """
    first, stats1 = solve_multiple_choice(units, resources, solver=solver, time_limit=time_limit,
                                          max_nodes=max_nodes, granularity=granularity)
    least = float(units[np.arange(units.shape[0]), first].sum())
    options = dict(time_limit=time_limit, max_nodes=max_nodes, incumbent=first)
    if least < 0.5 * granularity:
        chosen, stats = solve_multiple_choice(real, resources, solver=solver, permitted=units == 0, **options)
    else:
        rows = resources + [(units, least)]
        stage_solver = "highs" if len(rows) > 2 else solver
        chosen, stats = solve_multiple_choice(real, rows, solver=stage_solver, **options)
        if stage_solver != solver:
            stats["solver"] = "highs (penalised choices forced under two budgets)"
    stats["penalty_units"] = least
    stats["penalty_stage"] = {k: stats1[k] for k in ("solver", "nodes", "solve_s") if k in stats1}
    return chosen, stats


def solve_multiple_choice(cost: np.ndarray, resources: list[tuple[np.ndarray, float]], *,
                          solver: str = "bnb", time_limit: float | None = None,
                          max_nodes: int = 2_000_000, permitted: np.ndarray | None = None,
                          incumbent: np.ndarray | None = None,
                          granularity: float = 0.0) -> tuple[np.ndarray, dict]:
    """Exact 0/1 multiple-choice program: one choice per layer, minimum total ``cost``, each
    ``sum table[l, choice_l] <= rhs``. Returns the chosen column per layer and solver statistics
    (``stats["solver"]`` names the solver that produced the answer). ``permitted`` (mask) forbids
    choices, ``incumbent`` is a feasible policy to start from, ``granularity`` the least difference of
    two totals (:func:`papers.llt.bnb.solve_branch_and_bound`).

    ``"bnb"`` runs :func:`papers.llt.bnb.solve_branch_and_bound`; should it stop at ``max_nodes`` or
    ``time_limit`` (not on the instances of the tests), HiGHS solves the problem instead and the
    statistics say so.
    """
    if solver == "bnb":
        chosen, stats = solve_branch_and_bound(cost, [table / rhs for table, rhs in resources],
                                               max_nodes=max_nodes, time_limit=time_limit,
                                               permitted=permitted, incumbent=incumbent,
                                               granularity=granularity)
        if chosen is not None:
            stats["solver"] = "bnb"
            return chosen, stats
        stopped = stats
    else:
        stopped = None
    chosen, stats = _solve_highs(cost, resources, time_limit=time_limit, permitted=permitted)
    stats["solver"] = "highs"
    if stopped is not None:
        stats["solver"] = f"highs (the branch and bound stopped after {stopped['nodes']} nodes)"
    return chosen, stats


def _solve_highs(cost: np.ndarray, resources: list[tuple[np.ndarray, float]], *,
                 time_limit: float | None, permitted: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """``scipy.optimize.milp`` (HiGHS) with a relative gap of 0 and tight feasibility tolerances;
    choices outside ``permitted`` get an upper bound of 0."""
    n_layers, n_choices = cost.shape
    n_var = cost.size
    layer_of, choice_of = np.divmod(np.arange(n_var), n_choices)  # variables, layer-major
    stats: dict = {"variables": int(n_var)}
    rows = [sparse.csr_matrix((np.ones(n_var), (layer_of, np.arange(n_var))), shape=(n_layers, n_var))]
    lb, ub = [np.ones(n_layers)], [np.ones(n_layers)]
    for table, rhs in resources:  # each row scaled to a right-hand side of 1
        rows.append(sparse.csr_matrix(table[layer_of, choice_of][None, :] / rhs))
        lb.append([-np.inf]), ub.append([1.0])
    # HiGHS' default feasibility tolerances (1e-7 / 1e-6 on the budget rows, scaled to 1) could let a
    # solution exceed a budget by a few BitOPs in a million; 1e-9 matches the check in ``_verify``. Its
    # default absolute gap (1e-6) would stop above the optimum by up to that much.
    options: dict = {"mip_rel_gap": 0.0, "mip_abs_gap": 1e-9, "disp": False,
                     "primal_feasibility_tolerance": 1e-9, "mip_feasibility_tolerance": 1e-9}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    constraint = LinearConstraint(sparse.vstack(rows, format="csr"), np.concatenate(lb), np.concatenate(ub))
    with warnings.catch_warnings():  # scipy passes the two tolerance options to HiGHS with a warning
        warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
        upper = np.ones(n_var) if permitted is None else permitted[layer_of, choice_of].astype(np.float64)
        res = milp(cost[layer_of, choice_of], integrality=np.ones(n_var), bounds=Bounds(0, upper),
                   constraints=constraint, options=options)
    if res.x is None:
        raise BudgetError(f"the ILP solver found no solution ({res.message}); the budget may be too tight "
                          "for the candidate bits or the time limit too short")
    chosen = np.full(n_layers, -1)
    picked = res.x > 0.5
    chosen[layer_of[picked]] = choice_of[picked]
    stats["status"] = "optimal" if res.status == 0 else str(res.message)
    return chosen, stats


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
