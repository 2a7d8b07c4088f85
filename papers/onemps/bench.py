"""OneMPS, VIMPS and DNAS in the cross-method benchmark: ``METHOD.search(request) -> BitPolicy``.

``onemps`` (:data:`METHOD`): ONE supernet + f_theta training answers every budget of a comparison. It is
kept per :meth:`~core.method.SearchRequest.fingerprint` (seed, network and initialisation, training data,
candidates, epochs, batch, device type) plus the options and the code version, in this process's memory
and on disk in ``<dir>/onemps-supernet-<key>/`` (a resumable core run directory, locked while one process
trains it), ``<dir>`` being ``options["cache_dir"]``, else ``request.shared_dir`` (shared by every budget of
one method and seed in ``mpq bench run``), else ``request.run_dir`` (then only this process shares it). The
budget is met without data: among the most probable architectures of 256 log-spaced eta in [eta0, eta1],
the most expensive within the budget (:func:`papers.onemps.select.select_for_budget`). The supernet's
training time is reported as shared work (``search_cost_shared_s``, ``shared_over`` = the key), which the
benchmark divides among the budgets that used it.

``vimps`` / ``dnas`` (:data:`VIMPS`, :data:`DNAS`): one search per fixed eta (gamma for DNAS; the presets of
:data:`papers.onemps.config.PRESETS`), bracketed like EdMIPS's adapter: over budget -> eta x ``growth``,
within -> eta / ``growth``, then geometric bisection; after ``max_searches`` the feasible policy with the
most BOPs (none feasible: every layer at its lowest bits, ``fallback``). A search depends on eta, not on the
budget, so searches are kept per (fingerprint, eta) in ``shared_dir`` and memory and reported as shared
work ``{key: seconds}``. DNAS's knob is gamma, not beta: the loss CE x beta (ln Cost)^gamma scales with
beta as a whole, which Adam's architecture step ignores (the trade-off is gamma's alone); beta = 1 /
ln(BOPs at the highest candidates)^gamma keeps the factor at 1 for the largest architecture, so gamma does not
rescale the weights' learning rate.

**Schedule rule** (all three; the slides give no schedule): ``request.epochs`` epochs; the weights at the
shared recipe's lr 0.1 (cosine, gradient clipping 1.0: the packaged digits config's, which trains these
networks from scratch); theta with Adam at ``arch_lr = arch_update / steps``, the *total* architecture
update of the digits config (Adam moves a logit by about lr per step: 0.01 x 20 epochs x 21 steps = 4.2),
so a short search moves pi as far as the config's; theta frozen for the first ``max(1, epochs // 5)``
epochs (the config's 4 of 20; none for a one-epoch search): in ``mpq bench run``'s 3-epoch searches, theta
learning from the first step moved every eta of f_theta to the same 2.0-2.45-bit children (its gate
gradients then come through untrained kernels); with one frozen epoch they span 3.3 to 2.8 bits over eta.
``request.time_budget_s`` is not used: the work is fixed by ``request.epochs``.

``request.options`` (all optional): ``eta0`` (0.001), ``eta1`` (1), ``entropy_weight`` (1e-3),
``kernel_weight`` (1e-2), ``lr`` (0.1), ``grad_clip`` (1.0), ``arch_update`` (4.2), ``arch_lr`` (None: the
rule), ``max_steps_per_epoch`` (0), ``cache_dir`` (onemps); ``eta`` (initial: 0.03 VIMPS, gamma 1 DNAS),
``growth`` (4), ``max_searches`` (4). Every policy's ``meta["diagnostics"]``: per layer the max probability
and entropy of pi (weights, activations) at its eta, and the expected BOPs under f_theta's initial and final
pi at that eta.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.bops import count
from core.data import CappedLoader, build_loader
from core.engine import RunDir, code_version
from core.errors import BudgetError, ConfigError
from core.method import SearchMethod, SearchRequest
from core.policy import BitPolicy
from papers.onemps.common import build_supernet
from papers.onemps.config import OneMpsConfig, load_onemps_config
from papers.onemps.losses import HardwareCosts
from papers.onemps.select import cheapest_choice, select_for_budget
from papers.onemps.supernet import choice_bits, most_probable, probability_model
from papers.onemps.train import diagnostics, fit_supernet

COMMON = {"eta0": 0.001, "eta1": 1.0, "entropy_weight": 1e-3, "kernel_weight": 1e-2, "lr": 0.1,
          "grad_clip": 1.0, "arch_update": 4.2, "arch_lr": None, "max_steps_per_epoch": 0}
DEFAULTS = {"onemps": {**COMMON, "cache_dir": None},
            "vimps": {**COMMON, "eta": 0.03, "growth": 4.0, "max_searches": 4},
            "dnas": {**COMMON, "eta": 1.0, "growth": 4.0, "max_searches": 4}}
#: trained supernets of this process: key -> (model, costs, f_theta at its start, training seconds)
_TRAINED: dict[str, tuple[nn.Module, HardwareCosts, nn.Module, float]] = {}


def _options(request: SearchRequest, name: str) -> dict[str, Any]:
    unknown = sorted(set(request.options) - set(DEFAULTS[name]))
    if unknown:
        raise ConfigError(f"{name}: unknown request option(s) {unknown}; valid: {sorted(DEFAULTS[name])}")
    return {**DEFAULTS[name], **request.options}


def _loader(request: SearchRequest, opts: dict) -> CappedLoader:
    return CappedLoader(build_loader(request.train_set, request.batch_size, train=True, workers=0,
                                     seed=request.seed, distributed=False), opts["max_steps_per_epoch"])


def request_config(request: SearchRequest, preset: str, opts: dict, steps_per_epoch: int,
                   eta: float | None = None, max_bops: float | None = None) -> OneMpsConfig:
    """The OneMPS config of a request (the schedule rule of the module docstring): its candidates,
    epochs, batch, seed and device, first and last layers float (as the request counts them). ``eta`` is
    the fixed penalty (VIMPS) or DNAS's gamma, whose beta = 1 / ln(max_bops)^gamma."""
    epochs = max(1, int(request.epochs))
    arch_lr = opts["arch_lr"] or opts["arch_update"] / (epochs * max(1, steps_per_epoch))
    warmup = max(1, epochs // 5) if epochs > 1 else 0
    overrides = [f"quant.w_candidates={list(request.w_candidates)}",
                 f"quant.a_candidates={list(request.a_candidates)}", "quant.first=float", "quant.last=float",
                 f"search.schedule.epochs={epochs}", f"search.arch_warmup_epochs={warmup}",
                 f"search.optim.lr={opts['lr']}", f"search.optim.grad_clip={opts['grad_clip']}",
                 f"search.arch_optim.lr={arch_lr}", f"search.eta0={opts['eta0']}",
                 f"search.eta1={opts['eta1']}",
                 f"search.kernel_weight={opts['kernel_weight']}",
                 f"search.max_steps_per_epoch={opts['max_steps_per_epoch']}",
                 f"data.batch_size={request.batch_size}", f"run.seed={request.seed}",
                 f"run.device={request.device}", "run.log_every=1000000000"]
    if preset in ("onemps", "vimps"):
        overrides.append(f"search.entropy_weight={opts['entropy_weight']}")
    if eta is not None and preset == "dnas":
        overrides += [f"search.dnas_gamma={eta}", f"search.dnas_beta={math.log(max_bops) ** -eta}"]
    elif eta is not None:
        overrides.append(f"search.eta={eta}")
    return load_onemps_config(None, overrides, preset)


def _train(request: SearchRequest, preset: str, opts: dict, key: str, run_dir: Path, eta: float | None = None,
           max_bops: float | None = None) -> tuple[nn.Module, HardwareCosts, nn.Module, float]:
    """A supernet of the request trained in ``run_dir`` (resumed when it holds the same run, kept in this
    process under ``key``): the model, its costs, f_theta at its start, the training's wall seconds."""
    if key in _TRAINED:
        return _TRAINED[key]
    loader = _loader(request, opts)
    cfg = request_config(request, preset, opts, len(loader), eta, max_bops)
    torch.manual_seed(request.seed)
    model, costs = build_supernet(cfg, request.build_model(), tuple(request.input_size))
    model.to(torch.device(request.device))
    initial = copy.deepcopy(probability_model(model))
    identity = {"key": key, "preset": preset, "eta": eta}
    fit_supernet(cfg, model, costs, loader, None, torch.device(request.device), run_dir, identity=identity,
                 config=identity)
    seconds = float((RunDir.read_record_of(run_dir) or {}).get("progress", {}).get("wall_time_s", 0.0))
    if len(_TRAINED) > 32:
        _TRAINED.clear()
    _TRAINED[key] = (model, costs, initial, seconds)
    return _TRAINED[key]


def _diagnostics(model: nn.Module, initial: nn.Module, costs: HardwareCosts, eta: float) -> dict:
    end = diagnostics(model, costs, eta)
    with torch.no_grad():
        start_bops = costs.expected_bops(initial.probabilities(eta))
    return {"eta": eta, "max_prob": end["max_prob"], "entropy": end["entropy"],
            "expected_bops": {"start": start_bops, "end": end["expected_bops"]}}


def _policy(request: SearchRequest, model: nn.Module, choice: dict, meta: dict) -> BitPolicy:
    policy = BitPolicy(choice_bits(model, choice), meta)
    report = count(request.build_model(), tuple(request.input_size), policy=policy, convention="bpnas")
    policy.meta.update(convention="bpnas", bops=report.bops, avg_bits=report.avg_bits,
                       budget_bops=request.budget_bops)
    return policy


def _cache_root(request: SearchRequest, opts: dict) -> Path:
    return Path(opts.get("cache_dir") or request.shared_dir or request.run_dir)


def _key(request: SearchRequest, preset: str, opts: dict, eta: float | None = None) -> str:
    options = json.dumps({k: v for k, v in opts.items() if k not in ("cache_dir", "eta")}, sort_keys=True)
    return request.fingerprint(preset, options, eta, code_version())


def search_onemps(request: SearchRequest) -> BitPolicy:
    """One supernet + f_theta per (request fingerprint, options); this budget's child from it."""
    opts = _options(request, "onemps")
    key = _key(request, "onemps", opts)
    hit = key in _TRAINED
    cache = _cache_root(request, opts) / f"onemps-supernet-{key}"
    if not hit:
        request.log(f"onemps: one supernet for every budget ({request.epochs} epoch(s)) in {cache}")
    model, costs, initial, seconds = _train(request, "onemps", opts, key, cache)
    child, fallback = select_for_budget(model, costs, request.budget_bops, opts["eta0"], opts["eta1"])
    eta = opts["eta1"] if fallback else child.eta
    found = f"no eta in [{opts['eta0']:g}, {opts['eta1']:g}] meets it: lowest bits" if fallback else \
        f"eta={child.eta:.4g}"
    request.log(f"onemps: {found} -> {child.bops:.4g} BOPs (budget {request.budget_bops:.4g})")
    meta = {"method": "onemps", "eta": None if fallback else child.eta,
            "diagnostics": {**_diagnostics(model, initial, costs, eta), "fallback": fallback},
            "search_cost_shared_s": seconds, "shared_over": key, "cache_hit": hit, "cache_dir": str(cache)}
    return _policy(request, model, child.choice, meta)


def _search_fixed(request: SearchRequest, preset: str) -> BitPolicy:
    """VIMPS / DNAS: bracket the fixed eta of one search per eta (module docstring)."""
    opts = _options(request, preset)
    growth = float(opts["growth"])
    if growth <= 1:
        raise ConfigError(f"{preset}: option growth must be > 1, got {growth}")
    eta, low, high = float(opts["eta"]), None, None
    _, costs = build_supernet(request_config(request, preset, opts, 1), request.build_model(),
                              tuple(request.input_size))
    floor = costs.bops(cheapest_choice(costs))
    if floor > request.budget_bops:
        raise BudgetError(f"{preset}: the budget {request.budget_bops:.4g} BOPs is below the cheapest "
                          f"architecture of the search space ({floor:.4g} BOPs); raise the budget")
    tried, feasible, shared = [], [], {}
    start = time.perf_counter()
    for _ in range(int(opts["max_searches"])):
        key = _key(request, preset, opts, eta)
        model, costs, initial, seconds = _train(request, preset, opts, key,
                                                _cache_root(request, opts) / f"{preset}-{key}", eta,
                                                costs.normaliser)
        shared[key] = seconds
        choice = most_probable(model, eta)
        bops = costs.bops(choice)
        ok = bops <= request.budget_bops
        tried.append({"eta": eta, "bops": bops, "feasible": ok})
        request.log(f"{preset}: {'gamma' if preset == 'dnas' else 'eta'}={eta:.4g} -> {bops:.4g} BOPs "
                    f"(budget {request.budget_bops:.4g})")
        if ok:
            feasible.append((bops, eta, choice, model, initial))
            high = eta if high is None else min(high, eta)
        else:
            low = eta if low is None else max(low, eta)
        eta = math.sqrt(low * high) if low is not None and high is not None else (
            eta * growth if high is None else eta / growth)
    meta = {"method": preset, "searches": tried, "search_cost_shared_s": shared,  # "eta": DNAS's gamma
            "wall_s": time.perf_counter() - start}
    if feasible:
        _, eta, choice, model, initial = max(feasible, key=lambda f: f[0])
        meta.update(eta=eta, diagnostics={**_diagnostics(model, initial, costs, eta), "fallback": False})
        return _policy(request, model, choice, meta)
    last = _diagnostics(model, initial, costs, tried[-1]["eta"])
    meta.update(eta=None, diagnostics={**last, "fallback": True})
    return _policy(request, model, cheapest_choice(costs), meta)


def search_vimps(request: SearchRequest) -> BitPolicy:
    return _search_fixed(request, "vimps")


def search_dnas(request: SearchRequest) -> BitPolicy:
    return _search_fixed(request, "dnas")


METHOD = SearchMethod(name="onemps", paper="One-Shot MPS (CVPR 2023)", search=search_onemps,
                      description="one supernet + bit-width probability model f_theta(eta) for every budget; "
                                  "the most probable child within the budget (papers/onemps/bench.py)")
VIMPS = SearchMethod(name="vimps", paper="One-Shot MPS (CVPR 2023)", search=search_vimps,
                     description="variational MPS: one search per fixed eta, learned per-layer logits, "
                                 "eta bracketed to the budget")
DNAS = SearchMethod(name="dnas", paper="DNAS (Wu et al. 2018) as a OneMPS configuration",
                    search=search_dnas,
                    description="Gumbel-softmax relaxation, no entropy, multiplicative hardware loss; beta "
                                "bracketed to the budget")
