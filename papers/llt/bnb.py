"""An exact branch and bound for LLT's search problem: a multiple-choice knapsack with a few budgets.

``ilp.solve_ilp`` reduces main paper Eq. 4 to this form: layers ``l``, choices ``i`` per layer with cost
``c[l, i]`` and resource use ``a_k[l, i]`` for each budget ``k`` (scaled to a right-hand side of 1); pick one
choice per layer, minimise ``sum_l c[l, x_l]`` subject to ``sum_l a_k[l, x_l] <= 1`` for every ``k``.

The search is exact (optimal up to ``opt_tol``; where any two totals differ by at least ``granularity``,
only improvements of that size are looked for; budgets respected up to ``feas_tol``). It rests on one
identity. With multipliers ``mu_k >= 0`` (from the LP relaxation), ``u_l = min_i (c + mu . a)[l, i]``, the
reduced costs ``r = c + mu . a - u_l >= 0`` and ``lower = sum_l u_l - sum_k mu_k``, every choice vector
``x`` satisfies

    cost(x) = lower + sum_l r[l, x_l] + sum_k mu_k * slack_k(x),   slack_k(x) = 1 - sum_l a_k[l, x_l].   (*)

For a feasible ``x`` every term is non-negative, so given an incumbent of cost ``U``:

1. *reduced-cost fixing*: a choice with ``r > U - lower`` is in no better solution;
2. *coverage bound*: at a node (first layers fixed, budget use ``s_k`` so far) any completion costs at least
   ``r_fixed + max_k F_k(1 - s_k)``, where ``F_k(D)`` is the least ``sum r + mu_k (D - sum a_k)^+`` over the
   free layers with each layer relaxed to the lower convex hull of its ``(a_k, r)`` points (a convex
   piecewise-linear function, precomputed per depth and evaluated by bisection);
3. *feasibility*: ``s_k`` plus the least use of the free layers must fit the budget.

Two exact reductions shrink the tree: *dominance* (a choice another choice of the same layer beats or ties
in cost and every resource is dropped) and *symmetry* (layers with identical resource rows, e.g. the
repeated blocks of a ResNet stage, may exchange choices without changing any budget; a node where such an
exchange with an earlier layer is cheaper, or equally cheap and lexicographically smaller, is cut, which
keeps the lexicographically smallest optimum of every exchange class).

Layers are visited group by group (identical rows together, groups with the widest ``mu``-weighted resource
range first); children in increasing ``r``.
"""

from __future__ import annotations

import bisect
import time

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

FEAS_TOL = 1e-9  # budget rows are scaled to 1; the same tolerance ``ilp._verify`` accepts
OPT_TOL = 1e-12  # relative: improvements smaller than this are not searched for


