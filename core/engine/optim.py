"""Optimizers and learning-rate schedules from :class:`~core.config.OptimConfig` /
:class:`~core.config.ScheduleConfig`.

Every schedule built here is a ``LambdaLR`` stepped once per *iteration* (attribute
``interval = "step"``); the factor is a function of the fractional epoch ``t = step / steps_per_epoch``:

- ``step``: ``gamma ** floor(t / step_size)`` (e.g. EdMIPS: lr * 0.1^(epoch // 10));
- ``multistep``: ``gamma ** (number of milestones <= t)``;
- ``cosine``: ``m + (1 - m) * (1 + cos(pi * t' / T')) / 2`` with ``m = min_lr / lr``, ``t' = t - W`` and
  ``T' = epochs - cooldown_epochs - W`` (``W`` the warm-up epochs, or 0 with ``warmup_prefix=False``,
  timm's default, where the warm-up overrides the first epochs of a cosine that starts at 0); ``m`` for
  the last ``cooldown_epochs``;
- ``constant``: 1.

``warmup_epochs > 0`` ramps the factor linearly from ``warmup_start_factor`` to 1 first.
With ``per_step=False`` the factor only changes at epoch boundaries (``t`` is floored): timm's schedulers
stepped once per epoch.

``build_optimizer`` takes parameters, parameter groups or a module; from a module with
``OptimConfig.no_decay_1d`` it makes two groups (:func:`param_groups_no_decay_1d`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from core.config import OptimConfig, ScheduleConfig
from core.errors import ConfigError

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups_no_decay_1d"]


def param_groups_no_decay_1d(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, as timm's ``create_optimizer`` builds them (``filter_bias_and_bn``): no weight decay for
    parameters with at most one dimension (BatchNorm), biases, and quantizer parameters with at most one
    dimension larger than 1 (a per-tensor LSQ step, which the official LLT code stores 1-D and mpq as
    ``(candidates, 1)``); ``weight_decay`` for the rest. Parameters without ``requires_grad`` are left out.
    """
    from core.quant.base import Quantizer

    quantizer_params = {id(p) for m in model.modules() if isinstance(m, Quantizer)
                        for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.dim() <= 1 or name.endswith(".bias") or (
            id(p) in quantizer_params and sum(d > 1 for d in p.shape) <= 1)
        (no_decay if flat else decay).append(p)
    return [g for g in ({"params": no_decay, "weight_decay": 0.0},
                        {"params": decay, "weight_decay": weight_decay}) if g["params"]]


def build_optimizer(cfg: OptimConfig, params_or_groups: Iterable | nn.Module) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over parameters or parameter groups (groups may override lr, weight_decay), or
    over a module's parameters (grouped by :func:`param_groups_no_decay_1d` with ``cfg.no_decay_1d``)."""
    if isinstance(params_or_groups, nn.Module):
        module = params_or_groups
        params_or_groups = (param_groups_no_decay_1d(module, cfg.weight_decay) if cfg.no_decay_1d
                            else list(module.parameters()))
    elif cfg.no_decay_1d:
        raise ConfigError("optim.no_decay_1d needs the module (parameter names) to group its parameters; "
                          "this stage builds its optimizer from a parameter list")
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
        start = warm if cfg.warmup_prefix else 0.0
        span = max(cfg.epochs - cfg.cooldown_epochs - start, 1e-12)
        progress = min(max((t - start) / span, 0.0), 1.0)
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
