"""LLT's table recomputers for ``mpq bench check`` (registered through ``papers.llt.PAPER``).

Each is ``fn(ctx, **args) -> {metric: value}`` with the row's ``recompute.args``; ``ctx`` is the
benchmark's context (``other_row``, ``reference_file``, ``cache``; see :mod:`core.paper`). Counting goes
through :func:`core.bops.count` under the ``limpq`` convention (first conv and fc outside the budget,
reported at W8A8).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from core.errors import ConfigError
from core.policy import BitPolicy

CONVENTION = "limpq"


def _limpq_report(ctx: Any, model: str, input_size: tuple[int, ...], policy: BitPolicy | None = None):
    """``core.bops.count`` of ``model`` under ``limpq`` (the policy-free report cached per check)."""
    from core.bops import count
    from core.models import build_model

    key = ("llt", "model", model)
    if key not in ctx.cache:
        ctx.cache[key] = build_model(model)
    if policy is not None:
        return count(ctx.cache[key], input_size, policy=policy, convention=CONVENTION)
    rkey = ("llt", "report", model, input_size)
    if rkey not in ctx.cache:
        ctx.cache[rkey] = count(ctx.cache[key], input_size, convention=CONVENTION)
    return ctx.cache[rkey]


def _policy_lists(ctx: Any, policy_row: str) -> tuple[list[int], list[int]]:
    cells = {c.metric: c.value for c in ctx.other_row(policy_row).cells}
    if not isinstance(cells.get("policy_w"), list) or not isinstance(cells.get("policy_a"), list):
        raise ConfigError(f"row {policy_row!r} needs policy_w and policy_a lists")
    return [int(b) for b in cells["policy_w"]], [int(b) for b in cells["policy_a"]]


def llt_policy_size(ctx: Any, policy_row: str, model: str = "resnet50",
                    input_size: list[int] = (3, 224, 224)) -> dict[str, Any]:
    """Weight size (MB = 2^20 bytes) of a published LLT policy: first conv and fc at 8 bits, every
    searchable layer at its weight bits; the float size and the compression ratio."""
    w, a = _policy_lists(ctx, policy_row)
    size = tuple(input_size)
    names = [r.name for r in _limpq_report(ctx, model, size).rows if r.counted]
    if len(names) != len(w):
        raise ConfigError(f"policy row {policy_row!r} has {len(w)} layers, {model} has {len(names)} "
                          "searchable layers")
    report = _limpq_report(ctx, model, size, BitPolicy(dict(zip(names, zip(w, a)))))
    return {"size_mb": report.size_mb(), "fp_size_mb": report.size_mb(32),
            "compression_ratio": report.compression_ratio, "bitops": report.bops}


def llt_ilp_policy(ctx: Any, model: str, indicators: str, bits: list[int], bitops_w: int, bitops_a: int,
                   compression: float, alpha: float, input_size: list[int] = (3, 224, 224)) -> dict[str, Any]:
    """Re-derive LLT's published policy: the ILP of Eq. 4 on the released indicators."""
    from papers.llt.ilp import LayerCosts, size_budget_bits, solve_ilp, uniform_bitops_budget
    from papers.llt.indicators import ImportanceIndicators

    ind = ImportanceIndicators.load(ctx.reference_file(indicators))
    names = ind.names_for_model()
    rows = {r.name: r for r in _limpq_report(ctx, model, tuple(input_size)).rows}
    missing = [n for n in names if n not in rows]
    if missing:
        raise ConfigError(f"indicator layers {missing[:3]} are not layers of {model}")
    fixed = sum(r.weight_numel for n, r in rows.items() if n not in set(names))
    costs = LayerCosts(names=tuple(names), macs=np.array([rows[n].macs for n in names], dtype=np.float64),
                       numel=np.array([rows[n].weight_numel for n in names], dtype=np.float64),
                       fixed_numel=int(fixed))
    start = time.perf_counter()
    sol = solve_ilp(ind.table("weight", bits), ind.table("act", bits), costs, alpha=alpha,
                    w_candidates=bits, a_candidates=bits,
                    bitops_budget=uniform_bitops_budget(costs, bitops_w, bitops_a),
                    size_budget=size_budget_bits(costs, compression))
    return {"policy_w": sol.w_bits, "policy_a": sol.a_bits, "seconds": time.perf_counter() - start}


RECOMPUTERS = {"llt_policy_size": llt_policy_size, "llt_ilp_policy": llt_ilp_policy}