def solve_branch_and_bound(cost: np.ndarray, usage: list[np.ndarray], *, max_nodes: int = 2_000_000,
                           time_limit: float | None = None, feas_tol: float = FEAS_TOL,
                           opt_tol: float = OPT_TOL, permitted: np.ndarray | None = None,
                           incumbent: np.ndarray | None = None, granularity: float = 0.0
                           ) -> tuple[np.ndarray | None, dict]:
    """Minimise ``sum_l cost[l, x_l]`` subject to ``sum_l usage[k][l, x_l] <= 1`` for every ``k``.

    ``cost`` and each ``usage[k]`` are ``(layers, choices)`` arrays (resources already divided by their
    budget). ``permitted`` (a boolean mask of that shape) forbids the choices where it is False. A feasible
    policy must exist: either the all-smallest choice is feasible (the caller checks) or ``incumbent`` is
    a feasible policy to start from. ``granularity > 0`` says that the totals of two policies differ by at
    least that much or not at all (integer costs: 1), so only improvements of that size are searched for.
    Returns the chosen column per layer, or ``None`` when ``max_nodes`` or ``time_limit`` stopped the
    search (the caller then falls back to a MILP solver), and statistics.
    """
    t_start = time.perf_counter()
    n_layers = cost.shape[0]
    if len(usage) not in (1, 2):
        raise ValueError(f"the branch and bound handles one or two budgets, got {len(usage)}")
    if len(usage) == 1:  # a second budget that every policy meets: no bound, no cut
        usage = [usage[0], np.zeros_like(usage[0])]
    rows = np.arange(n_layers)
    keep = undominated(cost, usage, permitted)
    mu = _lp_multipliers(cost, usage, keep)
    lag = cost + sum(m * a for m, a in zip(mu, usage))
    lag = np.where(keep, lag, np.inf)
    u = lag.min(axis=1)
    reduced = lag - u[:, None]  # inf where dropped by dominance
    lower = float(u.sum() - mu.sum())

    start = round_to_feasible(cost, usage, keep, reduced)
    if incumbent is not None and (any(a[rows, start].sum() > 1.0 + feas_tol for a in usage)
                                  or cost[rows, incumbent].sum() < cost[rows, start].sum()):
        start = np.asarray(incumbent)
    incumbent = start
    best_cost = float(cost[rows, incumbent].sum())
    scale = max(1.0, abs(best_cost))
    tol = opt_tol * scale  # ties
    gap = max(tol, granularity - 1e-9 * scale)  # the least improvement searched for
    stats: dict = {"variables": int(cost.size), "after_pruning": int(keep.sum()), "lp_bound": lower,
                   "first_incumbent": best_cost, "multipliers": mu.tolist()}

    # 1. reduced-cost fixing against the incumbent
    allowed = [np.nonzero(reduced[l] <= best_cost - lower - gap + 2 * tol)[0] for l in range(n_layers)]
    allowed = [idx[np.argsort(reduced[l, idx], kind="stable")] for l, idx in enumerate(allowed)]
    stats["after_fixing"] = int(sum(len(idx) for idx in allowed))
    if not all(idx.size for idx in allowed):  # no policy improves on the incumbent by ``gap``
        stats.update(nodes=0, solve_s=time.perf_counter() - t_start, status="optimal")
        return incumbent, stats
    order = _visit_order(usage, mu, allowed)

    choices = [allowed[l].tolist() for l in order]
    red = [reduced[l, allowed[l]].tolist() for l in order]
    cst = [cost[l, allowed[l]].tolist() for l in order]
    use = [[a[l, allowed[l]].tolist() for a in usage] for l in order]
    # least use of the free layers after each depth (index depth + 1), and the coverage functions
    least = [[0.0] * (n_layers + 1) for _ in range(2)]
    for k in range(2):
        for d in range(n_layers - 1, -1, -1):
            least[k][d] = least[k][d + 1] + min(use[d][k])
    (least0, least1), (mu0, mu1) = least, mu.tolist()
    cover0, cover1 = (_coverage_tables(use, red, k, float(mu[k])) for k in range(2))
    # symmetry: earlier layers with the same resource rows, and the full reduced rows for exchanges
    group_of = _identical_rows(usage)
    twins = [[e for e in range(d) if group_of[order[e]] == group_of[order[d]]] for d in range(n_layers)]
    full_red = [reduced[l].tolist() for l in order]

    deadline = None if time_limit is None else t_start + float(time_limit)
    state = {"nodes": 0, "best_cost": best_cost, "limit": best_cost - lower - gap, "stopped": False}
    best = [incumbent[l] for l in order]
    current = [0] * n_layers
    cap = 1.0 + feas_tol

    def visit(depth: int, r_sum: float, c_sum: float, used0: float, used1: float) -> None:
        state["nodes"] += 1
        if state["nodes"] >= max_nodes or (deadline is not None and not state["nodes"] & 1023
                                            and time.perf_counter() > deadline):
            state["stopped"] = True
        if state["stopped"]:
            return
        if depth == n_layers:
            if c_sum < state["best_cost"] - gap:
                state["best_cost"] = c_sum
                state["limit"] = c_sum - lower - gap
                best[:] = current
            return
        nxt = depth + 1
        (use0, use1), costs, free0, free1 = use[depth], cst[depth], least0[nxt], least1[nxt]
        f0, f1 = cover0[nxt], cover1[nxt]
        for i, r in enumerate(red[depth]):
            r_node = r_sum + r
            if r_node >= state["limit"]:
                break  # children are sorted by r
            new0, new1 = used0 + use0[i], used1 + use1[i]
            if new0 + free0 > cap or new1 + free1 > cap:
                continue
            bound = r_node + max(_evaluate(f0, 1.0 - new0, mu0), _evaluate(f1, 1.0 - new1, mu1))
            if bound >= state["limit"]:
                continue
            choice = choices[depth][i]
            if twins[depth] and _exchange_is_better(twins[depth], current, full_red, depth, choice, tol):
                continue
            current[depth] = choice
            visit(nxt, r_node, c_sum + costs[i], new0, new1)

    visit(0, 0.0, 0.0, 0.0, 0.0)
    stats.update(nodes=state["nodes"], solve_s=time.perf_counter() - t_start)
    if state["stopped"]:
        return None, stats
    chosen = np.empty(n_layers, dtype=int)
    chosen[order] = best
    stats["status"] = "optimal"
    return chosen, stats


