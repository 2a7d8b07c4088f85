"""From indicators to a :class:`core.policy.BitPolicy`: budgets, the ILP (``ilp.py``) and the policy's meta.

``search_policy`` is what ``mpq llt search`` runs; it needs only an indicators file and the model's
architecture (no training run, no data).
"""

from __future__ import annotations

import time

import numpy as np
import torch.nn as nn

from core.errors import BudgetError, PolicyError
from core.policy import BitPolicy
from papers.llt.complexity import MAC_CONVENTIONS, layer_costs
from papers.llt.config import LLTConfig
from papers.llt.ilp import MB_BITS, LayerCosts, size_budget_bits, solve_ilp, uniform_bitops_budget
from papers.llt.indicators import ImportanceIndicators
from papers.llt.settings import SearchSettings


def search_policy(indicators: ImportanceIndicators, model: nn.Module, settings: SearchSettings,
                  costs: LayerCosts | None = None) -> BitPolicy:
    """Solve main paper Eq. 4 for ``model`` and return the policy over the searchable layers.

    ``costs`` may be passed to reuse MAC counting across searches of one model.
    """
    if settings.macs not in MAC_CONVENTIONS:
        raise PolicyError(f"--macs must be one of {MAC_CONVENTIONS}, got {settings.macs!r}")
    names = indicators.names_for_model()
    t0 = time.perf_counter()
    if costs is None:
        costs = layer_costs(model, names, tuple(settings.input_size or (3, 224, 224)), settings.macs)
    t_costs = time.perf_counter() - t0
    bits = list(settings.bits) if settings.bits else list(indicators.bits)
    w_cands = bits
    sw = indicators.table("weight", w_cands)
    if settings.weight_only_a_bits is not None:
        a_cands = [int(settings.weight_only_a_bits)]
        sa = np.zeros((len(names), 1))  # a fixed activation width contributes nothing to Eq. 4
    else:
        a_cands = bits
        sa = indicators.table("act", a_cands)
    bitops_budget = settings.bitops_budget
    if bitops_budget is None and settings.w_bits is not None:
        if settings.a_bits is None:
            raise BudgetError("a BitOPs budget needs both --w-bits and --a-bits")
        bitops_budget = uniform_bitops_budget(costs, settings.w_bits, settings.a_bits)
    size_budget = size_budget_bits(costs, settings.compression) if settings.compression else None
    sol = solve_ilp(sw, sa, costs, alpha=settings.alpha, w_candidates=w_cands, a_candidates=a_cands,
                    bitops_budget=bitops_budget, size_budget=size_budget, fixed_w_bits=settings.fixed_w_bits,
                    nonmonotone_rule=settings.nonmonotone_rule, solver=settings.solver)
    fp_bits = costs.fp_size_bits()
    meta = {
        "method": "llt",
        "paper": "LLT (ECCV 2022)",
        "alpha": settings.alpha,
        "bits": bits,
        "weight_only_a_bits": settings.weight_only_a_bits,
        "macs_convention": costs.convention,
        "bitops": sol.bitops,
        "bitops_g": sol.bitops / 1e9,
        "bitops_budget": bitops_budget,
        # as the official script prints it: first conv and fc added at W8A8
        "bitops_g_with_first_last_w8a8": (sol.bitops + costs.fixed_macs * 64) / 1e9,
        "budget": _budget_label(settings, bitops_budget),
        "size_mb": sol.size_bits / MB_BITS,
        "fp_size_mb": fp_bits / MB_BITS,
        "compression_ratio": fp_bits / sol.size_bits,
        "compression_budget": settings.compression,
        "size_budget_mb": None if size_budget is None else size_budget / MB_BITS,
        "objective": sol.objective,
        "penalty_units": sol.penalty_units,
        "objective_unpenalised": sol.unpenalised,
        "penalised_choices": sol.penalised,
        "nonmonotone_rule": settings.nonmonotone_rule,
        "solver": sol.stats.get("solver"),
        "solve_time_s": sol.solve_time_s,
        "build_time_s": sol.build_time_s,
        "mac_count_time_s": t_costs,
        "solver_stats": sol.stats,
        "first_last": f"not searched, weights at {settings.fixed_w_bits} bits",
    }
    if "source" in indicators.meta:
        meta["indicators_source"] = indicators.meta["source"]
    return BitPolicy(list(zip(names, zip(sol.w_bits, sol.a_bits))), meta=meta)


def _budget_label(settings: SearchSettings, bitops_budget: float | None) -> str:
    parts = []
    if settings.bitops_budget is not None:
        parts.append(f"BitOPs<={settings.bitops_budget:.6g}")
    elif bitops_budget is not None:
        parts.append(f"BitOPs<=W{settings.w_bits:g}A{settings.a_bits:g}")
    if settings.compression:
        parts.append(f"CR>={settings.compression:g}")
    return " & ".join(parts)


def search_from_config(cfg: LLTConfig) -> BitPolicy:
    """Stage 2 of a config run: the ILP on ``cfg.indicators_path`` for ``cfg.model`` at the data's input
    size; returns the policy (the fine-tuning writes it once it holds its run directory). Indicators
    trained by ``mpq llt indicators`` must be this config's (their ``run.json``: differing keys are an
    error naming them, a run that stopped early a warning); their record goes into the policy's meta
    (``indicators_run``). An ``indicators.file`` is used as it is."""
    from core.engine import RunDir, build_model_from_config, check_producer, input_size_of
    from papers.llt.config import stage_identity

    indicators = ImportanceIndicators.load(cfg.indicators_path)
    record = None
    if not cfg.indicators.file:
        source = cfg.indicators_path.parent
        check_producer(source, stage_identity(cfg, "indicators"), what="LLT indicators",
                       fix="Re-run `mpq llt indicators` with this config, or name an indicators file with "
                           "indicators.file.")
        record = RunDir(source).producer_record()
    settings = SearchSettings(**{**vars(cfg.search)})
    settings.bits = settings.bits or list(cfg.bits)
    settings.input_size = settings.input_size or list(input_size_of(cfg.data))
    model = build_model_from_config(cfg.model, cfg.data.name)
    policy = search_policy(indicators, model, settings)
    policy.meta.update(model=cfg.model.name, dataset=cfg.data.name, indicators=str(cfg.indicators_path),
                       table_row=cfg.table_row, indicators_run=record)
    return policy
