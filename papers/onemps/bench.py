"""OneMPS, VIMPS and DNAS in the cross-method benchmark: ``METHOD.search(request) -> BitPolicy``.

``onemps`` (:data:`METHOD`): ONE supernet + f_theta training answers every budget of a comparison. The
trained supernet is cached per (seed, network and its initialisation, training data, candidates, epochs,
batch, options, device type, code version), hashed into ``cache_key``, in
``<cache_dir>/onemps-supernet-<key>/`` (a resumable core run directory, locked while one process trains it)
and in this process's memory. ``cache_dir`` defaults to the directory two levels above
``request.run_dir`` (``mpq bench run`` writes ``runs/<method>/b<budget>/seed<seed>``, so every budget of one
seed shares ``runs/onemps/``); wherever it lives, the key makes a wrong reuse impossible, only the sharing
depends on it. The budget is then met without data: over 256 log-spaced eta in [eta0, eta1], the most
probable architectures within the budget, the most expensive one
(:func:`papers.onemps.select.select_for_budget`). ``meta["search_cost"]`` gives the supernet's training
time, the budgets served from it so far (``budgets.json`` in its directory) and that time divided by them
(``amortised_s``; final after the comparison's last budget).

``vimps`` / ``dnas`` (:data:`VIMPS`, :data:`DNAS`): one search per fixed eta (the presets of
:data:`papers.onemps.config.PRESETS`; for DNAS the penalty is beta of the multiplicative loss), bracketed like
EdMIPS's adapter: over budget -> eta x ``growth``, within -> eta / ``growth``, then geometric bisection;
after ``max_searches`` the feasible policy with the most BOPs (none feasible: every layer at its lowest bits).

``request.options`` (all optional): ``eta0`` (0.001), ``eta1`` (1), ``entropy_weight`` (1e-3),
``kernel_weight`` (1e-2), ``lr`` (0.1, the shared recipe's), ``grad_clip`` (1.0, global norm),
``arch_lr`` (0.01), ``arch_warmup_epochs`` (0),
``max_steps_per_epoch`` (0), ``cache_dir`` (onemps), ``eta`` (initial eta: 0.03 VIMPS, beta 0.05 DNAS),
``growth`` (4), ``max_searches`` (4). Every search's ``meta["diagnostics"]`` holds, per layer, the max
probability and entropy of pi (weights, activations) at the end and the expected BOPs at the start and end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.bops import count
from core.data import build_loader
from core.engine import RunDir, code_version
from core.errors import BudgetError, ConfigError
from core.io import atomic_write_text
from core.method import SearchMethod, SearchRequest
from core.policy import BitPolicy
from papers.onemps.common import CappedLoader, build_supernet
from papers.onemps.config import OneMpsConfig, load_onemps_config
from papers.onemps.losses import HardwareCosts
from papers.onemps.select import cheapest_choice, select_for_budget
from papers.onemps.supernet import choice_bits, most_probable, probability_model
from papers.onemps.train import diagnostics, fit_supernet

COMMON = {"eta0": 0.001, "eta1": 1.0, "entropy_weight": 1e-3, "kernel_weight": 1e-2, "lr": 0.1,
          "grad_clip": 1.0, "arch_lr": 0.01, "arch_warmup_epochs": 0, "max_steps_per_epoch": 0}
DEFAULTS = {"onemps": {**COMMON, "cache_dir": None},
            "vimps": {**COMMON, "eta": 0.03, "growth": 4.0, "max_searches": 4},
            "dnas": {**COMMON, "eta": 0.05, "growth": 4.0, "max_searches": 4}}
_MEMO: dict[str, tuple[nn.Module, HardwareCosts, dict]] = {}


def _options(request: SearchRequest, name: str) -> dict[str, Any]:
    unknown = sorted(set(request.options) - set(DEFAULTS[name]))
    if unknown:
        raise ConfigError(f"{name}: unknown request option(s) {unknown}; valid: {sorted(DEFAULTS[name])}")
    return {**DEFAULTS[name], **request.options}


def request_config(request: SearchRequest, preset: str, opts: dict, eta: float | None = None) -> OneMpsConfig:
    """The OneMPS config of a request: its candidates, epochs, batch, seed and device, first and last
    layers float (as the request counts them), the preset's configuration."""
    overrides = [f"quant.w_candidates={list(request.w_candidates)}",
                 f"quant.a_candidates={list(request.a_candidates)}", "quant.first=float", "quant.last=float",
                 f"search.schedule.epochs={max(1, int(request.epochs))}", f"search.optim.lr={opts['lr']}",
                 f"search.optim.grad_clip={opts['grad_clip']}",
                 f"search.arch_optim.lr={opts['arch_lr']}", f"search.eta0={opts['eta0']}",
                 f"search.eta1={opts['eta1']}", f"search.entropy_weight={opts['entropy_weight']}",
                 f"search.kernel_weight={opts['kernel_weight']}",
                 f"search.arch_warmup_epochs={opts['arch_warmup_epochs']}",
                 f"search.max_steps_per_epoch={opts['max_steps_per_epoch']}",
                 f"data.batch_size={request.batch_size}", f"run.seed={request.seed}",
                 f"run.device={request.device}", "run.log_every=1000000"]
    if preset not in ("onemps", "vimps"):
        overrides = [o for o in overrides if not o.startswith("search.entropy_weight")]
    if eta is not None:
        overrides.append(f"search.{'dnas_beta' if preset == 'dnas' else 'eta'}={eta}")
    return load_onemps_config(None, overrides, preset)