def _exchange_is_better(twins: list[int], current: list[int], full_red: list[list[float]], depth: int,
                        choice: int, tol: float) -> bool:
    """True when giving ``choice`` to an earlier twin and the twin's choice to this layer is cheaper, or as
    cheap and lexicographically smaller (resources are identical, so both are equally feasible)."""
    mine = full_red[depth]
    for e in twins:
        theirs, other = full_red[e], current[e]
        swapped = theirs[choice] + mine[other]
        if swapped == np.inf:
            continue  # the exchange uses a dominated choice
        diff = swapped - (theirs[other] + mine[choice])
        if diff < -tol or (diff <= tol and choice < other):
            return True
    return False


def _coverage_tables(use: list[list[list[float]]], red: list[list[float]], k: int, mu_k: float
                     ) -> list[tuple[float, float, list[float], list[float]]]:
    """``F_k`` over the layers at positions ``>= depth``, for every depth, as ``(base_use, base_r, X, Y)``:
    from every layer's least-``r`` choice (the most use among ties), the hull segments of slope below
    ``mu_k`` merged by slope; ``X``/``Y`` are the cumulative extra use and reduced cost along them."""
    n = len(red)
    tables: list = [None] * (n + 1)
    base_use, base_r, segments = 0.0, 0.0, []  # segments of the layers after the current depth, sorted
    tables[n] = (0.0, 0.0, [0.0], [0.0])
    for d in range(n - 1, -1, -1):
        a, r = use[d][k], red[d]
        b = min(range(len(r)), key=lambda i: (r[i], -a[i]))
        base_use += a[b]
        base_r += r[b]
        x0, y0 = a[b], r[b]
        for x1, y1 in _lower_hull_right_of(a, r, x0, y0):
            slope = (y1 - y0) / (x1 - x0)
            if slope >= mu_k:
                break
            bisect.insort(segments, (slope, x1 - x0))
            x0, y0 = x1, y1
        xs, ys = [0.0], [0.0]
        for slope, length in segments:
            xs.append(xs[-1] + length)
            ys.append(ys[-1] + slope * length)
        tables[d] = (base_use, base_r, xs, ys)
    return tables


def _lower_hull_right_of(a: list[float], r: list[float], x0: float, y0: float) -> list[tuple[float, float]]:
    """Vertices after ``(x0, y0)`` of the lower convex hull of it and the points with ``a > x0``."""
    hull: list[tuple[float, float]] = [(x0, y0)]
    last_x = None
    for x, y in sorted((x, y) for x, y in zip(a, r) if x > x0):
        if x == last_x:
            continue  # same use, higher cost
        last_x = x
        while len(hull) >= 2:
            (ax, ay), (bx, by) = hull[-2], hull[-1]
            if (by - ay) * (x - ax) >= (y - ay) * (bx - ax):  # b is on or above the chord a -> (x, y)
                hull.pop()
            else:
                break
        hull.append((x, y))
    return hull[1:]


def _evaluate(fn: tuple[float, float, list[float], list[float]], need: float, mu_k: float) -> float:
    """``F_k(need)``: the least reduced cost plus ``mu_k`` per unit of budget left unused."""
    base_use, base_r, xs, ys = fn
    extra = need - base_use
    if extra <= 0.0:
        return base_r
    j = bisect.bisect_left(xs, extra)
    if j >= len(xs):
        return base_r + ys[-1] + mu_k * (extra - xs[-1])
    x0, x1 = xs[j - 1], xs[j]
    return base_r + ys[j - 1] + (ys[j] - ys[j - 1]) * (extra - x0) / (x1 - x0)


def _lp_multipliers(cost: np.ndarray, usage: list[np.ndarray], keep: np.ndarray) -> np.ndarray:
    """Optimal duals ``mu >= 0`` of the budget rows of the LP relaxation (zeros if the LP fails: any
    ``mu >= 0`` gives valid bounds, good ones only make the search shorter)."""
    n_layers = cost.shape[0]
    layer_of, choice_of = np.nonzero(keep)
    n_var = layer_of.size
    a_eq = sparse.csr_matrix((np.ones(n_var), (layer_of, np.arange(n_var))), shape=(n_layers, n_var))
    a_ub = np.stack([a[layer_of, choice_of] for a in usage])
    res = linprog(cost[layer_of, choice_of], A_ub=a_ub, b_ub=np.ones(len(usage)), A_eq=a_eq,
                  b_eq=np.ones(n_layers), bounds=(0, None), method="highs")
    if res.status != 0:
        return np.zeros(len(usage))
    return np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)


