"""LLT in the cross-method benchmark: ``METHOD.search(request) -> BitPolicy``.

Trains the importance indicators briefly on the request's model and data (Alg. 1, ``request.epochs``
epochs, candidate bits = the union of the request's weight and activation candidates), then solves the
ILP of Eq. 4 under the request's BOPs budget: ``sum_l MACs_l * w_l * a_l <= request.budget_bops`` over
the searchable layers, MACs with floor output sizes (the ``bpnas`` convention's counts). The first conv
and last linear are not searched.

``request.options`` (all optional): ``alpha`` (2.0), ``lr`` (0.01), ``weight_decay`` (2.5e-5),
``label_smoothing`` (0.1), ``grad_clip`` (1.0, by value), ``random_policy`` (``joint``),
``nonmonotone_rule`` (True).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from core.config import OptimConfig, ScheduleConfig
from core.data import build_loader
from core.engine import build_optimizer, build_scheduler
from core.errors import ConfigError
from core.method import SearchMethod, SearchRequest
from core.policy import BitPolicy
from papers.llt.complexity import layer_costs
from papers.llt.ilp import solve_ilp
from papers.llt.indicators import extract_indicators
from papers.llt.onetime import ImportanceTrainer, build_indicator_model

OPTIONS = ("alpha", "lr", "weight_decay", "label_smoothing", "grad_clip", "random_policy", "nonmonotone_rule")


def search(request: SearchRequest) -> BitPolicy:
    unknown = sorted(set(request.options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"llt: unknown option(s) {unknown}; valid: {list(OPTIONS)}")
    opts = request.options
    bits = sorted(set(request.w_candidates) | set(request.a_candidates), reverse=True)
    if min(bits) < 2:
        raise ConfigError(f"llt: candidate bits {bits} include {min(bits)}; LSQ steps (the indicators) "
                          "need at least 2 bits (signed weights)")
    torch.manual_seed(request.seed)
    model = request.build_model()
    identity = indicator_identity(request, model, bits, opts)
    names = build_indicator_model(model, bits)
    loader = build_loader(request.train_set, request.batch_size, train=True, workers=0, seed=request.seed)
    optim = OptimConfig(lr=opts.get("lr", 0.01), momentum=0.9, weight_decay=opts.get("weight_decay", 2.5e-5))
    optimizer = build_optimizer(optim, model.parameters())
    scheduler = build_scheduler(ScheduleConfig(name="cosine", epochs=request.epochs), optimizer, len(loader))
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    run_dir = Path(request.run_dir) / "llt_indicators" / digest
    trainer = ImportanceTrainer(
        model, optimizer, loader, None, epochs=request.epochs, schedulers=scheduler, run_dir=run_dir,
        device=request.device, resume="auto", label_smoothing=opts.get("label_smoothing", 0.1),
        grad_clip=opts.get("grad_clip", 1.0), grad_clip_mode="value", bits=bits, layer_names=names,
        random_policy=opts.get("random_policy", "joint"), seed=request.seed, eval_bits=[], identity=identity)
    request.log(f"llt: Alg. 1 on {len(names)} layers, bits {bits}, {request.epochs} epoch(s)")
    trainer.fit()
    indicators = extract_indicators(trainer.module, bits, names, meta={"source": "mpq benchmark"})
    indicators.save(run_dir / "indicators.json")

    costs = layer_costs(request.build_model(), names, tuple(request.input_size), "exact")
    w_cands, a_cands = sorted(request.w_candidates, reverse=True), sorted(request.a_candidates, reverse=True)
    alpha = float(opts.get("alpha", 2.0))
    sol = solve_ilp(indicators.table("weight", w_cands), indicators.table("act", a_cands), costs, alpha=alpha,
                    w_candidates=w_cands, a_candidates=a_cands, bitops_budget=request.budget_bops,
                    nonmonotone_rule=bool(opts.get("nonmonotone_rule", True)))
    request.log(f"llt: ILP solved in {sol.solve_time_s * 1e3:.0f} ms, BOPs {sol.bitops:.4g} "
                f"<= {request.budget_bops:.4g}")
    meta = {"method": "llt", "alpha": alpha, "bops": sol.bitops, "budget_bops": request.budget_bops,
            "objective": sol.objective, "penalised_choices": sol.penalised, "solve_time_s": sol.solve_time_s,
            "indicators": str(run_dir / "indicators.json"), "epochs": request.epochs}
    return BitPolicy(list(zip(names, zip(sol.w_bits, sol.a_bits))), meta=meta)


def indicator_identity(request: SearchRequest, model: torch.nn.Module, bits: list[int], opts: dict) -> dict:
    """What the indicators trained for ``request`` depend on: the float ``model`` (its parameters' names,
    shapes and sums), the data's size, the seed, the schedule, the candidate bits and the training options.
    Requests that differ in any of these train in different directories
    (``run_dir/llt_indicators/<digest>``); the budget, which Alg. 1 never sees, and the ILP's options
    (``alpha``, ``nonmonotone_rule``) do not enter."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{float(tensor.double().sum()):.12g};".encode())
    return {"model": {"type": type(model).__name__, "state": digest.hexdigest()[:16]},
            "input_size": list(request.input_size), "num_classes": request.num_classes,
            "train_set": {"type": type(request.train_set).__name__, "size": len(request.train_set)},
            "seed": request.seed, "epochs": request.epochs, "batch_size": request.batch_size, "bits": bits,
            "options": {k: v for k, v in opts.items() if k not in ("alpha", "nonmonotone_rule")}}


METHOD = SearchMethod(name="llt", paper="LLT (ECCV 2022)", search=search,
                      description="learned LSQ steps as layer importance (Alg. 1) + one ILP (Eq. 4)")