def _train(request: SearchRequest, cfg: OneMpsConfig, run_dir: Path, identity: dict
           ) -> tuple[nn.Module, HardwareCosts, dict, nn.Module]:
    """A supernet of ``cfg`` on the request's network and data, trained in ``run_dir`` (resumed when it
    holds the same run); returns it, its costs, the training summary and f_theta's initial state."""
    torch.manual_seed(request.seed)
    device = torch.device(request.device)
    model, costs = build_supernet(cfg, request.build_model(), tuple(request.input_size))
    model.to(device)
    initial = copy.deepcopy(probability_model(model))
    loader = CappedLoader(build_loader(request.train_set, request.batch_size, train=True, workers=0,
                                       seed=request.seed, distributed=False), cfg.search.max_steps_per_epoch)
    summary = fit_supernet(cfg, model, costs, loader, None, device, run_dir, identity=identity,
                           config=identity)
    return model, costs, summary, initial


def _diagnostics(model: nn.Module, initial: nn.Module, costs: HardwareCosts, eta: float) -> dict:
    end = diagnostics(model, costs, eta)
    with torch.no_grad():
        start_bops = costs.expected_bops(initial.probabilities(eta))
    return {"eta": eta, "max_prob": end["max_prob"], "entropy": end["entropy"],
            "mean_max_prob": sum(sum(p) for p in end["max_prob"]) / (2 * len(end["max_prob"])),
            "expected_bops": {"start": start_bops, "end": end["expected_bops"]}}


def _policy(request: SearchRequest, model: nn.Module, choice: dict, meta: dict) -> BitPolicy:
    policy = BitPolicy(choice_bits(model, choice), meta)
    report = count(request.build_model(), tuple(request.input_size), policy=policy, convention="bpnas")
    policy.meta.update(convention="bpnas", bops=report.bops, avg_bits=report.avg_bits,
                       budget_bops=request.budget_bops)
    return policy


