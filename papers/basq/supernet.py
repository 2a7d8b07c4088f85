"""Supernet training (supplementary Alg. 1 part 1).

Each iteration samples one branch per searchable block uniformly (line 2), runs the student supernet
with that selection (line 3) and the float teacher (line 4), and back-propagates the distillation loss
(soft cross-entropy, temperature 1) of the student's logits against the teacher's (line 5). The labels
are not used.

Two stages (official): stage 1 quantizes activations only (LSQ pointwise inputs and the branch clip
quantizers; weights float); stage 2 starts from stage 1's network, quantizes the weights too with their
LSQ steps initialised afresh from the trained weights, with a fresh optimizer and schedule. Optimizer
(official): Adam (coupled L2) over four kinds of param groups - BN, classifier and LSQ steps without
decay; conv weights with ``optim.weight_decay`` (5e-6); one group per branch index ``j`` holding the
clips of branch ``j`` of every block, decayed with ``lambda_j``; cosine schedule; gradient-norm clip 10.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.data import build_dataset_from_config
from core.engine import (
    Trainer,
    accuracy,
    build_optimizer,
    build_scheduler,
    log,
    setup_process,
    trainer_kwargs,
)
from core.errors import ConfigError
from core.nn import distillation_loss, freeze_full_precision_quantizers, quantizable_layers
from papers.basq.common import build_supernet, num_classes, stage_identity, stage_model_state, train_loader
from papers.basq.config import BASQConfig, StageConfig
from papers.basq.folds import heldout_loader
from papers.basq.layers import (
    clip_param_groups,
    clip_parameters,
    sample_selection,
    search_space,
    set_selection,
)
from papers.basq.models import build_network


def supernet_param_groups(model: nn.Module, conv_weight_decay: float) -> list[dict]:
    """The official param groups (module docstring); empty groups are left out."""
    clips = clip_param_groups(model)
    clip_ids = {id(p) for g in clips for p in g["params"]}
    conv = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    conv_ids = {id(p) for p in conv}
    other = [p for p in model.parameters() if id(p) not in clip_ids and id(p) not in conv_ids]
    groups = [{"params": other, "weight_decay": 0.0, "name": "bn_fc_steps"},
              {"params": conv, "weight_decay": conv_weight_decay, "name": "conv_weights"}, *clips]
    return [g for g in groups if g["params"]]


def distillation_step(model: nn.Module, teacher: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, dict]:
    """Alg. 1 part 1, lines 3-5: student and teacher forward, the soft cross-entropy between them (the
    labels only feed the logged top-1)."""
    logits = model(images)
    with torch.no_grad():
        teacher_logits = teacher(images)
    loss = distillation_loss(logits, teacher_logits, temperature)
    return loss, {"loss": loss.detach(), "top1": accuracy(logits.detach(), targets)}


class SupernetTrainer(Trainer):
    """:class:`core.engine.Trainer` whose step is Alg. 1 part 1 (module docstring).

    ``zero_grad``: ``"none"`` or ``"zeros"`` (see :class:`papers.basq.config.SupernetConfig`). The selection
    of step ``t`` is drawn from a generator seeded by ``(seed, stage, t)``: identical on every DDP rank and
    after a resume."""

    def __init__(self, *args: Any, teacher: nn.Module, temperature: float = 1.0, zero_grad: str = "none",
                 seed: int = 0, stage: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("find_unused_parameters", True)  # the unselected branches get no gradient
        super().__init__(*args, **kwargs)
        if zero_grad not in ("none", "zeros"):
            raise ConfigError(f"supernet.zero_grad must be 'none' or 'zeros', got {zero_grad!r}")
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.zero_grad_mode = float(temperature), zero_grad
        self.seed, self.stage = int(seed), int(stage)
        self.space = search_space(self.module)

    def sample(self) -> tuple[int, ...]:
        """Alg. 1 part 1, line 2: this step's selection."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.stage) * 1_000_033 + self.step)
        return sample_selection(self.space, gen)

    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        set_selection(self.module, self.sample())  # line 2
        return distillation_step(self.model, self.teacher, images, targets, self.temperature)

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=self.zero_grad_mode == "none")

    def on_epoch_end(self, epoch: int, record: dict) -> dict | None:
        """Mean clip of each branch over the blocks (supplementary Fig. 1)."""
        return {f"clip_mean_lambda{j}": float(torch.stack([p.detach() for p in params]).mean())
                for j, params in enumerate(clip_parameters(self.module))}


