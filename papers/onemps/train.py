"""Supernet + f_theta training on the loss of the slide "One-shot Mixed Precision Search".

Each step (:meth:`SupernetTrainer.compute_loss`): draw eta ~ p(eta); evaluate f_theta(eta) once; run the
supernet with gates z ~ GumbelSoftmax(f_theta(eta)) (one straight-through path per layer in the OneMPS
configuration); loss = cross-entropy - sum_k sum_b pi log p(eta) - lambda H(pi) + mu (kernel similarity)
(:class:`papers.onemps.losses.Objective`); one backward; the weight optimizer (SGD) and the architecture
optimizer (theta, Adam) both step (single level, one mini-batch), theta only after
``search.arch_warmup_epochs``. The Gumbel temperature follows ``search.tau_*`` per step.

``mpq onemps train`` writes ``RUN_DIR/supernet/`` (see :mod:`papers.onemps.common`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from core.config import config_to_dict
from core.engine import (
    Trainer,
    accuracy,
    atomic_write_text,
    build_optimizer,
    build_scheduler,
    config_identity,
    is_main,
    log,
    move_to,
    trainer_kwargs,
)
from core.nn import arch_parameters, weight_parameters
from papers.onemps.common import (
    COSTS_FILE,
    LATER_STAGES,
    SUMMARY_FILE,
    build_data,
    build_supernet,
    float_model,
    run_paths,
    setup,
)
from papers.onemps.config import OneMpsConfig, SearchConfig
from papers.onemps.losses import HardwareCosts, Objective
from papers.onemps.plots import CURVE_FILE
from papers.onemps.probability import sample_eta, sweep_etas
from papers.onemps.supernet import pin_architecture, probability_model, supernet_layers


def temperature(search: SearchConfig, step: int, total: int) -> float:
    """tau at ``step`` of ``total``: from ``tau_start`` to ``tau_end``, exponentially (geometric), linearly,
    or constant (``tau_start``)."""
    frac = min(1.0, step / max(1, total - 1))
    if search.tau_schedule == "constant":
        return search.tau_start
    if search.tau_schedule == "linear":
        return search.tau_start + (search.tau_end - search.tau_start) * frac
    return search.tau_start * (search.tau_end / search.tau_start) ** frac


def objective_of(search: SearchConfig, costs: HardwareCosts) -> Objective:
    return Objective(costs, hardware=search.hardware_loss, entropy_weight=search.entropy_weight,
                     kernel_weight=search.kernel_weight, dnas_gamma=search.dnas_gamma,
                     dnas_beta=search.dnas_beta)


def diagnostics(model: nn.Module, costs: HardwareCosts, eta: float) -> dict[str, Any]:
    """pi_theta(eta) per layer: max probability and entropy (weights, activations), expected BOPs and
    average bits sqrt(E[BOPs] / MACs)."""
    with torch.no_grad():
        probs = probability_model(model).probabilities(eta)
    exp_bops = costs.expected_bops(probs)

    def ent(p: torch.Tensor) -> float:
        return float(-(p * p.clamp_min(1e-30).log()).sum())

    return {"eta": eta, "expected_bops": exp_bops,
            "expected_avg_bits": math.sqrt(exp_bops / costs.macs_total),
            "max_prob": [[float(pw.max()), float(pa.max())] for pw, pa in probs],
            "entropy": [[ent(pw), ent(pa)] for pw, pa in probs]}


@torch.no_grad()
def initialise_quantizers(model: nn.Module, images: torch.Tensor) -> None:
    """Initialise every option's LSQ step (and the BN statistics of each path) from one batch: one
    forward per option index with every layer pinned to it, in the same order on every rank."""
    layers = supernet_layers(model)
    n = max(max(len(m.w_candidates), len(m.a_candidates)) for _, m in layers)
    was_training = model.training
    model.train()
    try:
        for k in range(n):
            pin_architecture(model, {name: (min(k, len(m.w_candidates) - 1), min(k, len(m.a_candidates) - 1))
                                     for name, m in layers})
            model(images)
    finally:
        pin_architecture(model, None)
        model.train(was_training)


class SupernetTrainer(Trainer):
    """:class:`core.engine.Trainer` with the OneMPS step (module docstring).

    ``optimizers`` must be ``{"weights": ..., "arch": ...}``; ``objective`` the configuration's loss;
    ``search`` its section (p(eta), gates, temperature, warm-up)."""

    def __init__(self, *args: Any, objective: Objective, search: SearchConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective, self.search = objective, search
        self.bit_model = probability_model(self.module)
        self.layers = [m for _, m in supernet_layers(self.module)]
        self.total_steps = self.epochs * max(1, len(self.train_loader))
        self.bit_model.eta = search.eta if search.eta_distribution == "fixed" else \
            math.sqrt(search.eta0 * search.eta1)  # the penalty of the validation forwards

    def draw_eta(self) -> float:
        s = self.search
        return sample_eta(s.eta0, s.eta1, s.eta_distribution, fixed=s.eta)

    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        eta = self.draw_eta()
        tau = temperature(self.search, self.step, self.total_steps)
        self.bit_model.set_gates(self.search.gates, tau)
        eval_eta = self.bit_model.eta
        logits = self.bit_model.begin_step(eta)
        try:
            out = self.model(images)
        finally:
            self.bit_model.end_step()
            self.bit_model.eta = eval_eta
        ce = self.criterion(out, targets)
        kernels = [m.option_weights() for m in self.layers] if self.objective.kernel_weight else None
        gates = [m.last_gates for m in self.layers] if self.objective.hardware == "multiplicative" else None
        loss, terms = self.objective(ce, logits, eta, kernels, gates)
        terms.update(eta=eta, tau=tau, top1=accuracy(out.detach(), targets))
        return loss, terms

    def step_optimizers(self, names: Iterable[str] | None = None) -> None:
        """Every optimizer, except the architecture's during the first ``search.arch_warmup_epochs``."""
        if names is None and self.epoch < self.search.arch_warmup_epochs:
            names = ["weights"]
        super().step_optimizers(names)


