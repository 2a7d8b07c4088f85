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
limit of the Lagrangian - is returned, marked ``fallback`` in its diagnostics.

**Schedule rule: equal total architecture update.** The paper's ImageNet search moves {alpha, beta} with
SGD at lr 0.01 for 25 epochs of 5,005 steps, decayed x0.1 at epochs 10 and 20: a total architecture
learning rate sum_t lr_t = 0.01 x 5,005 x (10 + 10 x 0.1 + 5 x 0.01) = 553 (:data:`PAPER_ARCH_UPDATE`).
A search of ``request.epochs`` epochs of ``S`` steps keeps the paper's schedule shape (x0.1 every 40 % of
the epochs) and scales the initial architecture lr so that its total is the same:
``arch_lr = 553 / (S x sum_e 0.1^(e // step_size))``, e.g. 23.7 for 3 epochs of 21 steps. At the paper's
0.01 such a short search leaves pi uniform (measured: expected complexity unchanged, the argmax is tie
noise); the rule is the same for every network and budget, nothing is tuned per row. ``arch_lr`` set in
the options replaces the rule.

**Shared searches.** A search depends on eta, not on the budget, and every budget starts its bracket at
the same eta_0, so searches are kept per (:meth:`~core.method.SearchRequest.fingerprint`, eta) in this
process and reused by the next budget; each one is reported as shared work (``search_cost_shared_s``
``{key: seconds}``), which the benchmark divides among the budgets that used it.

Diagnostics (``meta["diagnostics"]``, of the search that produced the policy): per layer the max
probability and the entropy of pi_w and pi_a at the end, the expected BOPs (bpnas MACs) under the
initial (uniform) pi and at the end, and the expected average bits after each epoch.

``request.options`` (all optional): ``max_searches`` (6), ``growth`` (4.0), ``initial_penalty`` (0.35),
``arch_lr`` (None: the rule above), ``arch_update`` (553.05, the rule's total), ``lr`` (0.1),
``max_steps_per_epoch`` (0: whole epochs), ``strategy`` (``single_pass``), ``shared_weight`` (true).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from core.bops import BopsReport, count
from core.config import OptimConfig, ScheduleConfig
from core.data import CappedLoader, build_loader
from core.engine import build_optimizer, build_scheduler
from core.errors import BudgetError, ConfigError
from core.method import SearchMethod, SearchRequest
from core.nn import arch_parameters, weight_parameters
from core.policy import BitPolicy
from papers.edmips.complexity import ComplexityLoss, measure_layer_costs
from papers.edmips.config import QuantConfig
from papers.edmips.discretize import choose_bits
from papers.edmips.models import build_search_model
from papers.edmips.search import EdmipsSearchTrainer, layer_snapshot

#: sum_t lr_t of the architecture parameters in the paper's ImageNet search (section 5.1)
PAPER_ARCH_UPDATE = 0.01 * 5005 * (10 * 1.0 + 10 * 0.1 + 5 * 0.01)
DEFAULTS: dict[str, Any] = {"max_searches": 6, "growth": 4.0, "initial_penalty": 0.35, "arch_lr": None,
                            "arch_update": PAPER_ARCH_UPDATE, "lr": 0.1, "max_steps_per_epoch": 0,
                            "strategy": "single_pass", "shared_weight": True}
_BRACKET_ONLY = ("max_searches", "growth")  # options that do not change one search
_SEARCHES: dict[tuple[str, float], dict] = {}  # (fingerprint, eta) -> one search (this process)


def _options(request: SearchRequest) -> dict[str, Any]:
    unknown = sorted(set(request.options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"edmips: unknown request option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **request.options}


def _count(request: SearchRequest, policy: BitPolicy) -> BopsReport:
    return count(request.build_model(), tuple(request.input_size), policy=policy, convention="bpnas")


def step_schedule(epochs: int) -> ScheduleConfig:
    """The paper's schedule shape at ``epochs``: x0.1 every 40 % of the epochs (10 of 25)."""
    return ScheduleConfig(name="step", epochs=epochs, step_size=max(1, round(epochs * 10 / 25)), gamma=0.1)


def rule_arch_lr(epochs: int, steps_per_epoch: int, total: float = PAPER_ARCH_UPDATE) -> float:
    """The initial architecture lr whose schedule (:func:`step_schedule`) sums to ``total`` over
    ``epochs`` x ``steps_per_epoch`` steps (the module docstring's rule)."""
    sched = step_schedule(epochs)
    factors = sum(sched.gamma ** (e // sched.step_size) for e in range(epochs))
    return total / (steps_per_epoch * factors)


def build_for_request(request: SearchRequest, opts: dict[str, Any]):
    """The search model of the request's network, its searchable layers, their costs and R_C."""
    torch.manual_seed(request.seed)
    quant = QuantConfig(w_candidates=list(request.w_candidates), a_candidates=list(request.a_candidates),
                        shared_weight=bool(opts["shared_weight"]))
    model, layers = build_search_model(request.build_model(), quant)
    model.to(torch.device(request.device))
    costs = measure_layer_costs(model, layers, tuple(request.input_size))
    return model, layers, costs, ComplexityLoss(layers, costs, "bops")


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def distribution_diagnostics(history: list[dict], snapshot: list[dict], macs: dict[str, float]) -> dict:
    """max-probability and entropy of pi per layer at the end, expected BOPs at the start and the end
    (MACs of the ``bpnas`` convention), expected average bits per epoch."""
    def expected_bops(pi_w: list[list[float]], pi_a: list[list[float]]) -> float:
        total = 0.0
        for s, pw, pa in zip(snapshot, pi_w, pi_a):
            ew = sum(p * b for p, b in zip(pw, s["w_candidates"]))
            ea = sum(p * b for p, b in zip(pa, s["a_candidates"]))
            total += macs[s["name"]] * ew * ea
        return total

    return {"max_prob": [[max(s["pi_w"]), max(s["pi_a"])] for s in snapshot],
            "entropy": [[_entropy(s["pi_w"]), _entropy(s["pi_a"])] for s in snapshot],
            "expected_bops": {"start": expected_bops(history[0]["pi_w"], history[0]["pi_a"]),
                              "end": expected_bops(history[-1]["pi_w"], history[-1]["pi_a"])},
            "expected_avg_bits_per_epoch": [h["expected_avg_bits"] for h in history]}


def search_once(request: SearchRequest, eta: float, opts: dict[str, Any]) -> dict:
    """One EdMIPS search at ``eta`` (kept per fingerprint and eta in this process): its winner-take-all
    bits (eq. 18), diagnostics, architecture lr and seconds."""
    key = request.fingerprint("edmips", {k: v for k, v in opts.items() if k not in _BRACKET_ONLY})
    if (key, eta) in _SEARCHES:
        return _SEARCHES[(key, eta)]
    start = time.perf_counter()
    model, layers, costs, rc = build_for_request(request, opts)
    device = torch.device(request.device)
    loader = CappedLoader(build_loader(request.train_set, request.batch_size, train=True, workers=0,
                                       seed=request.seed, distributed=False), opts["max_steps_per_epoch"])
    epochs = max(1, int(request.epochs))
    arch_lr = opts["arch_lr"] if opts["arch_lr"] is not None else rule_arch_lr(epochs, len(loader),
                                                                               opts["arch_update"])
    optimizers = {"weights": build_optimizer(OptimConfig(lr=opts["lr"]), weight_parameters(model)),
                  "arch": build_optimizer(OptimConfig(lr=arch_lr), arch_parameters(model))}
    schedulers = {n: build_scheduler(step_schedule(epochs), o, len(loader)) for n, o in optimizers.items()}
    trainer = EdmipsSearchTrainer(model, optimizers, loader, None, epochs=epochs, schedulers=schedulers,
                                  device=device, log_every=10**9, complexity=rc, layers=layers, costs=costs,
                                  eta=eta, strategy=opts["strategy"])
    trainer.fit()
    snapshot = layer_snapshot(layers, costs)
    macs = {r.name: r.macs for r in count(request.build_model(), tuple(request.input_size),
                                          convention="bpnas").counted_rows}
    result = {"key": f"edmips-{key}-eta{eta:.6g}", "bits": choose_bits(snapshot, "argmax"), "eta": eta,
              "arch_lr": arch_lr, "seconds": time.perf_counter() - start,
              "diagnostics": distribution_diagnostics(trainer.arch_history, snapshot, macs)}
    if len(_SEARCHES) > 64:
        _SEARCHES.clear()
    _SEARCHES[(key, eta)] = result
    return result


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
    w_min, a_min = min(request.w_candidates), min(request.a_candidates)
    cheapest = BitPolicy({n: (w_min, a_min) for n in names})
    min_bops = _count(request, cheapest).bops
    if min_bops > request.budget_bops:
        raise BudgetError(f"edmips: the budget {request.budget_bops:.4g} BOPs is below the cheapest policy "
                          f"of the search space ({min_bops:.4g} BOPs, every layer at W{w_min}A{a_min});"
                          " raise the budget or add lower candidates")
    del model, layers, rc
    tried: list[dict] = []
    used: dict[str, float] = {}
    feasible: list[tuple[float, dict]] = []
    low = high = None  # largest eta over budget, smallest eta within budget
    eta = float(opts["initial_penalty"]) / rc0
    for _ in range(int(opts["max_searches"])):
        result = search_once(request, eta, opts)
        used[result["key"]] = result["seconds"]
        bops = _count(request, BitPolicy(result["bits"])).bops
        tried.append({"eta": eta, "bops": bops, "feasible": bops <= request.budget_bops})
        request.log(f"edmips: eta={eta:.4g} -> {bops:.4g} BOPs (budget {request.budget_bops:.4g})")
        if bops <= request.budget_bops:
            feasible.append((bops, result))
            high = eta if high is None else min(high, eta)
        else:
            low = eta if low is None else max(low, eta)
        if low is not None and high is not None:
            eta = math.sqrt(low * high)
        else:
            eta = eta * growth if high is None else eta / growth
    if feasible:
        chosen = max(feasible, key=lambda f: f[0])[1]
        policy = BitPolicy(chosen["bits"], {"eta": chosen["eta"], "arch_lr": chosen["arch_lr"]})
        diagnostics = chosen["diagnostics"]
    else:  # the eta -> infinity limit of eq. 6 (every layer at the lowest candidates)
        last = search_once(request, tried[-1]["eta"], opts)
        policy = BitPolicy({n: (w_min, a_min) for n in names}, {"eta": None, "arch_lr": last["arch_lr"]})
        diagnostics = {**last["diagnostics"], "fallback": True}
    report = _count(request, policy)
    policy.meta.update(method="edmips", convention="bpnas", bops=report.bops, avg_bits=report.avg_bits,
                       budget_bops=request.budget_bops, searches=tried, diagnostics=diagnostics,
                       search_cost_shared_s=used)
    return policy


METHOD = SearchMethod(name="edmips", paper="EdMIPS (CVPR 2020)", search=search,
                      description="differentiable search with composite convolutions; the budget is met by "
                                  "bracketing eta on a log scale (papers/edmips/bench.py)")
