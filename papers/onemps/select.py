"""Reading architectures off a trained f_theta: the most probable child at each eta and the child for a BOPs
budget. Pure functions of the probability model and the hardware costs (no data, milliseconds)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from core.errors import BudgetError
from papers.onemps.losses import HardwareCosts
from papers.onemps.probability import sweep_etas
from papers.onemps.supernet import most_probable


@dataclass
class Child:
    """The most probable architecture at ``eta``: option indices per layer and its BOPs."""

    eta: float
    choice: dict[str, tuple[int, int]]
    bops: float

    def key(self) -> tuple:
        return tuple(self.choice[n] for n in sorted(self.choice))


def children(model: nn.Module, costs: HardwareCosts, etas: list[float]) -> list[Child]:
    """``argmax pi_theta(eta)`` for each eta, with its BOPs."""
    out = []
    for eta in etas:
        choice = most_probable(model, eta)
        out.append(Child(float(eta), choice, costs.bops(choice)))
    return out


def unique_children(found: list[Child]) -> list[Child]:
    """The first child of every distinct architecture (a sweep often meets one architecture at many eta)."""
    seen: set[tuple] = set()
    out = []
    for c in found:
        if c.key() not in seen:
            seen.add(c.key())
            out.append(c)
    return out


def cheapest_choice(costs: HardwareCosts) -> dict[str, tuple[int, int]]:
    """Every layer at its lowest weight and activation bits (the eta -> infinity limit)."""
    return {n: (min(range(len(w)), key=w.__getitem__), min(range(len(a)), key=a.__getitem__))
            for n, w, a in zip(costs.names, costs.w_candidates, costs.a_candidates)}


def select_for_budget(model: nn.Module, costs: HardwareCosts, budget_bops: float, eta0: float, eta1: float,
                      grid: int = 256) -> tuple[Child, bool]:
    """The child for a budget: over ``grid`` penalties log-spaced on [eta0, eta1], the most probable
    architectures within ``budget_bops``, the most expensive of them (the one closest to the budget; equal
    BOPs: the smallest eta). Returns ``(child, fallback)``: when no eta of the range meets the budget, the
    cheapest architecture of the search space (``fallback=True``); ``BudgetError`` when even that one
    exceeds the budget."""
    cheapest = cheapest_choice(costs)
    floor = costs.bops(cheapest)
    if floor > budget_bops * (1 + 1e-12):
        raise BudgetError(f"the budget {budget_bops:.4g} BOPs is below the cheapest architecture of the "
                          f"search space ({floor:.4g} BOPs: every layer at its lowest bits); raise it")
    found = [c for c in children(model, costs, sweep_etas(eta0, eta1, grid, "log")) if c.bops <= budget_bops]
    if not found:
        return Child(math.inf, cheapest, floor), True
    best = max(c.bops for c in found)
    return min((c for c in found if c.bops == best), key=lambda c: c.eta), False
