"""The search objective of BP-NAS: expected complexity E(SN), the soft barrier penalty (supp. eq. 3-5), the
Prob-1 regularizer (supp. eq. 6-7), the feasible initialisation and the feasibility-keeping architecture step.

Expected complexity (supp. section 1, "average bits"): with block ``b`` holding the layers ``l in b`` and
candidate pairs ``k`` with probabilities ``p_bk``,

    E(SN) = sqrt( (sum_b M_b sum_k p_bk w_k a_k + BOPs_fixed) / FLOPs ),   M_b = sum_{l in b} MACs_l,

the square root of the expected BOPs over the FLOPs, ``FLOPs`` being the MACs of every layer inside the
budget (supp.: "BOPs ~ FLOPs x b x a"; the real budget is ``B_max^2 x FLOPs``). Which layers are inside is
core's ``bpnas`` counting convention (:func:`core.bops.count`): every conv / linear except the first conv,
which is fixed at 8 bits outside the sum, and the classifier, which supp. Table 1 does not list. Under this
convention the three published ResNet-20 configurations average 2.961 / 3.195 / 3.544 bits, within their
budgets 3 / 3.5 / 4; with the 8-bit first conv inside the sum the B_max = 3 configuration would average
3.061 bits and break its own budget (tests/papers/bpnas/test_losses.py).

Everything here is generic over blocks: a detection supernet (FPN convs, RPN head convs, bbox-head linears
as blocks) builds its :class:`SupernetCost` from its own ``core.bops`` report the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from core.bops import BopsReport
from core.errors import BudgetError, ConfigError
from papers.bpnas.supernet import BlockSelector


class SupernetCost:
    """E(SN) of a supernet: its blocks' selectors, each block's MACs inside the budget, and the constant
    BOPs / MACs of counted layers that are not searched (``fixed_bops``, ``fixed_macs``)."""

    def __init__(self, selectors: Sequence[BlockSelector], block_macs: Sequence[float],
                 fixed_bops: float = 0.0, fixed_macs: float = 0.0) -> None:
        if len(selectors) != len(block_macs) or not selectors:
            raise ConfigError(f"SupernetCost needs one MAC count per block ({len(selectors)} blocks, "
                              f"{len(block_macs)} counts)")
        self.selectors = list(selectors)
        self.block_macs = [float(m) for m in block_macs]
        self.fixed_bops, self.fixed_macs = float(fixed_bops), float(fixed_macs)
        self.flops = sum(self.block_macs) + self.fixed_macs
        if self.flops <= 0:
            raise ConfigError("the searched blocks have no MACs inside the budget; nothing to constrain")

    @classmethod
    def from_report(cls, selectors: Sequence[BlockSelector], report: BopsReport,
                    fixed_bits: Mapping[str, Sequence[int]] | None = None) -> SupernetCost:
        """Block MACs from a ``core.bops`` report of the FLOAT model (same layer names): every counted row
        belongs to a block, or is a layer kept at ``fixed_bits[name]``; anything else is an error."""
        block_of = {name: i for i, s in enumerate(selectors) for name in s.layer_names}
        macs = [0.0] * len(selectors)
        fixed_bops = fixed_macs = 0.0
        for row in report.counted_rows:
            if row.name in block_of:
                macs[block_of[row.name]] += row.macs
            elif fixed_bits is not None and row.name in fixed_bits:
                w, a = fixed_bits[row.name]
                fixed_bops += row.macs * w * a
                fixed_macs += row.macs
            else:
                raise ConfigError(f"layer {row.name!r} is inside the {report.convention!r} budget but "
                                  "neither searched nor given fixed bits; search it or exclude it from the "
                                  "budget")
        return cls(selectors, macs, fixed_bops, fixed_macs)

    def expected_bops(self) -> torch.Tensor:
        """``sum_b M_b sum_k p_bk w_k a_k + BOPs_fixed`` in float64, differentiable in every ``alpha``."""
        terms = [m * s.expected_cost() for s, m in zip(self.selectors, self.block_macs) if m > 0]
        return torch.stack(terms).sum() + self.fixed_bops

    def expected_avg_bits(self) -> torch.Tensor:
        """E(SN) in average bits: ``sqrt(expected BOPs / FLOPs)`` (differentiable)."""
        return torch.sqrt(self.expected_bops() / self.flops)

    def value(self) -> float:
        """E(SN) as a number."""
        with torch.no_grad():
            return float(self.expected_avg_bits())

    def avg_bits(self, pairs_by_block: Mapping[str, Sequence[int]]) -> float:
        """Average bits of a discrete choice ``{block: (w, a)}``."""
        bops = sum(m * pairs_by_block[s.name][0] * pairs_by_block[s.name][1]
                   for s, m in zip(self.selectors, self.block_macs)) + self.fixed_bops
        return math.sqrt(bops / self.flops)

    def cheapest(self) -> dict[str, tuple[int, int]]:
        """Every block at its cheapest pair (fewest BOPs; ties: fewer weight bits)."""
        return {s.name: min(s.pairs, key=lambda p: (p[0] * p[1], p[0])) for s in self.selectors}


# ------------------------------------------------------------------------------------------ eq. 3-5
def barrier_penalty(expected: torch.Tensor, b_max: float, mu: float) -> torch.Tensor:
    """Supp. eq. (3): ``L_c* = -mu log(log(B_max + 1 - E(SN)))``, defined for ``E < B_max``; ``+inf`` on and
    beyond the boundary (with zero gradient there: the search never evaluates it outside, see
    :func:`guarded_arch_step`). Its value is 0 at ``E = B_max + 1 - e``, negative below, and tends to
    ``+inf`` as ``E -> B_max``."""
    inside = expected < b_max
    safe = torch.where(inside, expected, torch.full_like(expected, b_max - 1.0))
    value = -mu * torch.log(torch.log(b_max + 1.0 - safe))
    return torch.where(inside, value, torch.full_like(value, math.inf))


def barrier_gradient(expected: float, b_max: float, mu: float) -> float:
    """Supp. eq. (4), the closed form: ``dL_c*/dE = mu / (log(B_max + 1 - E) (B_max + 1 - E))`` (> 0 inside
    the domain, ``+inf`` at the boundary). Eq. (5) is the chain rule ``dL/dtheta = dL/dE dE/dtheta``."""
    if expected >= b_max:
        return math.inf
    gap = b_max + 1.0 - expected
    return mu / (math.log(gap) * gap)


# ------------------------------------------------------------------------------------------ eq. 6-7
def prob1_regularizer(probs: Iterable[torch.Tensor]) -> torch.Tensor:
    """Supp. eq. (6): ``L_prob-1 = sum_l prod_m (1 - p_lm)`` over the blocks' probability vectors. By
    Property 1 (supp. section 2) a block's term is minimal (0) iff one ``p_lm`` is 1."""
    terms = [torch.prod(1.0 - p) for p in probs]
    if not terms:
        raise ConfigError("prob1_regularizer: no probability vectors")
    return torch.stack(terms).sum()