def prepare_teacher(cfg: BASQConfig, device: torch.device, train_set: Any = None, val_set: Any = None,
                    model: nn.Module | None = None) -> nn.Module:
    """The teacher in eval mode: ``teacher.checkpoint`` loaded (``teacher.source=checkpoint``), or ``model``
    (default: ``teacher.name``) trained with hard labels into ``<run.out_dir>/teacher`` (resumed, or
    reused when finished) on ``train_set`` (default: ``data``'s), evaluated on ``val_set``."""
    t = cfg.teacher
    if t.source == "checkpoint":
        if not t.checkpoint:
            raise ConfigError(f"teacher.source=checkpoint needs the teacher's weights: set "
                              f"teacher.checkpoint=/path/to/{t.name}.pth (a local file; nothing is "
                              "downloaded), or train one with teacher.source=train")
        return build_network(t.name, num_classes(cfg), pretrained=t.checkpoint, **t.kwargs).to(device).eval()
    if model is None:
        model = build_network(t.name, num_classes(cfg), **t.kwargs)
    if train_set is None:
        train_set = build_dataset_from_config(cfg.data, "train")
        val_set = build_dataset_from_config(cfg.data, "val", augment=False)
    loader = train_loader(cfg, train_set, t.batch_size, "teacher.batch_size")
    optimizer = build_optimizer(t.optim, model.parameters())
    kw = trainer_kwargs(cfg.run, t.optim)
    kw["run_dir"] = cfg.out / "teacher"
    val = heldout_loader(val_set, range(len(val_set)), cfg.search.batch_size, cfg.data.workers) \
        if val_set is not None else None
    trainer = Trainer(model, optimizer, loader, val, epochs=t.schedule.epochs,
                      schedulers=build_scheduler(t.schedule, optimizer, len(loader)), device=device,
                      config=cfg, identity=stage_identity(cfg, "teacher"), **kw)
    last = trainer.fit()
    log(f"teacher: val top-1 {last.get('val_top1', float('nan')):.2f}")
    return trainer.module.to(device).eval()


def _stage_trainer(cfg: BASQConfig, stage: int, model: nn.Module, teacher: nn.Module, train_set: Any,
                   device: torch.device) -> SupernetTrainer:
    st: StageConfig = cfg.supernet.stage1 if stage == 1 else cfg.supernet.stage2
    loader = train_loader(cfg, train_set, st.batch_size, f"supernet.stage{stage}.batch_size")
    optimizer = build_optimizer(st.optim, supernet_param_groups(model, st.optim.weight_decay))
    kw = trainer_kwargs(cfg.run, st.optim)
    kw["run_dir"] = cfg.out / "supernet" / f"stage{stage}"
    return SupernetTrainer(model, optimizer, loader, None, epochs=st.schedule.epochs,
                           schedulers=build_scheduler(st.schedule, optimizer, len(loader)), device=device,
                           config=cfg, identity=stage_identity(cfg, f"stage{stage}"), teacher=teacher,
                           temperature=cfg.supernet.temperature, zero_grad=cfg.supernet.zero_grad,
                           seed=cfg.run.seed, stage=stage, **kw)


def train_supernet(cfg: BASQConfig, build: Callable[[], nn.Module], teacher: nn.Module, train_set: Any,
                   device: torch.device) -> nn.Module:
    """Both stages on ``build()`` (a fresh quantized supernet), each resumable in
    ``<run.out_dir>/supernet/stage<n>``; returns the trained supernet."""
    model = build()
    for _, layer in quantizable_layers(model):  # stage 1: activations only
        layer.w_bits = 32
    freeze_full_precision_quantizers(model)
    log(f"supernet stage 1: {len(search_space(model))} searchable blocks x {len(cfg.quant.lambdas)} "
        f"branches, A{cfg.quant.bits} (weights float)")
    _stage_trainer(cfg, 1, model, teacher, train_set, device).fit()
    model = build()  # stage 2: weights quantized, their steps initialised on first use
    model.load_state_dict(stage_model_state(cfg, "stage1", cfg.out / "supernet" / "stage1",
                                            "run `mpq basq supernet` again (stage 1 did not finish)"))
    log(f"supernet stage 2: W{cfg.quant.bits}A{cfg.quant.bits}")
    _stage_trainer(cfg, 2, model, teacher, train_set, device).fit()
    return model


def run_supernet(cfg: BASQConfig) -> Path:
    """Alg. 1 part 1 for ``cfg`` (resumable with ``run.resume=auto``; runnable under torchrun); returns
    stage 2's run directory."""
    info = setup_process(cfg.run)
    teacher = prepare_teacher(cfg, info.device)
    train_supernet(cfg, lambda: build_supernet(cfg)[0], teacher, build_dataset_from_config(cfg.data, "train"),
                   info.device)
    return cfg.out / "supernet" / "stage2"
