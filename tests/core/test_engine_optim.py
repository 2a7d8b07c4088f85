"""Optimizer parameter groups and learning-rate schedules against timm's (the official LLT recipe's)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.config import OptimConfig, ScheduleConfig
from core.engine import build_optimizer, build_scheduler
from core.engine.optim import param_groups_no_decay_1d
from core.errors import ConfigError
from core.nn import QuantSpec, quantize_model

timm = pytest.importorskip("timm")
timm_optim = pytest.importorskip("timm.optim")
timm_scheduler = pytest.importorskip("timm.scheduler")


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_no_decay_1d_groups_match_timm_create_optimizer_and_use_nesterov():
    """timm's ``create_optimizer_v2(model, 'sgd', weight_decay=wd)`` (LIMPQ's ``create_optimizer``):
    Nesterov momentum, no decay on 1-D parameters and biases. The same groups here."""
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    cfg = OptimConfig(lr=0.01, momentum=0.9, weight_decay=2.5e-5, nesterov=True, no_decay_1d=True)
    ours = build_optimizer(cfg, model)
    theirs = timm_optim.create_optimizer_v2(model, "sgd", lr=0.01, weight_decay=2.5e-5, momentum=0.9)
    assert ours.defaults["nesterov"] and theirs.defaults["nesterov"] and ours.defaults["momentum"] == 0.9
    by_decay = {g["weight_decay"]: _ids(g["params"]) for g in ours.param_groups}
    assert by_decay == {g["weight_decay"]: _ids(g["params"]) for g in theirs.param_groups}
    assert by_decay[0.0] == _ids(p for n, p in model.named_parameters() if p.dim() == 1)


def test_no_decay_1d_leaves_per_tensor_lsq_steps_undecayed():
    """The official per-tensor LSQ steps are 1-D parameters (not decayed); mpq stores them as
    ``(candidates, 1)``: they join the no-decay group, the conv and fc weights do not."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, bias=True),
                          nn.Flatten(), nn.Linear(8, 4))
    quantize_model(model, QuantSpec(kind="switchable", w_quant="lsq", a_quant="lsq", w_bits=4, a_bits=4,
                                    w_candidates=[4, 2], a_candidates=[4, 2]))
    groups = {g["weight_decay"]: g["params"] for g in param_groups_no_decay_1d(model, 1e-4)}
    named = dict(model.named_parameters())
    assert _ids(groups[1e-4]) == _ids([named["0.weight"], named["2.weight"], named["4.weight"]])
    steps = [p for n, p in named.items() if n.endswith(".step")]
    assert steps and all(p.shape == (2, 1) for p in steps)
    assert _ids(steps) | _ids([named["1.weight"], named["1.bias"], named["2.bias"]]) <= _ids(groups[0.0])
    assert len(groups[0.0]) + len(groups[1e-4]) == len(named)


def test_no_decay_1d_needs_the_module():
    with pytest.raises(ConfigError, match="needs the module"):
        build_optimizer(OptimConfig(no_decay_1d=True), [nn.Parameter(torch.zeros(2, 2))])


def _lrs(cfg: ScheduleConfig, lr: float, steps_per_epoch: int) -> list[float]:
    opt = build_optimizer(OptimConfig(lr=lr), [nn.Parameter(torch.zeros(1))])
    sched = build_scheduler(cfg, opt, steps_per_epoch)
    out = []
    for _ in range(int(cfg.epochs) * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _timm_lrs(lr: float, epochs: int, steps_per_epoch: int, **kwargs) -> list[float]:
    """timm's CosineLRScheduler stepped once per epoch (``t_in_epochs``), as the official code runs it."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = timm_scheduler.CosineLRScheduler(opt, **kwargs)
    out = []
    for epoch in range(epochs):
        sched.step(epoch)
        out += [opt.param_groups[0]["lr"]] * steps_per_epoch
    return out


def test_official_indicator_schedule_steps_per_epoch_with_a_floor():
    """LLT indicators: cosine over the epochs, once per epoch, floor 1e-5. ResNet-50's single epoch stays
    at 0.01 throughout (a per-iteration cosine to 0 averages 0.005 there)."""
    cfg = ScheduleConfig(name="cosine", epochs=3, min_lr=1e-5, per_step=False)
    got = _lrs(cfg, 0.01, 4)
    assert got == pytest.approx(_timm_lrs(0.01, 3, 4, t_initial=3, lr_min=1e-5), rel=1e-12)
    assert got[4] == pytest.approx(1e-5 + 0.5 * (0.01 - 1e-5) * (1 + math.cos(math.pi / 3)), rel=1e-12)
    one = _lrs(ScheduleConfig(name="cosine", epochs=1, min_lr=1e-5, per_step=False), 0.01, 5)
    assert one == [0.01] * 5
    per_step = _lrs(ScheduleConfig(name="cosine", epochs=1), 0.01, 1000)
    assert sum(per_step) / len(per_step) == pytest.approx(0.005, rel=1e-2)


def test_official_finetune_schedule_has_warmup_over_the_cosine_and_a_cooldown():
    """LLT fine-tuning: timm cosine with t_initial 90, 5 warm-up epochs from 1e-5 replacing the start of
    the cosine (warmup_prefix False), then 5 cool-down epochs at 1e-5: 95 epochs."""
    cfg = ScheduleConfig(name="cosine", epochs=95, warmup_epochs=5, warmup_start_factor=1e-5 / 0.04,
                         min_lr=1e-5, per_step=False, cooldown_epochs=5, warmup_prefix=False)
    got = _lrs(cfg, 0.04, 2)
    want = _timm_lrs(0.04, 95, 2, t_initial=90, lr_min=1e-5, warmup_t=5, warmup_lr_init=1e-5)
    assert got == pytest.approx(want, rel=1e-9)
    assert got[0] == pytest.approx(1e-5) and got[2 * 4] == pytest.approx(1e-5 + 4 * (0.04 - 1e-5) / 5)
    assert got[2 * 5] == pytest.approx(1e-5 + 0.5 * (0.04 - 1e-5) * (1 + math.cos(math.pi * 5 / 90)))
    assert got[2 * 90:] == pytest.approx([1e-5] * 10)
