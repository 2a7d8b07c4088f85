"""EdMIPS in the cross-method benchmark: ``METHOD.search(request) -> BitPolicy`` within a BOPs budget.

EdMIPS has no budget argument: the Lagrange multiplier eta of eq. 6 sets the trade-off ("eta only depends
on gamma", section 4.1) and the official code tunes it by hand per network. The adapter turns a budget
into eta by a short bracketing search on log(eta):

1. eta_0 = ``initial_penalty / R_C(uniform pi)`` - the rule the published values follow (their initial
   penalty eta * R_C is 0.32-0.37, e.g. 0.00335 * 110 for ResNet-18);
2. run one EdMIPS search (the request's model, data, epochs and candidates) and discretise it with
   winner-take-all (eq. 18); count its BOPs under the benchmark's ``bpnas`` convention;
3. over budget: eta *= ``growth``; within budget: eta /= ``growth`` (to come closer to the budget); once
   one feasible and one infeasible eta are known, bisect between them geometrically;
4. after ``max_searches`` searches return the feasible policy with the most BOPs (closest to the budget).

A budget below the cheapest policy of the search space (every layer at the lowest candidates) raises
``BudgetError`` before any search. If no search met the budget, that cheapest policy - the eta -> infinity
limit of the Lagrangian - is returned.

``request.options`` (all optional): ``max_searches`` (6), ``growth`` (4.0), ``initial_penalty`` (0.35),
``arch_lr`` (0.01, the paper's), ``lr`` (0.1), ``max_steps_per_epoch`` (0: whole epochs), ``strategy``
(``single_pass``), ``shared_weight`` (true). Each search uses the request's epochs with the paper's step
schedule shape (lr x0.1 every 40% of the epochs, i.e. 10 of 25).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from core.bops import BopsReport, count
from core.config import OptimConfig, ScheduleConfig
from core.data import build_loader
from core.engine import build_optimizer, build_scheduler
from core.errors import BudgetError, ConfigError
from core.method import SearchMethod, SearchRequest
from core.nn import arch_parameters, weight_parameters
from core.policy import BitPolicy
from papers.edmips.common import CappedLoader
from papers.edmips.complexity import ComplexityLoss, measure_layer_costs
from papers.edmips.config import QuantConfig
from papers.edmips.discretize import choose_bits
from papers.edmips.models import build_search_model
from papers.edmips.search import EdmipsSearchTrainer, layer_snapshot

DEFAULTS: dict[str, Any] = {"max_searches": 6, "growth": 4.0, "initial_penalty": 0.35, "arch_lr": 0.01,
                            "lr": 0.1, "max_steps_per_epoch": 0, "strategy": "single_pass",
                            "shared_weight": True}


def _options(request: SearchRequest) -> dict[str, Any]:
    unknown = sorted(set(request.options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"edmips: unknown request option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **request.options}


def _count(request: SearchRequest, policy: BitPolicy) -> BopsReport:
    return count(request.build_model(), tuple(request.input_size), policy=policy, convention="bpnas")


def build_for_request(request: SearchRequest, opts: dict[str, Any]):
    """The search model of the request's network, its searchable layers, their costs and R_C."""
    torch.manual_seed(request.seed)
    quant = QuantConfig(w_candidates=list(request.w_candidates), a_candidates=list(request.a_candidates),
                        shared_weight=bool(opts["shared_weight"]))
    model, layers = build_search_model(request.build_model(), quant)
    model.to(torch.device(request.device))
    costs = measure_layer_costs(model, layers, tuple(request.input_size))
    return model, layers, costs, ComplexityLoss(layers, costs, "bops")


