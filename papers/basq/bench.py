"""BASQ in the cross-method benchmark: ``METHOD.search(request) -> BitPolicy``.

BASQ searches activation clipping, not bit-widths. For a budget it takes the largest uniform bit-width
``b`` (a weight and an activation candidate) whose BOPs fit, ``MACs x b^2 <= request.budget_bops`` over the
searchable layers (``bpnas`` convention), and searches the clips at that width: a float teacher (the
request's network, trained ``request.epochs`` epochs with hard labels), the two supernet stages (each
``request.epochs`` epochs) on the request's network quantized with the ``basq`` layer kind, and the K-fold
evolutionary search on ``request.val_set``. The returned policy is uniform ``(b, b)``; its meta carries
what the clip search found: per fold the selection, the clips, the fold and held-out top-1 of the supernet
(before fine-tuning), their mean over the folds, and ``meta["diagnostics"]``: ``best_so_far``, the mean
over the folds of each fold's best fold top-1 after each generation (non-decreasing, what
``benchmarks/convergence.py`` judges), with the per-fold curves in ``best_so_far_folds``. BN/clip fine-tuning
(Alg. 1 part 3) is not run here.

The search depends on the budget only through ``b``: it is kept per (:meth:`SearchRequest.fingerprint`,
``b``, options) in this process, so the budgets of one comparison that share a width share one search,
reported as shared work (``search_cost_shared_s`` / ``shared_over``).

``request.options`` (all optional): ``lambdas`` (the official seven), ``clip_init`` (6.0), ``clip_step``
(``paper``), ``lr`` (Adam, 1e-3), ``teacher_lr`` (SGD, 0.1), ``folds`` (10), ``fold_split``
(``contiguous``), ``population`` (45), ``iterations`` (20), ``parents`` (10), ``crossover`` (15),
``mutation`` (15), ``mutation_prob`` (0.1).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from core.bops import count
from core.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig
from core.errors import BudgetError, ConfigError
from core.method import SearchMethod, SearchRequest
from core.nn import quantize_model
from core.policy import BitPolicy
from papers.basq.layers import LAMBDAS

DEFAULTS: dict[str, Any] = {"lambdas": list(LAMBDAS), "clip_init": 6.0, "clip_step": "paper", "lr": 1e-3,
                            "teacher_lr": 0.1, "folds": 10, "fold_split": "contiguous", "population": 45,
                            "iterations": 20, "parents": 10, "crossover": 15, "mutation": 15,
                            "mutation_prob": 0.1}
EVOLUTION_KEYS = ("population", "iterations", "parents", "crossover", "mutation", "mutation_prob")
_SEARCHES: dict[str, dict] = {}  # fingerprint + width + options -> one clip search (this process)


def uniform_bits(request: SearchRequest) -> tuple[int, list[str], float]:
    """``(b, searchable layer names, their MACs)``: the largest candidate ``b`` (weights and activations)
    with ``MACs x b^2`` within the budget; ``BudgetError`` when none fits."""
    report = count(request.build_model(), tuple(request.input_size), convention="bpnas")
    names, macs = [r.name for r in report.counted_rows], float(report.macs)
    candidates = sorted(set(request.w_candidates) & set(request.a_candidates), reverse=True)
    for b in candidates:
        if macs * b * b <= request.budget_bops * (1 + 1e-12):
            return int(b), names, macs
    raise BudgetError(f"basq: no uniform bit-width among {candidates} fits the budget "
                      f"{request.budget_bops:.4g} BOPs ({macs:.4g} MACs x b^2); raise the budget")


def _config(request: SearchRequest, opts: dict[str, Any], bits: int) -> Any:
    """The BASQ config that carries the recipe (data come from the request, not from ``data``)."""
    from papers.basq.config import (
        BASQConfig,
        QuantConfig,
        SearchConfig,
        StageConfig,
        SupernetConfig,
        TeacherConfig,
    )
    from papers.basq.evolution import EvolutionSettings

    epochs = max(1, int(request.epochs))
    adam = OptimConfig(name="adam", lr=float(opts["lr"]), weight_decay=5e-6, grad_clip=10.0)
    stage = StageConfig(optim=adam, schedule=ScheduleConfig(name="cosine", epochs=epochs))
    sgd = OptimConfig(lr=float(opts["teacher_lr"]), weight_decay=5e-4)
    teacher = TeacherConfig(name="request", source="train", optim=sgd,
                            schedule=ScheduleConfig(name="cosine", epochs=epochs))
    evolution = EvolutionSettings(**{k: opts[k] for k in EVOLUTION_KEYS})
    return BASQConfig(
        model=ModelConfig(name="request", num_classes=request.num_classes),
        data=DataConfig(batch_size=request.batch_size, workers=0),
        run=RunConfig(out_dir=str(Path(request.run_dir) / "basq"), seed=request.seed, device=request.device,
                      log_every=10**9),
        quant=QuantConfig(bits=bits, lambdas=[float(v) for v in opts["lambdas"]],
                          clip_init=float(opts["clip_init"]), clip_step=opts["clip_step"]),
        teacher=teacher, supernet=SupernetConfig(stage1=stage, stage2=stage),
        search=SearchConfig(folds=int(opts["folds"]), fold_split=opts["fold_split"], evolution=evolution))


def clip_search(request: SearchRequest, opts: dict[str, Any], bits: int) -> dict:
    """Teacher, supernet and the K-fold search at width ``bits`` (kept in this process, see the module
    docstring): ``{"key", "folds", "seconds"}``."""
    from core.config import validate_config
    from papers.basq.folds import dataset_targets, make_splits
    from papers.basq.models import basq_spec
    from papers.basq.search import quantized_weights_frozen, search_fold
    from papers.basq.supernet import prepare_teacher, train_supernet

    key = request.fingerprint("basq", bits, opts)
    if key in _SEARCHES:
        return _SEARCHES[key]
    start = time.perf_counter()
    cfg = _config(request, opts, bits)
    validate_config(cfg)
    device = torch.device(request.device)
    torch.manual_seed(request.seed)
    teacher = prepare_teacher(cfg, device, request.train_set, request.val_set, model=request.build_model())
    q = cfg.quant

    def build() -> torch.nn.Module:
        model = request.build_model()
        spec = basq_spec(bits, lambdas=q.lambdas, clip_init=q.clip_init, clip_step=q.clip_step)
        quantize_model(model, spec)
        return model

    model = train_supernet(cfg, build, teacher, request.train_set, device).eval()
    splits = make_splits(dataset_targets(request.val_set), "kfold", cfg.search.folds, cfg.search.fold_split,
                         seed=request.seed)
    with quantized_weights_frozen(model):
        folds = [search_fold(model, split, request.val_set, cfg, device) for split in splits]
    entry = {"key": key, "folds": folds, "seconds": time.perf_counter() - start}
    if len(_SEARCHES) > 8:
        _SEARCHES.clear()
    _SEARCHES[key] = entry
    return entry


def search(request: SearchRequest) -> BitPolicy:
    """The module docstring's procedure."""
    unknown = sorted(set(request.options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"basq: unknown request option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **request.options}
    bits, names, macs = uniform_bits(request)
    request.log(f"basq: uniform W{bits}A{bits} ({macs * bits * bits:.4g} BOPs <= "
                f"{request.budget_bops:.4g}); teacher, supernet, K-fold clip search")
    found = clip_search(request, opts, bits)
    folds = found["folds"]
    heldout = statistics.fmean(f["heldout_top1_before_finetune"] for f in folds)
    request.log(f"basq: {len(folds)} folds, mean held-out top-1 of the supernet {heldout:.2f}")
    curves = [f["best_so_far"] for f in folds]
    meta = {"method": "basq", "bits": bits, "bops": macs * bits * bits, "budget_bops": request.budget_bops,
            "convention": "bpnas", "kfold_top1_before_finetune": heldout,
            "folds": [{k: f[k] for k in ("index", "selection", "clips", "fold_top1",
                                         "heldout_top1_before_finetune", "evaluated")} for f in folds],
            "diagnostics": {"best_so_far": [statistics.fmean(gen) for gen in zip(*curves)],
                            "best_so_far_folds": curves, "evaluated": [f["evaluated"] for f in folds]},
            "search_cost_shared_s": found["seconds"], "shared_over": f"basq-{found['key']}"}
    return BitPolicy({n: (bits, bits) for n in names}, meta=meta)


METHOD = SearchMethod(name="basq", paper="BASQ (ECCV 2022)", search=search,
                      description="the largest uniform bit-width within the budget, then BASQ's branch-wise "
                                  "clip search (supernet + K-fold evolution) at that width")
