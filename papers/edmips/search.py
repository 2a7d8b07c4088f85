"""Section 4: the EdMIPS search, i.e. minimising the Lagrangian of eq. 6 over W and {alpha, beta}.

``L = R_E + eta * R_C`` with R_E the cross-entropy of the relaxed network (eq. 10, composite convolutions of
eq. 14-16) and R_C the normalised complexity of :mod:`papers.edmips.complexity`. Two learning strategies
(section 4.6):

- ``single_pass`` (default): one forward-backward of L per minibatch, then the weight optimizer and the
  architecture optimizer both step (official ``search.py``);
- ``alternating``: per minibatch, (1) fix {alpha, beta} and step W on L, then (2) a second forward-backward
  with the updated W and step only {alpha, beta} (twice the cost, section 4.6). Both steps use the same
  minibatch: the paper does not split the training set, unlike DARTS.

During the search every epoch appends pi of each layer to ``arch_history.json`` (Figure 4) and rewrites
``arch_state.json`` (read by the discretize stage).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from core.config import config_to_dict
from core.engine import (
    RunDir,
    Trainer,
    accuracy,
    atomic_write_text,
    build_optimizer,
    build_scheduler,
    classification_data,
    is_main,
    log,
    move_to,
    trainer_kwargs,
)
from core.errors import ConfigError
from core.nn import arch_parameters, weight_parameters
from papers.edmips.common import SEARCH_DIR, num_classes_of, setup, stage_dir, stage_identity
from papers.edmips.complexity import ComplexityLoss, LayerCost, measure_layer_costs
from papers.edmips.config import EdmipsConfig
from papers.edmips.models import build_float_model, build_search_model
from papers.edmips.rules import winner_take_all_alpha

STRATEGIES = ("single_pass", "alternating")


def layer_snapshot(layers: list[tuple[str, nn.Module]], costs: list[LayerCost]) -> list[dict]:
    """Per layer: candidates, alpha, pi (eq. 11) and the cost bases, as plain JSON types."""
    out = []
    for (name, m), cost in zip(layers, costs):
        with torch.no_grad():
            out.append({
                "name": name,
                "w_candidates": [int(b) for b in m.w_candidates],
                "a_candidates": [int(b) for b in m.a_candidates],
                "alpha_w": m.alpha_w.detach().cpu().tolist(),
                "alpha_a": m.alpha_a.detach().cpu().tolist(),
                "pi_w": m.pi_w().detach().cpu().tolist(),
                "pi_a": m.pi_a().detach().cpu().tolist(),
                "macs": cost.macs,
                "params": cost.params,
                "activations": cost.activations,
            })
    return out


def expected_and_argmax_avg_bits(snapshot: list[dict]) -> tuple[float, float]:
    """sqrt(E[BitOps]/MACs) of the relaxed model and sqrt(BitOps/MACs) of its winner-take-all policy."""
    macs = sum(s["macs"] for s in snapshot) or 1.0
    exp = arg = 0.0
    for s in snapshot:
        ew = sum(p * b for p, b in zip(s["pi_w"], s["w_candidates"]))
        ea = sum(p * b for p, b in zip(s["pi_a"], s["a_candidates"]))
        exp += s["macs"] * ew * ea
        w = s["w_candidates"][winner_take_all_alpha(s["alpha_w"])]
        a = s["a_candidates"][winner_take_all_alpha(s["alpha_a"])]
        arg += s["macs"] * w * a
    return math.sqrt(exp / macs), math.sqrt(arg / macs)


class EdmipsSearchTrainer(Trainer):
    """:class:`core.engine.Trainer` with the Lagrangian of eq. 6 and the two optimizers of section 4.6.

    ``optimizers`` must be ``{"weights": ..., "arch": ...}``. ``layers`` / ``costs`` are the searchable layers
    and their cost bases; ``history_dir`` (rank 0) receives ``arch_history.json`` and ``arch_state.json``.
    """

    def __init__(self, *args: Any, complexity: ComplexityLoss, layers: list[tuple[str, nn.Module]],
                 costs: list[LayerCost], eta: float, strategy: str = "single_pass",
                 history_dir: str | Path | None = None, state_meta: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown search.strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if set(self.optimizers) != {"weights", "arch"}:
            raise ConfigError("the EdMIPS search needs two optimizers named 'weights' and 'arch'")
        if eta < 0:
            raise ConfigError(f"search.eta must be >= 0 (the Lagrange multiplier of eq. 6), got {eta}")
        self.complexity, self.layers, self.costs = complexity, layers, costs
        self.eta, self.strategy = float(eta), strategy
        self.history_dir = Path(history_dir) if history_dir is not None else None
        self.state_meta = dict(state_meta or {})
        self.arch_history: list[dict] = []

    # ------------------------------------------------------------------ eq. 6
    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = self.model(images)
        ce = self.criterion(logits, targets)
        rc = self.complexity()
        loss = ce + self.eta * rc
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "complexity": rc.detach(),
                      "top1": accuracy(logits.detach(), targets)}

    def train_step(self, batch: Any) -> dict[str, Any]:
        if self.strategy == "single_pass":
            return super().train_step(batch)
        images, targets = move_to(batch, self.device)[:2]
        loss, scalars = self.compute_loss(images, targets)  # (1) {alpha, beta} fixed: update W
        self.zero_grad()
        loss.backward()
        self.clip_gradients()
        self.step_optimizers(["weights"])
        loss, _ = self.compute_loss(images, targets)  # (2) W fixed: update {alpha, beta}
        self.zero_grad()
        loss.backward()
        self.step_optimizers(["arch"])
        return scalars

    # ------------------------------------------------------------------ architecture record
    def snapshot(self) -> list[dict]:
        return layer_snapshot(self.layers, self.costs)

    def record_architecture(self, epoch: int) -> dict:
        """Append pi of every layer after ``epoch`` completed epochs and rewrite the JSON files."""
        snap = self.snapshot()
        exp_bits, arg_bits = expected_and_argmax_avg_bits(snap)
        with torch.no_grad():
            rc = float(self.complexity())
        entry = {"epoch": int(epoch), "pi_w": [s["pi_w"] for s in snap], "pi_a": [s["pi_a"] for s in snap],
                 "complexity": rc, "expected_avg_bits": exp_bits, "argmax_avg_bits": arg_bits}
        self.arch_history = [e for e in self.arch_history if e["epoch"] < epoch] + [entry]
        self.write_files(snap, epoch)
        return {"complexity_expected": rc, "avg_bits_expected": exp_bits, "avg_bits_argmax": arg_bits}

    def write_files(self, snap: list[dict], epoch: int) -> None:
        if self.history_dir is None or not is_main():
            return
        history = {"layers": [s["name"] for s in snap], "w_candidates": snap[0]["w_candidates"],
                   "a_candidates": snap[0]["a_candidates"], "eta": self.eta,
                   "complexity": self.complexity.complexity, "epochs": self.arch_history}
        atomic_write_text(self.history_dir / "arch_history.json", json.dumps(history) + "\n")
        state = {**self.state_meta, "eta": self.eta, "complexity": self.complexity.complexity,
                 "strategy": self.strategy, "epoch": int(epoch), "layers": snap}
        atomic_write_text(self.history_dir / "arch_state.json", json.dumps(state, indent=1) + "\n")

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == 0 and not self.arch_history:
            self.record_architecture(0)  # the uniform initial pi (epoch 0 of Figure 4)

    def on_epoch_end(self, epoch: int, record: dict) -> dict | None:
        return self.record_architecture(epoch + 1)

    def state_extra(self) -> dict:
        return {"arch_history": self.arch_history}

    def load_extra(self, extra: dict) -> None:
        self.arch_history = list(extra.get("arch_history", []))


def build_search(cfg: EdmipsConfig, num_classes: int, input_size: tuple[int, int, int], device: torch.device
                 ) -> tuple[nn.Module, list[tuple[str, nn.Module]], list[LayerCost], ComplexityLoss]:
    """The search model of ``cfg`` on ``device``, its searchable layers, their costs and R_C."""
    model = build_float_model(cfg.model, num_classes)
    model, layers = build_search_model(model, cfg.quant, cfg.search.alpha_init)
    model.to(device)
    costs = measure_layer_costs(model, layers, input_size)
    return model, layers, costs, ComplexityLoss(layers, costs, cfg.search.complexity)


def run_search(cfg: EdmipsConfig) -> dict:
    """``mpq edmips search``: train the relaxed network on eq. 6; writes RUN_DIR/search/, whose lock it
    holds from the start (a second run into it stops at once) to the end."""
    info = setup(cfg)
    with RunDir(stage_dir(cfg, SEARCH_DIR)) as run:
        identity = stage_identity(cfg, SEARCH_DIR)
        run.claim(identity, cfg.run.resume)  # lock + identity check; nothing written yet
        data = classification_data(cfg.data, cfg.run.seed, info=info,
                                   max_steps=cfg.search.max_steps_per_epoch)
        model, layers, costs, complexity = build_search(cfg, num_classes_of(cfg), data.input_size,
                                                        info.device)
        optimizers = {"weights": build_optimizer(cfg.search.optim, weight_parameters(model)),
                      "arch": build_optimizer(cfg.search.arch_optim, arch_parameters(model))}
        steps = len(data.train)
        schedulers = {name: build_scheduler(cfg.search.schedule, opt, steps)
                      for name, opt in optimizers.items()}
        kwargs = trainer_kwargs(cfg.run, cfg.search.optim)
        kwargs.update(run_dir=run, eval_every=cfg.search.eval_every or cfg.search.schedule.epochs)
        trainer = EdmipsSearchTrainer(
            model, optimizers, data.train, data.val, epochs=cfg.search.schedule.epochs, schedulers=schedulers,
            device=info.device, config=config_to_dict(cfg), identity=identity, complexity=complexity,
            layers=layers, costs=costs, eta=cfg.search.eta, strategy=cfg.search.strategy,
            history_dir=run.path, state_meta={"model": cfg.model.name, "input_size": list(data.input_size),
                                              "dataset": cfg.data.name, "table_row": cfg.table_row},
            **kwargs)
        with torch.no_grad():
            rc0 = float(complexity())
        log(f"EdMIPS search: {len(layers)} searchable layers, eta={cfg.search.eta}, R_C={rc0:.4f} "
            f"(eta*R_C={cfg.search.eta * rc0:.4f})")
        record = trainer.fit()
    return {**record, "search_wall_s": trainer.wall_time_s}
