"""BP-NAS in the cross-method benchmark: ``METHOD.search(request) -> BitPolicy`` within a BOPs budget.

The budget is native to BP-NAS: ``B_max = request.budget_avg_bits``, the same bound as ``request.budget_bops``
(``budget_bops = B_max^2 x FLOPs`` under the ``bpnas`` convention, supp. section 1). One search of the
request's network (blocks ``layerS.I`` of a ResNet, else the parent module of each layer; the first conv and
the last layer outside, float), the candidate pairs being every (w, a) of the request's candidates, for
``request.epochs`` epochs with warm-up = a third of them; then the highest-probability pair per block,
repaired to the budget if the argmax network exceeds it (:mod:`papers.bpnas.derive`).

``request.options`` (all optional): ``pairs`` (override the candidate pairs), ``mu`` (0.01),
``prob1_weight`` (0.1), ``paths`` (``sample``), ``arch_lr`` (0.05), ``lr`` (0.1), ``warmup_epochs``
(``epochs // 3``), ``max_steps_per_epoch`` (0: whole epochs), ``blocks`` (2).

``policy.meta["diagnostics"]``: per-block max probability and entropy of ``p`` at the end, E(SN) at the start
and the end, the backtracked / rejected architecture steps and the largest E(SN) seen after any step.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from core.bops import count
from core.config import validate_config
from core.data import CappedLoader, build_loader
from core.errors import BudgetError, ConfigError
from core.method import SearchMethod, SearchRequest
from core.nn import quantize_model
from core.policy import BitPolicy
from papers.bpnas.config import BpnasConfig, QuantConfig
from papers.bpnas.derive import derive_policy
from papers.bpnas.losses import SupernetCost, feasible_init
from papers.bpnas.models import CONVENTION, supernet_spec
from papers.bpnas.search import block_snapshot, build_search_trainer
from papers.bpnas.supernet import block_selectors

DEFAULTS: dict[str, Any] = {"pairs": None, "mu": 0.01, "prob1_weight": 0.1, "paths": "sample",
                            "arch_lr": 0.05, "lr": 0.1, "warmup_epochs": None, "max_steps_per_epoch": 0,
                            "blocks": 2}


def _options(request: SearchRequest) -> dict[str, Any]:
    unknown = sorted(set(request.options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"bpnas: unknown request option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **request.options}


def request_config(request: SearchRequest, opts: dict[str, Any]) -> BpnasConfig:
    """The BP-NAS config of a benchmark request (validated like a YAML config)."""
    epochs = max(1, int(request.epochs))
    pairs = opts["pairs"] or [list(p) for p in itertools.product(request.w_candidates, request.a_candidates)]
    cfg = BpnasConfig(quant=QuantConfig(pairs=pairs, blocks=opts["blocks"], first="float", last="float"))
    s = cfg.search
    s.b_max, s.mu, s.prob1_weight = float(request.budget_avg_bits), opts["mu"], opts["prob1_weight"]
    s.paths = opts["paths"]
    s.warmup_epochs = epochs // 3 if opts["warmup_epochs"] is None else int(opts["warmup_epochs"])
    s.optim.lr, s.arch_optim.lr = float(opts["lr"]), float(opts["arch_lr"])
    s.schedule.epochs, s.max_steps_per_epoch = epochs, int(opts["max_steps_per_epoch"])
    cfg.run.seed, cfg.run.log_every = request.seed, 10**9
    validate_config(cfg)
    return cfg


def search(request: SearchRequest) -> BitPolicy:
    """One barrier-penalty search at ``B_max = request.budget_avg_bits`` (see the module docstring)."""
    opts = _options(request)
    if request.budget_avg_bits <= 0 or request.budget_bops <= 0:
        raise BudgetError(f"bpnas: the budget must be positive, got {request.budget_avg_bits} bits")
    cfg = request_config(request, opts)
    device = torch.device(request.device)
    torch.manual_seed(request.seed)
    model = request.build_model()
    report = count(model, tuple(request.input_size), convention=CONVENTION)
    quantize_model(model, supernet_spec(cfg.quant, cfg.search.paths))
    selectors = block_selectors(model)
    model.to(device)
    cost = SupernetCost.from_report(selectors, report)
    budget_bits = (request.budget_bops / cost.flops) ** 0.5
    if abs(budget_bits - cfg.search.b_max) > 1e-6 * cfg.search.b_max:
        raise BudgetError(f"bpnas: budget_avg_bits={cfg.search.b_max:g} disagrees with budget_bops (= "
                          f"{budget_bits:.6g} average bits over the {cost.flops:.6g} MACs of the searched "
                          "layers)")
    init = feasible_init(cost, cfg.search.b_max, cfg.search.init_margin)  # BudgetError when infeasible
    loader = CappedLoader(build_loader(request.train_set, request.batch_size, train=True, workers=0,
                                       seed=request.seed, distributed=False), cfg.search.max_steps_per_epoch)
    trainer = build_search_trainer(cfg, model, selectors, cost, loader, None, device, None)
    request.log(f"bpnas: {len(selectors)} blocks x {len(selectors[0].pairs)} pairs, "
                f"B_max {cfg.search.b_max:g}, initial E(SN) {init['expected_avg_bits']:.4f}")
    trainer.fit()
    state = {"b_max": cfg.search.b_max, "flops": cost.flops, "fixed_bops": cost.fixed_bops,
             "expected_avg_bits": cost.value(), "blocks": block_snapshot(selectors, cost),
             "epoch": cfg.search.schedule.epochs, "input_size": list(request.input_size)}
    policy = derive_policy(state, repair=True)
    counted = count(request.build_model(), tuple(request.input_size), policy=policy, convention=CONVENTION)
    per_block = policy.meta.pop("diagnostics")  # {"max_prob": {block: p}, "entropy": {block: nats}}
    blocks = list(per_block["max_prob"])
    # core.method's contract: one entry per distribution (here: per block, over its pairs), with its K
    diagnostics = {"blocks": blocks, "max_prob": [per_block["max_prob"][b] for b in blocks],
                   "entropy": [per_block["entropy"][b] for b in blocks],
                   "num_candidates": [len(s.pairs) for s in selectors]}
    diagnostics.update(expected_avg_bits_start=init["expected_avg_bits"], expected_avg_bits_end=cost.value(),
                       expected_avg_bits_max=max(trainer.trace, default=init["expected_avg_bits"]),
                       arch_steps=len(trainer.trace),
                       backtracks=sum(e["backtracks"] for e in trainer.arch_history),
                       rejected=sum(e["rejected"] for e in trainer.arch_history))
    policy.meta.update(bops=counted.bops, avg_bits=counted.avg_bits, budget_bops=request.budget_bops,
                       pairs=[list(p) for p in selectors[0].pairs], diagnostics=diagnostics)
    return policy


METHOD = SearchMethod(name="bpnas", paper="BP-NAS (ECCV 2020)", search=search,
                      description="barrier-penalty search over block-shared (w, a) pairs; B_max is the "
                                  "request's average-bit budget (papers/bpnas/bench.py)")
