"""A child of the supernet as a standalone fixed-precision network, fine-tuned (``mpq onemps finetune``).

:func:`extract_child` turns a supernet and an architecture (option indices per layer) into an ordinary
network of core ``QConv2d`` / ``QLinear`` layers: each searchable layer gets its option's kernel, bias and
quantizers (with their learned LSQ steps), each conditional BatchNorm becomes the child's own
``BatchNorm2d``; everything else (first / last layers, other BatchNorms) is copied. From a TRAINED supernet
this is the child the Pareto stage evaluated (``finetune.init=supernet``); from a freshly built one it is
the network trained standalone from the float weights (``finetune.init=float``, the correlation study's
"standalone" models).

The child is then trained with ``finetune.optim`` / ``finetune.schedule``, its BatchNorm statistics
re-estimated on ``finetune.bn_images`` training images, and evaluated; ``results.json`` (core.results),
``final.pt`` (the evaluated weights) and ``export.json`` go to ``RUN_DIR/finetune/<tag>/``, so
``mpq export RUN_DIR/finetune/<tag>`` rebuilds the child (:func:`child_for_export`) and exports it.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.bops import count
from core.config import OptimConfig, ScheduleConfig, build_config, config_to_dict
from core.engine import (
    Trainer,
    build_optimizer,
    build_scheduler,
    check_producer,
    evaluate,
    is_main,
    log,
    reestimate_bn_statistics,
    trainer_kwargs,
)
from core.errors import ConfigError
from core.export.spec import ExportSpec, save_weights, write_export_spec
from core.io import read_json
from core.nn import QConv2d, QLinear, replace_module
from core.policy import BitPolicy
from core.results import run_result, write_results
from papers.onemps.common import build_data, load_supernet_state, run_paths, setup
from papers.onemps.config import OneMpsConfig
from papers.onemps.supernet import ConditionalBatchNorm2d, SupernetConv2d, pin_architecture, supernet_layers
from papers.onemps.train import build_for_training, supernet_identity


def extract_child(supernet: nn.Module, choice: dict[str, tuple[int, int]]) -> nn.Module:
    """The fixed-precision network of the architecture ``choice`` ``{name: (i, j)}`` (module docstring)."""
    pin_architecture(supernet, choice)  # checks the choice and sets each conditional BN's key
    with torch.no_grad():
        for name, m in supernet_layers(supernet):
            m._select_bn(*choice[name])
    child = copy.deepcopy(supernet)
    pin_architecture(supernet, None)
    for name, m in supernet_layers(child):
        i, j = choice[name]
        if isinstance(m, SupernetConv2d):
            new = QConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                          m.groups, m.bias is not None, m.padding_mode, device=m.weight.device,
                          dtype=m.weight.dtype, w_bits=m.w_candidates[i], a_bits=m.a_candidates[j])
        else:
            new = QLinear(m.in_features, m.out_features, m.bias is not None, device=m.weight.device,
                          dtype=m.weight.dtype, w_bits=m.w_candidates[i], a_bits=m.a_candidates[j])
        new.weight_quantizer, new.act_quantizer = m.w_quantizers[i], m.a_quantizers[j]
        with torch.no_grad():
            new.weight.copy_(m.option_weight(i))
            if m.bias is not None:
                new.bias.copy_(m.bias)
        replace_module(child, name, new)
    for name, bn in [(n, b) for n, b in child.named_modules() if isinstance(b, ConditionalBatchNorm2d)]:
        replace_module(child, name, bn.bns[bn.active])
    return child


def choice_of(supernet: nn.Module, policy: BitPolicy) -> dict[str, tuple[int, int]]:
    """Option indices of a policy's bits; a PolicyError-like ConfigError when bits are not candidates."""
    out = {}
    for name, m in supernet_layers(supernet):
        if name not in policy:
            raise ConfigError(f"the policy has no bits for searchable layer {name!r}")
        w, a = policy[name]
        if w not in m.w_candidates or a not in m.a_candidates:
            raise ConfigError(f"layer {name!r}: bits W{w}A{a} are not candidates of this supernet "
                              f"(W{m.w_candidates}, A{m.a_candidates})")
        out[name] = (m.w_candidates.index(w), m.a_candidates.index(a))
    return out


def child_for_export(num_classes: int, config: dict, policy: dict, input_size: list[int]) -> nn.Module:
    """The child network of ``export.json`` (``model_factory``): the supernet of the resolved ``config``,
    freshly built, and its child of ``policy``'s bits; ``mpq export`` then loads ``final.pt`` into it."""
    cfg = build_config(OneMpsConfig, config)
    cfg.model.num_classes, cfg.model.pretrained = num_classes, None  # the weights come from final.pt
    supernet, _ = build_for_training(cfg, tuple(input_size), torch.device("cpu"))
    return extract_child(supernet, choice_of(supernet, BitPolicy.from_dict(policy, source="export.json")))