def prob1_gradient(p: torch.Tensor) -> torch.Tensor:
    """Supp. eq. (7), the closed form for one block: ``dL/dp_j = -prod_{m != j} (1 - p_m)``."""
    q = 1.0 - p.detach()
    return torch.stack([-torch.prod(torch.cat([q[:j], q[j + 1:]])) for j in range(q.numel())])


# ------------------------------------------------------------------------------------------ the path gradient
def path_log_prob(selectors: Iterable[BlockSelector]) -> torch.Tensor:
    """``sum_b log p_b(s_b)`` of the pairs sampled for this step (the score-function term of the sampled
    search: its gradient times the advantage estimates the task loss's gradient w.r.t. alpha)."""
    terms = [torch.log_softmax(s.alpha, dim=0)[s.index] for s in selectors if s.index is not None]
    if not terms:
        raise ConfigError("path_log_prob: no block has a sampled pair; call resample_paths first")
    return torch.stack(terms).sum()


# ------------------------------------------------------------------------------------------ feasibility
def _tilt(cost: SupernetCost, lam: float) -> None:
    """alpha_bk = -lam (M_b / max M) (c_k / max c): the maximum-entropy p for a given expected BOPs."""
    m_max = max(cost.block_macs) or 1.0
    with torch.no_grad():
        for s, m in zip(cost.selectors, cost.block_macs):
            c = s.costs.to(s.alpha.dtype)
            s.alpha.copy_(-lam * (m / m_max) * c / c.max())