def _visit_order(usage: list[np.ndarray], mu: np.ndarray, allowed: list[np.ndarray]) -> list[int]:
    """Layers grouped by identical resource rows; groups (and layers within a group) with the widest
    ``mu``-weighted range of resource use over their allowed choices first."""
    spread = np.array([sum(m * np.ptp(a[l, idx]) for m, a in zip(mu, usage)) if idx.size else 0.0
                       for l, idx in enumerate(allowed)])
    group = np.array(_identical_rows(usage))
    widest = np.array([spread[group == g].max() for g in group])
    return np.lexsort((np.arange(len(group)), -spread, group, -widest)).tolist()


def _identical_rows(usage: list[np.ndarray]) -> list[int]:
    """Group id per layer: layers whose resource rows are equal in every budget share an id."""
    ids: dict[bytes, int] = {}
    return [ids.setdefault(b"".join(np.ascontiguousarray(a[l]).tobytes() for a in usage), len(ids))
            for l in range(usage[0].shape[0])]


def undominated(cost: np.ndarray, usage: list[np.ndarray], permitted: np.ndarray | None = None
                ) -> np.ndarray:
    """``(layers, choices)`` mask of the ``permitted`` choices (default: all) that no other permitted
    choice of the same layer dominates.

    Choice ``m`` dominates ``i`` when it is no worse in cost and in every resource, and strictly better in
    one of them, or equal in all and ``m < i`` (one of identical choices is kept).
    """
    tables = [cost] + list(usage)
    le = np.ones(cost.shape + cost.shape[1:], dtype=bool)  # le[l, m, i]: m <= i in every table
    lt = np.zeros_like(le)
    for t in tables:
        le &= t[:, :, None] <= t[:, None, :]
        lt |= t[:, :, None] < t[:, None, :]
    n = cost.shape[1]
    earlier = np.tri(n, k=-1, dtype=bool).T  # earlier[m, i]: m < i
    dominated = le & (lt | earlier[None])
    dominated[:, np.arange(n), np.arange(n)] = False
    if permitted is None:
        return ~dominated.any(axis=1)
    dominated &= permitted[:, :, None]  # only a permitted choice can dominate
    return permitted & ~dominated.any(axis=1)


def round_to_feasible(cost: np.ndarray, usage: list[np.ndarray], keep: np.ndarray,
                      reduced: np.ndarray) -> np.ndarray:
    """A good feasible policy near the LP optimum (the first incumbent).

    Per layer the choice of least reduced cost; while a budget is exceeded, the single-layer switch that
    frees the most of it per unit of cost; then single-layer improvements that stay within every budget
    (1-opt) until none is left. Falls back to the least-use choice per layer.
    """
    n_layers, n_choices = cost.shape
    rows = np.arange(n_layers)
    chosen = np.where(keep, reduced, np.inf).argmin(axis=1)
    for _ in range(n_layers * n_choices):  # repair
        over = [a[rows, chosen].sum() - 1.0 for a in usage]
        if max(over) <= 0:
            break
        a = usage[int(np.argmax(over))]
        saved = a[rows, chosen][:, None] - a
        extra = cost - cost[rows, chosen][:, None]
        no_worse = np.logical_and.reduce([t <= t[rows, chosen][:, None] for t in usage])
        score = np.where(keep & no_worse & (saved > 0), saved / np.maximum(extra, 1e-12), -np.inf)
        layer, choice = np.unravel_index(np.argmax(score), score.shape)
        if not np.isfinite(score[layer, choice]):
            break
        chosen[layer] = choice
    if any(a[rows, chosen].sum() > 1.0 for a in usage):  # the least-use choices fit (checked before)
        chosen = np.where(keep, sum(usage), np.inf).argmin(axis=1)
    for _ in range(n_layers * n_choices):  # 1-opt improvement within the budgets
        ok = keep.copy()
        for a in usage:
            current = a[rows, chosen]
            ok &= current.sum() - current[:, None] + a <= 1.0
        delta = np.where(ok, cost - cost[rows, chosen][:, None], np.inf)
        layer, choice = np.unravel_index(np.argmin(delta), delta.shape)
        if not delta[layer, choice] < 0:
            break
        chosen[layer] = choice
    return chosen