def selected_policy(cfg: OneMpsConfig) -> tuple[BitPolicy, str]:
    """``finetune.policy`` (a policy.json) or point ``finetune.point`` of pareto/front.json; its tag."""
    f = cfg.finetune
    if f.policy:
        return BitPolicy.load(f.policy), Path(f.policy).stem
    front_file = run_paths(cfg)["pareto"] / "front.json"
    front = read_json(front_file, "Pareto front", "run `mpq onemps pareto RUN_DIR` first",
                      ConfigError)["front"]
    if not front:
        raise ConfigError(f"{front_file} holds no front point")
    index = max(range(len(front)), key=lambda k: front[k]["top1"]) if f.point < 0 else f.point
    if not 0 <= index < len(front):
        raise ConfigError(f"finetune.point={f.point}: the front has {len(front)} points "
                          f"(0..{len(front) - 1})")
    point = front[index]
    meta = {"method": "onemps", "eta": point["eta"], "front_point": index, "supernet_top1": point["top1"]}
    return BitPolicy({n: tuple(b) for n, b in point["policy"].items()}, meta), f"point{index}"


def train_child(cfg: OneMpsConfig, child: nn.Module, data: Any, device: torch.device, run_dir: Path | None,
                optim: OptimConfig, schedule: ScheduleConfig, config: Any = None) -> tuple[dict, float]:
    """Train ``child`` with ``optim`` / ``schedule``, re-estimate its BN statistics on
    ``finetune.bn_images`` training images, evaluate on val; returns the evaluation and the training wall
    time."""
    child.to(device)
    optimizer = build_optimizer(optim, child.parameters())
    scheduler = build_scheduler(schedule, optimizer, len(data.train))
    kwargs = trainer_kwargs(cfg.run, optim)
    kwargs.update(run_dir=run_dir)
    trainer = Trainer(child, {"weights": optimizer}, data.train, None, epochs=schedule.epochs,
                      schedulers={"weights": scheduler}, device=device,
                      config=config if config is not None else cfg, **kwargs)
    trainer.fit()
    reestimate_bn_statistics(child, data.train, cfg.finetune.bn_images, device)
    return evaluate(child, data.val, device, desc="finetune"), trainer.wall_time_s


def run_finetune(cfg: OneMpsConfig) -> dict:
    """``mpq onemps finetune RUN_DIR``: one child trained as a fixed-precision network -> results.json."""
    t0 = time.perf_counter()
    info = setup(cfg)
    paths = run_paths(cfg)
    f = cfg.finetune
    data = build_data(cfg, info, f.max_steps_per_epoch)
    supernet, _ = build_for_training(cfg, data.input_size, info.device)
    if f.init == "supernet":
        check_producer(paths["supernet"], supernet_identity(cfg), what="supernet",
                       fix="re-run `mpq onemps train` with this config")
        load_supernet_state(supernet, paths["supernet"], info.device)
    policy, tag = selected_policy(cfg)
    child = extract_child(supernet, choice_of(supernet, policy))
    del supernet
    out = paths["finetune"] / tag
    metrics, train_s = train_child(cfg, child, data, info.device, out, f.optim, f.schedule)
    report = count(child, data.input_size, policy=policy, convention=cfg.quant.bops_convention)
    searchable = count(child, data.input_size, policy=policy, convention="bpnas")
    policy.meta.update(init=f.init)
    result = run_result(cfg, info, paper="onemps", method="onemps", report=searchable, policy=policy,
                        metrics={k: metrics[k] for k in ("top1", "top5", "loss")},
                        wall_time_s={"finetune": train_s, "stage": time.perf_counter() - t0},
                        extra={"init": f.init, "tag": tag, "bops_all_layers": report.bops,
                               "bops_convention_all": report.convention})
    path = write_results(out / "results.json", result)
    if is_main():
        save_weights(out / "final.pt", child)
        write_export_spec(out, ExportSpec(
            model=cfg.model.name, num_classes=data.num_classes, input_size=data.input_size,
            checkpoint="final.pt", policy=policy.to_dict(),
            model_factory="papers.onemps.finetune:child_for_export",
            model_kwargs={"config": config_to_dict(cfg), "policy": policy.to_dict(),
                          "input_size": list(data.input_size)},
            meta={"paper": "onemps", "tag": tag, "init": f.init, "weights": "after BN re-estimation"}))
    log(f"OneMPS finetune ({tag}, init {f.init}): top-1 {metrics['top1']:.2f}, average bits "
        f"{searchable.avg_bits:.3f} -> {path}")
    return {"path": str(path), **metrics}