def feasible_init(cost: SupernetCost, b_max: float, margin: float) -> dict[str, float]:
    """Set the logits so that the search starts inside the feasible domain ``E(SN) < B_max``.

    Uniform ``p`` (all logits 0) when its E(SN) is at most ``B_max - margin``; otherwise the
    maximum-entropy ``p`` whose E(SN) is the target ``B_max - min(margin, (B_max - E_min) / 2)``, i.e.
    ``p_bk ~ exp(-lam M_b w_k a_k)`` (the maximiser of sum_b H(p_b) at a given expected BOPs) with ``lam``
    found by bisection. ``E_min`` (every block at its cheapest pair) >= ``B_max`` raises :class:`BudgetError`.
    Returns ``{"lambda", "target", "expected_avg_bits", "uniform_avg_bits", "min_avg_bits"}``.
    """
    e_min = cost.avg_bits(cost.cheapest())
    if e_min >= b_max:
        raise BudgetError(f"B_max = {b_max:g} bits is infeasible: every block at its cheapest pair already "
                          f"averages {e_min:.4f} bits; raise B_max or add cheaper candidate pairs")
    _tilt(cost, 0.0)
    uniform = cost.value()
    target = b_max - min(margin, (b_max - e_min) / 2)
    lam = 0.0
    if uniform > target:
        lo, hi = 0.0, 1.0
        while True:
            _tilt(cost, hi)
            if cost.value() <= target or hi > 1e12:
                break
            lo, hi = hi, hi * 2
        for _ in range(100):
            mid = (lo + hi) / 2
            _tilt(cost, mid)
            lo, hi = (mid, hi) if cost.value() > target else (lo, mid)
        lam = hi
        _tilt(cost, lam)
    return {"lambda": lam, "target": target, "expected_avg_bits": cost.value(), "uniform_avg_bits": uniform,
            "min_avg_bits": e_min}


def guarded_arch_step(optimizer: torch.optim.Optimizer, cost: SupernetCost, b_max: float, eps: float = 1e-3,
                      max_backtracks: int = 20) -> dict[str, float]:
    """``optimizer.step()`` on the architecture logits that never leaves ``E(SN) <= B_max - eps``.

    If the step lands outside, it is backtracked: ``alpha = alpha_old + 2^-j (alpha_new - alpha_old)`` for
    ``j = 1, 2, ...`` until E(SN) is back inside; after ``max_backtracks`` halvings the step is rejected
    (``alpha = alpha_old``). The optimizer's state (momentum, Adam moments) is kept. Returns
    ``{"expected_avg_bits", "backtracks", "rejected"}``.
    """
    params = [s.alpha for s in cost.selectors]
    old = [p.detach().clone() for p in params]
    optimizer.step()
    value = cost.value()
    if value <= b_max - eps:
        return {"expected_avg_bits": value, "backtracks": 0, "rejected": 0}
    new = [p.detach().clone() for p in params]
    with torch.no_grad():
        for j in range(1, max_backtracks + 1):
            for p, o, n in zip(params, old, new):
                p.copy_(o + 0.5**j * (n - o))
            value = cost.value()
            if value <= b_max - eps:
                return {"expected_avg_bits": value, "backtracks": j, "rejected": 0}
        for p, o in zip(params, old):
            p.copy_(o)
    return {"expected_avg_bits": cost.value(), "backtracks": max_backtracks, "rejected": 1}
