"""Optimizers and learning-rate schedules from :class:`~core.config.OptimConfig` /
:class:`~core.config.ScheduleConfig`.

Every schedule built here is a ``LambdaLR`` stepped once per *iteration* (attribute
``interval = "step"``); the factor is a function of the fractional epoch ``t = step / steps_per_epoch``:

- ``step``: ``gamma ** floor(t / step_size)`` (e.g. EdMIPS: lr * 0.1^(epoch // 10));
- ``multistep``: ``gamma ** (number of milestones <= t)``;
- ``cosine``: ``m + (1 - m) * (1 + cos(pi * t' / T')) / 2`` with ``m = min_lr / lr`` over the epochs
  after warm-up;
- ``constant``: 1.

``warmup_epochs > 0`` ramps the factor linearly from ``warmup_start_factor`` to 1 first.
With ``per_step=False`` the factor only changes at epoch boundaries (``t`` is floored).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from core.config import OptimConfig, ScheduleConfig
from core.errors import ConfigError

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(cfg: OptimConfig, params_or_groups: Iterable) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over parameters or parameter groups (groups may override lr, weight_decay)."""
    params = list(params_or_groups)
    if not params:
        raise ConfigError(f"build_optimizer({cfg.name}): no parameters to optimize")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.name!r}: use sgd, adam or adamw")


def lr_factor(cfg: ScheduleConfig, epoch_float: float, base_lr: float) -> float:
    """The multiplier of the base learning rate at fractional epoch ``epoch_float``."""
    t = epoch_float if cfg.per_step else math.floor(epoch_float + 1e-9)
    warm = cfg.warmup_epochs
    if warm > 0 and t < warm:
        return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * t / warm
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** math.floor(t / cfg.step_size + 1e-9)
    if cfg.name == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if t + 1e-9 >= m)
    if cfg.name == "cosine":
        span = max(cfg.epochs - warm, 1e-12)
        progress = min(max((t - warm) / span, 0.0), 1.0)
        floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown schedule {cfg.name!r}: use step, multistep, cosine or constant")


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LambdaLR:
    """A per-iteration ``LambdaLR`` (``.interval == "step"``) implementing ``cfg`` for ``optimizer``."""
    if steps_per_epoch < 1:
        raise ConfigError(f"build_scheduler: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if cfg.name == "step" and cfg.step_size < 1:
        raise ConfigError(f"schedule.step_size must be >= 1, got {cfg.step_size}")
    lr_factor(cfg, 0.0, 1.0)  # validates the name early

    def factor_fn(base_lr: float):
        return lambda step: lr_factor(cfg, step / steps_per_epoch, base_lr)

    scheduler = LambdaLR(optimizer, [factor_fn(g["lr"]) for g in optimizer.param_groups])
    scheduler.interval = "step"
    return scheduler