def build_for_training(cfg: OneMpsConfig, input_size: tuple[int, int, int], device: torch.device
                       ) -> tuple[nn.Module, HardwareCosts]:
    """The supernet of ``cfg`` on ``device`` and its hardware costs."""
    model, costs = build_supernet(cfg, float_model(cfg), input_size)
    return model.to(device), costs


def supernet_identity(cfg: OneMpsConfig) -> dict:
    """The supernet run's identity: the config without the later stages' sections."""
    return config_identity(cfg, exclude=list(LATER_STAGES))


def arch_curve(model: nn.Module, costs: HardwareCosts, eta0: float, eta1: float, points: int = 48) -> dict:
    """pi_theta(eta) over ``points`` log-spaced penalties: per layer the expected (w, a) bits, the expected
    average bits and BOPs, and the most probable architecture's BOPs (``supernet/arch_curve.json``)."""
    bit_model = probability_model(model)
    layers = supernet_layers(model)
    rows = []
    for eta in sweep_etas(eta0, eta1, points, "log"):
        with torch.no_grad():
            probs = bit_model.probabilities(eta)
        exp = [[float(pw @ pw.new_tensor(m.w_candidates)), float(pa @ pa.new_tensor(m.a_candidates))]
               for (pw, pa), (_, m) in zip(probs, layers)]
        exp_bops = costs.expected_bops(probs)
        argmax = {n: (int(probs[m.index][0].argmax()), int(probs[m.index][1].argmax())) for n, m in layers}
        rows.append({"eta": eta, "expected_bits": exp, "expected_bops": exp_bops,
                     "expected_avg_bits": math.sqrt(exp_bops / costs.macs_total),
                     "argmax_bops": costs.bops(argmax)})
    return {"layers": [n for n, _ in layers], "macs": costs.macs, "points": rows}


def fit_supernet(cfg: OneMpsConfig, model: nn.Module, costs: HardwareCosts, train: Any, val: Any,
                 device: torch.device, run_dir: Any, identity: dict | None = None,
                 config: Any = None, log_every: int | None = None) -> dict:
    """Train ``model`` (a supernet of ``cfg``) on ``train``; the run lives in ``run_dir`` (resumable; None:
    nothing on disk). Returns the summary: wall time, last epoch record, diagnostics of pi at the start and
    the end (at the validation eta)."""
    s = cfg.search
    if s.init_quantizers:
        initialise_quantizers(model, move_to(next(iter(train)), device)[0])
    optimizers = {"weights": build_optimizer(s.optim, weight_parameters(model)),
                  "arch": build_optimizer(s.arch_optim, arch_parameters(model))}
    schedulers = {"weights": build_scheduler(s.schedule, optimizers["weights"], len(train))}
    kwargs = trainer_kwargs(cfg.run, s.optim)
    kwargs.update(run_dir=run_dir, find_unused_parameters=True)
    if log_every is not None:
        kwargs["log_every"] = log_every
    trainer = SupernetTrainer(model, optimizers, train, val, epochs=s.schedule.epochs, schedulers=schedulers,
                              device=device, config=config if config is not None else config_to_dict(cfg),
                              identity=identity if identity is not None else supernet_identity(cfg),
                              objective=objective_of(s, costs), search=s, **kwargs)
    eta = trainer.bit_model.eta
    start = diagnostics(model, costs, eta)
    record = trainer.fit()
    return {"wall_time_s": trainer.wall_time_s,
            "record": {k: v for k, v in record.items() if isinstance(v, (int, float, str))},
            "diagnostics": {"start": start, "end": diagnostics(model, costs, eta)}}


def run_train(cfg: OneMpsConfig) -> dict:
    """``mpq onemps train``: the supernet + f_theta (or a VIMPS / DNAS / EdMIPS-proxy search) ->
    RUN_DIR/supernet/."""
    t0 = time.perf_counter()
    info = setup(cfg)
    s = cfg.search
    data = build_data(cfg, info, s.max_steps_per_epoch)
    out = run_paths(cfg)["supernet"]
    model, costs = build_for_training(cfg, data.input_size, info.device)
    if s.eta_distribution == "fixed":
        log(f"OneMPS train ({s.probability_model} logits, gates {s.gates}, {s.hardware_loss} hardware loss, "
            f"fixed eta={s.eta:g}): {len(costs.names)} searchable layers")
    else:
        log(f"OneMPS train: {len(costs.names)} searchable layers, B^w={cfg.quant.w_candidates}, "
            f"B^x={cfg.quant.a_candidates}, f_theta={s.probability_model}, gates={s.gates}, "
            f"p(eta)={s.eta_distribution} on [{s.eta0:g}, {s.eta1:g}]")
    summary = fit_supernet(cfg, model, costs, data.train, data.val, info.device, out)
    summary["train_wall_s"] = time.perf_counter() - t0
    if is_main():
        costs.save(out / COSTS_FILE)
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
        lo, hi = (s.eta0, s.eta1) if s.eta_distribution != "fixed" else (s.eta / 100, s.eta * 100)
        curve = arch_curve(model, costs, lo, hi)
        atomic_write_text(out / CURVE_FILE, json.dumps(curve) + "\n")
    return summary