def _fingerprint(request: SearchRequest) -> dict:
    """What identifies the network's initialisation and the training data of a request."""
    h = hashlib.sha256()
    model = request.build_model()
    h.update(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    data = hashlib.sha256()
    train = request.train_set
    for i in range(min(16, len(train))):
        x, y = train[i][:2]
        data.update(torch.as_tensor(x).numpy().tobytes())
        data.update(str(int(y)).encode())
    return {"model": h.hexdigest(), "train": f"{len(train)}:{data.hexdigest()}"}


def search_onemps(request: SearchRequest) -> BitPolicy:
    """One cached supernet + f_theta per (seed, network, data, settings); this budget's child from it."""
    t0 = time.perf_counter()
    opts = _options(request, "onemps")
    cfg = request_config(request, "onemps", opts)
    identity = {"seed": request.seed, "input_size": list(request.input_size),
                "num_classes": request.num_classes,
                "w_candidates": list(request.w_candidates), "a_candidates": list(request.a_candidates),
                "epochs": int(request.epochs), "batch_size": int(request.batch_size),
                "options": {k: v for k, v in opts.items() if k != "cache_dir"},
                "device_type": torch.device(request.device).type, "code_version": code_version(),
                **_fingerprint(request)}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(opts["cache_dir"]) if opts["cache_dir"] else Path(request.run_dir).parent.parent
    cache = root / f"onemps-supernet-{key}"
    hit = key in _MEMO
    if not hit:
        request.log(f"onemps: one supernet for every budget ({request.epochs} epoch(s)) in {cache}")
        model, costs, _, initial = _train(request, cfg, cache, identity)
        progress = (RunDir.read_record_of(cache) or {}).get("progress", {})  # as its checkpoint recorded
        _MEMO[key] = (model, costs, {"wall_time_s": progress["wall_time_s"], "initial": initial})
    model, costs, info = _MEMO[key]
    s = cfg.search
    child, fallback = select_for_budget(model, costs, request.budget_bops, s.eta0, s.eta1)
    budgets = _served(cache, request.budget_bops)
    train_s = float(info["wall_time_s"])
    meta = {"method": "onemps", "eta": None if fallback else child.eta, "fallback": fallback,
            "diagnostics": _diagnostics(model, info["initial"], costs, child.eta if not fallback else s.eta1),
            "search_cost": {"supernet_train_s": train_s, "cache_hit": hit, "cache_key": key,
                            "cache_dir": str(cache), "budgets_served": budgets,
                            "amortised_s": train_s / len(budgets), "this_call_s": time.perf_counter() - t0}}
    request.log(f"onemps: eta={child.eta:.4g} -> {child.bops:.4g} BOPs (budget {request.budget_bops:.4g})"
                + (" [fallback: lowest bits]" if fallback else ""))
    return _policy(request, model, child.choice, meta)


def _served(cache: Path, budget: float) -> list[float]:
    """The budgets answered from this supernet so far (kept in ``budgets.json`` beside it)."""
    path = cache / "budgets.json"
    try:
        budgets = json.loads(path.read_text()) if path.is_file() else []
    except ValueError:
        budgets = []
    if budget not in budgets:
        budgets.append(budget)
        atomic_write_text(path, json.dumps(budgets) + "\n")
    return budgets


def _search_fixed(request: SearchRequest, preset: str) -> BitPolicy:
    """VIMPS / DNAS: bracket the fixed eta of one search per eta (module docstring)."""
    opts = _options(request, preset)
    growth = float(opts["growth"])
    if growth <= 1:
        raise ConfigError(f"{preset}: option growth must be > 1, got {growth}")
    eta, low, high = float(opts["eta"]), None, None
    _, costs = build_supernet(request_config(request, preset, opts, eta), request.build_model(),
                              tuple(request.input_size))
    floor = costs.bops(cheapest_choice(costs))
    if floor > request.budget_bops:
        raise BudgetError(f"{preset}: the budget {request.budget_bops:.4g} BOPs is below the cheapest "
                          f"architecture of the search space ({floor:.4g} BOPs); raise the budget")
    tried, feasible = [], []
    for _ in range(int(opts["max_searches"])):
        cfg = request_config(request, preset, opts, eta)
        run_dir = Path(request.run_dir) / f"{preset}-eta{eta:.6g}"
        identity = {"preset": preset, "eta": eta, "seed": request.seed, **_fingerprint(request)}
        model, costs, _, initial = _train(request, cfg, run_dir, identity)
        choice = most_probable(model, eta)
        bops = costs.bops(choice)
        ok = bops <= request.budget_bops
        tried.append({"eta": eta, "bops": bops, "feasible": ok})
        request.log(f"{preset}: eta={eta:.4g} -> {bops:.4g} BOPs (budget {request.budget_bops:.4g})")
        if ok:
            feasible.append((bops, eta, choice, model, initial))
            high = eta if high is None else min(high, eta)
        else:
            low = eta if low is None else max(low, eta)
        eta = math.sqrt(low * high) if low is not None and high is not None else (
            eta * growth if high is None else eta / growth)
    if feasible:
        _, eta, choice, model, initial = max(feasible, key=lambda f: f[0])
        meta = {"method": preset, "eta": eta, "fallback": False, "searches": tried,
                "diagnostics": _diagnostics(model, initial, costs, eta)}
        return _policy(request, model, choice, meta)
    meta = {"method": preset, "eta": None, "fallback": True, "searches": tried,
            "diagnostics": _diagnostics(model, initial, costs, tried[-1]["eta"])}
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
