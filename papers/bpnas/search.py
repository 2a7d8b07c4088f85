"""The BP-NAS search: weights and architecture logits of the supernet trained on

    L = CE + L_c*(E(SN)) + lambda * L_prob-1            (supp. eq. 3 and 6; gradients eq. 4-5 and 7)

in one forward / backward per step, after ``search.warmup_epochs`` epochs of weight-only training.

- ``search.paths = sample`` (default): every step each block runs ONE pair drawn from ``p`` (one convolution
  per layer, the cost of a fixed-precision step). The task loss's gradient w.r.t. ``alpha`` is the
  score-function estimate ``(CE - b) * grad sum_b log p_b(s_b)`` with ``b`` a moving average of CE
  (``search.baseline_decay``); the barrier and Prob-1 terms are exact functions of ``p``.
- ``search.paths = mixture``: every layer computes the ``p``-weighted sum of its candidate pairs (DARTS-like,
  exact gradients; one convolution per distinct activation bit-width of the pairs).

The architecture step never leaves the feasible domain: the logits start at E(SN) <= B_max - init_margin
(:func:`papers.bpnas.losses.feasible_init`) and a step that would end beyond ``B_max - boundary_eps`` is
backtracked (:func:`papers.bpnas.losses.guarded_arch_step`). Every epoch appends ``p`` of each block to
``arch_history.json`` and rewrites ``arch_state.json`` (read by the derive stage).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from core.config import config_to_dict
from core.engine import (
    Trainer,
    accuracy,
    all_reduce_mean,
    atomic_write_text,
    build_optimizer,
    build_scheduler,
    classification_data,
    is_distributed,
    is_main,
    log,
    move_to,
    trainer_kwargs,
)
from core.errors import BudgetError, ConfigError
from core.nn import arch_parameters, weight_parameters
from papers.bpnas.common import ARCH_STATE_FILE, num_classes_of, run_paths, setup
from papers.bpnas.config import BpnasConfig, SearchConfig
from papers.bpnas.losses import (
    SupernetCost,
    barrier_penalty,
    feasible_init,
    guarded_arch_step,
    path_log_prob,
    prob1_regularizer,
)
from papers.bpnas.models import CONVENTION, build_supernet
from papers.bpnas.supernet import BlockSelector, PairConv2d, PairLinear, resample_paths


def block_snapshot(selectors: list[BlockSelector], cost: SupernetCost) -> list[dict]:
    """Per block: name, layers, pairs, alpha, p and MACs inside the budget, as plain JSON types."""
    out = []
    for s, macs in zip(selectors, cost.block_macs):
        with torch.no_grad():
            out.append({"name": s.name, "layers": list(s.layer_names), "pairs": [list(p) for p in s.pairs],
                        "alpha": s.alpha.detach().cpu().tolist(), "probs": s.probs().detach().cpu().tolist(),
                        "macs": macs})
    return out


def diagnostics(snapshot: list[dict]) -> dict[str, Any]:
    """Convergence of the architecture distribution: per block max p and entropy (nats)."""
    return {"max_prob": {b["name"]: max(b["probs"]) for b in snapshot},
            "entropy": {b["name"]: -sum(p * math.log(p) for p in b["probs"] if p > 0) for b in snapshot}}


def ignore_arch_in_ddp(model: nn.Module) -> None:
    """Keep the architecture logits out of DDP's bucketed all-reduce: the score-function, barrier and
    Prob-1 terms reach them outside the forward pass, which DDP cannot track; the trainer averages their
    gradients itself (:func:`average_arch_gradients`)."""
    arch = {id(p) for p in arch_parameters(model)}
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in arch]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)


class BpnasSearchTrainer(Trainer):
    """:class:`core.engine.Trainer` with BP-NAS's objective and the guarded architecture step.

    ``optimizers`` must be ``{"weights": ..., "arch": ...}``; ``selectors`` / ``cost`` come from
    :func:`papers.bpnas.models.build_supernet` (or any model built with the ``bpnas_pairs`` kind);
    ``search`` holds b_max, mu, prob1_weight, warmup_epochs, baseline_decay, boundary_eps, max_backtracks.
    ``history_dir`` (rank 0) receives ``arch_history.json`` and ``arch_state.json``. ``self.trace`` lists
    E(SN) after every architecture step of this process (the feasibility record of the tests). The pairs of
    step ``t`` are drawn from a generator seeded with ``(path_seed, t)``: the same on every rank and for any
    number of processes, and reproduced on resume.
    """

    def __init__(self, *args: Any, selectors: list[BlockSelector], cost: SupernetCost, search: SearchConfig,
                 history_dir: str | Path | None = None, state_meta: dict | None = None, path_seed: int = 0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if set(self.optimizers) != {"weights", "arch"}:
            raise ConfigError("the BP-NAS search needs two optimizers named 'weights' and 'arch'")
        self.selectors, self.cost, self.search, self.path_seed = selectors, cost, search, int(path_seed)
        self.sampled = any(s.paths == "sample" for s in selectors)
        self.history_dir = Path(history_dir) if history_dir is not None else None
        self.state_meta = dict(state_meta or {})
        self.baseline: float | None = None
        self.arch_history: list[dict] = []
        self.trace: list[float] = []
        self._epoch_arch = {"backtracks": 0, "rejected": 0, "steps": 0}

    # ------------------------------------------------------------------ one step
    def arch_active(self) -> bool:
        return self.epoch >= self.search.warmup_epochs

    def train_step(self, batch: Any) -> dict[str, Any]:
        images, targets = move_to(batch, self.device)[:2]
        if self.sampled:
            generator = torch.Generator().manual_seed(self.path_seed * 1_000_003 + self.step)
            resample_paths(self.selectors, generator)
        logits = self.model(images)
        ce = self.criterion(logits, targets)
        scalars: dict[str, Any] = {"ce": ce.detach(), "top1": accuracy(logits.detach(), targets)}
        loss = ce
        active = self.arch_active()
        if active:
            expected = self.cost.expected_avg_bits()
            barrier = barrier_penalty(expected, self.search.b_max, self.search.mu)
            prob1 = prob1_regularizer([s.probs() for s in self.selectors])
            loss = loss + barrier.to(ce.dtype) + self.search.prob1_weight * prob1
            if self.sampled and self.baseline is not None:
                advantage = float(ce.detach()) - self.baseline
                loss = loss + advantage * path_log_prob(self.selectors)
            scalars.update(barrier=barrier.detach(), prob1=prob1.detach())
        self.zero_grad()
        loss.backward()
        if active and is_distributed():
            average_arch_gradients(self.selectors)
        self.clip_gradients()
        self.step_optimizers(["weights"])
        if active:
            info = guarded_arch_step(self.optimizers["arch"], self.cost, self.search.b_max,
                                     self.search.boundary_eps, self.search.max_backtracks)
            self.trace.append(info["expected_avg_bits"])
            self._epoch_arch["backtracks"] += info["backtracks"]
            self._epoch_arch["rejected"] += info["rejected"]
            self._epoch_arch["steps"] += 1
        decay, value = self.search.baseline_decay, float(ce.detach())
        self.baseline = value if self.baseline is None else decay * self.baseline + (1 - decay) * value
        scalars["expected_avg_bits"] = self.cost.value()
        return scalars

    # ------------------------------------------------------------------ architecture record
    def snapshot(self) -> list[dict]:
        return block_snapshot(self.selectors, self.cost)

    def record_architecture(self, epoch: int) -> dict:
        """Append ``p`` of every block after ``epoch`` completed epochs and rewrite the JSON files."""
        snap = self.snapshot()
        argmax = {b["name"]: tuple(b["pairs"][max(range(len(b["probs"])), key=b["probs"].__getitem__)])
                  for b in snap}
        entry = {"epoch": int(epoch), "probs": [b["probs"] for b in snap],
                 "expected_avg_bits": self.cost.value(), "argmax_avg_bits": self.cost.avg_bits(argmax),
                 **self._epoch_arch}
        self.arch_history = [e for e in self.arch_history if e["epoch"] < epoch] + [entry]
        self._epoch_arch = {"backtracks": 0, "rejected": 0, "steps": 0}
        self.write_files(snap, epoch)
        return {"avg_bits_expected": entry["expected_avg_bits"], "avg_bits_argmax": entry["argmax_avg_bits"],
                "arch_backtracks": entry["backtracks"], "arch_rejected": entry["rejected"]}

    def write_files(self, snap: list[dict], epoch: int) -> None:
        if self.history_dir is None or not is_main():
            return
        s = self.search
        history = {"blocks": [b["name"] for b in snap], "pairs": [b["pairs"] for b in snap], "b_max": s.b_max,
                   "epochs": self.arch_history}
        atomic_write_text(self.history_dir / "arch_history.json", json.dumps(history) + "\n")
        state = {**self.state_meta, "b_max": s.b_max, "mu": s.mu, "prob1_weight": s.prob1_weight,
                 "paths": "sample" if self.sampled else "mixture", "convention": CONVENTION,
                 "epoch": int(epoch), "flops": self.cost.flops, "fixed_bops": self.cost.fixed_bops,
                 "expected_avg_bits": self.cost.value(), "blocks": snap}
        atomic_write_text(self.history_dir / ARCH_STATE_FILE, json.dumps(state, indent=1) + "\n")

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == 0 and not self.arch_history:
            self.record_architecture(0)  # the feasible initial p

    def on_epoch_end(self, epoch: int, record: dict) -> dict | None:
        return self.record_architecture(epoch + 1)

    def state_extra(self) -> dict:
        return {"arch_history": self.arch_history, "baseline": self.baseline}

    def load_extra(self, extra: dict) -> None:
        self.arch_history = list(extra.get("arch_history", []))
        self.baseline = extra.get("baseline")


def average_arch_gradients(selectors: list[BlockSelector]) -> None:
    """Mean of the architecture gradients over the ranks (they are outside DDP's all-reduce)."""
    for s in selectors:
        if s.alpha.grad is not None:
            s.alpha.grad.copy_(all_reduce_mean(s.alpha.grad))


def build_search_trainer(cfg: BpnasConfig, model: nn.Module, selectors: list[BlockSelector],
                         cost: SupernetCost, train_loader: Any, val_loader: Any, device: torch.device,
                         run_dir: Path | None, state_meta: dict | None = None,
                         **overrides: Any) -> BpnasSearchTrainer:
    """The search trainer of ``cfg`` over a built supernet (logits already feasible)."""
    s = cfg.search
    if is_distributed():
        ignore_arch_in_ddp(model)
    # a sampled step leaves the unsampled candidates' quantizer parameters (e.g. PACT's clips) unused
    quantizers = [q for m in model.modules() if isinstance(m, (PairConv2d, PairLinear))
                  for q in (*m.w_quantizers.values(), *m.a_quantizers.values())]
    unused = s.paths == "sample" and any(p.requires_grad for q in quantizers for p in q.parameters())
    optimizers = {"weights": build_optimizer(s.optim, weight_parameters(model)),
                  "arch": build_optimizer(s.arch_optim, arch_parameters(model))}
    steps = len(train_loader)
    schedulers = {"weights": build_scheduler(s.schedule, optimizers["weights"], steps)}
    kwargs = {**trainer_kwargs(cfg.run, s.optim), "run_dir": run_dir,
              "eval_every": s.eval_every if val_loader is not None else s.schedule.epochs, **overrides}
    return BpnasSearchTrainer(model, optimizers, train_loader, val_loader, epochs=s.schedule.epochs,
                              schedulers=schedulers, device=device, config=config_to_dict(cfg),
                              find_unused_parameters=unused, selectors=selectors, cost=cost, search=s,
                              history_dir=run_dir, state_meta=state_meta, path_seed=cfg.run.seed, **kwargs)


def prepare_supernet(cfg: BpnasConfig, num_classes: int, input_size: tuple[int, int, int],
                     device: torch.device) -> tuple[nn.Module, list[BlockSelector], SupernetCost, dict]:
    """The supernet with feasible initial logits, and the initialisation record."""
    model, selectors, cost = build_supernet(cfg, num_classes, input_size, device)
    init = feasible_init(cost, cfg.search.b_max, cfg.search.init_margin)
    if init["expected_avg_bits"] > cfg.search.b_max - cfg.search.boundary_eps:
        raise BudgetError(f"the initial E(SN) {init['expected_avg_bits']:.4f} is not inside B_max = "
                          f"{cfg.search.b_max:g} - boundary_eps; lower search.boundary_eps")
    return model, selectors, cost, init


def run_search(cfg: BpnasConfig) -> dict:
    """``mpq bpnas search``: the barrier-penalty search; writes RUN_DIR/search/ (then ``derive``)."""
    t0 = time.perf_counter()
    info = setup(cfg)
    data = classification_data(cfg.data, cfg.run.seed, info=info,
                               max_steps=cfg.search.max_steps_per_epoch)
    _, search_dir, _ = run_paths(cfg)
    model, selectors, cost, init = prepare_supernet(cfg, num_classes_of(cfg), data.input_size, info.device)
    meta = {"model": cfg.model.name, "input_size": list(data.input_size), "dataset": cfg.data.name,
            "table_row": cfg.table_row, "init": init}
    trainer = build_search_trainer(cfg, model, selectors, cost, data.train, data.val, info.device, search_dir,
                                   state_meta=meta)
    log(f"BP-NAS search: {len(selectors)} blocks x {len(selectors[0].pairs)} pairs, "
        f"B_max={cfg.search.b_max:g}, paths={cfg.search.paths}, "
        f"initial E(SN)={init['expected_avg_bits']:.4f} (uniform p: {init['uniform_avg_bits']:.4f}, "
        f"cheapest: {init['min_avg_bits']:.4f})")
    record = trainer.fit()
    wall = time.perf_counter() - t0
    if is_main():
        atomic_write_text(search_dir / "search_time.json", json.dumps({"search_wall_s": wall}) + "\n")
    return {**record, "search_wall_s": wall, "trace_max": max(trainer.trace, default=float("nan"))}