def search_once(request: SearchRequest, eta: float, opts: dict[str, Any]) -> BitPolicy:
    """One EdMIPS search at ``eta`` on the request; returns its winner-take-all policy (eq. 18)."""
    model, layers, costs, rc = build_for_request(request, opts)
    device = torch.device(request.device)
    loader = CappedLoader(build_loader(request.train_set, request.batch_size, train=True, workers=0,
                                       seed=request.seed, distributed=False), opts["max_steps_per_epoch"])
    epochs = max(1, int(request.epochs))
    step_size = max(1, round(epochs * 10 / 25))
    schedule = ScheduleConfig(name="step", epochs=epochs, step_size=step_size, gamma=0.1)
    optimizers = {"weights": build_optimizer(OptimConfig(lr=opts["lr"]), weight_parameters(model)),
                  "arch": build_optimizer(OptimConfig(lr=opts["arch_lr"]), arch_parameters(model))}
    schedulers = {n: build_scheduler(schedule, o, len(loader)) for n, o in optimizers.items()}
    trainer = EdmipsSearchTrainer(model, optimizers, loader, None, epochs=epochs, schedulers=schedulers,
                                  device=device, log_every=10**9, complexity=rc, layers=layers, costs=costs,
                                  eta=eta, strategy=opts["strategy"])
    trainer.fit()
    bits = choose_bits(layer_snapshot(layers, costs), "argmax")
    return BitPolicy(bits, {"method": "edmips", "eta": eta})


def search(request: SearchRequest) -> BitPolicy:
    """Meet ``request.budget_bops`` by choosing eta (see the module docstring)."""
    opts = _options(request)
    if request.budget_bops <= 0:
        raise BudgetError(f"edmips: budget_bops must be positive, got {request.budget_bops}")
    growth = float(opts["growth"])
    if growth <= 1:
        raise ConfigError(f"edmips: option growth must be > 1, got {growth}")
    model, layers, _, rc = build_for_request(request, opts)
    with torch.no_grad():
        rc0 = float(rc())
    names = [n for n, _ in layers]
    cheapest = BitPolicy({n: (min(request.w_candidates), min(request.a_candidates)) for n in names},
                         {"method": "edmips", "eta": None, "fallback": "eta -> infinity: lowest candidates"})
    min_bops = _count(request, cheapest).bops
    if min_bops > request.budget_bops:
        w_min, a_min = min(request.w_candidates), min(request.a_candidates)
        raise BudgetError(f"edmips: the budget {request.budget_bops:.4g} BOPs is below the cheapest policy "
                          f"of the search space ({min_bops:.4g} BOPs, every layer at W{w_min}A{a_min});"
                          " raise the budget or add lower candidates")
    del model, layers, rc
    tried: list[dict] = []
    feasible: list[tuple[float, BitPolicy]] = []
    low = high = None  # largest eta over budget, smallest eta within budget
    eta = float(opts["initial_penalty"]) / rc0
    for _ in range(int(opts["max_searches"])):
        policy = search_once(request, eta, opts)
        bops = _count(request, policy).bops
        tried.append({"eta": eta, "bops": bops, "feasible": bops <= request.budget_bops})
        request.log(f"edmips: eta={eta:.4g} -> {bops:.4g} BOPs (budget {request.budget_bops:.4g})")
        if bops <= request.budget_bops:
            feasible.append((bops, policy))
            high = eta if high is None else min(high, eta)
        else:
            low = eta if low is None else max(low, eta)
        if low is not None and high is not None:
            eta = math.sqrt(low * high)
        else:
            eta = eta * growth if high is None else eta / growth
    # no feasible search: the eta -> infinity limit of eq. 6 (every layer at the lowest candidates)
    policy = max(feasible, key=lambda f: f[0])[1] if feasible else cheapest
    report = _count(request, policy)
    policy.meta.update(method="edmips", convention="bpnas", bops=report.bops, avg_bits=report.avg_bits,
                       budget_bops=request.budget_bops, searches=tried)
    return policy


METHOD = SearchMethod(name="edmips", paper="EdMIPS (CVPR 2020)", search=search,
                      description="differentiable search with composite convolutions; the budget is met by "
                                  "bracketing eta on a log scale (papers/edmips/bench.py)")
