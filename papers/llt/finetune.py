"""Fine-tuning the searched policy (supplementary Sec. 1 and the official recipe).

LSQ weights and activations at the policy's bits; first conv W8 with its input unquantized, fc W8A8;
SGD lr 0.04, momentum 0.9, wd 2.5e-5, cosine with 5 warm-up epochs, label smoothing 0.1, 90 epochs;
BatchNorm statistics re-estimated on about 6000 training images before the final evaluation. Writes
``results.json`` (fields of ../shared/DESIGN.md) into ``<run.out_dir>/finetune``.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import core
from core.bops import count
from core.config import config_to_dict
from core.engine import (
    Trainer,
    all_reduce_mean,
    barrier,
    build_optimizer,
    build_scheduler,
    evaluate,
    get_info,
    init_distributed,
    is_main,
    load_checkpoint,
    log,
    move_to,
    seed_everything,
    trainer_kwargs,
    unwrap,
)
from core.errors import CheckpointError, ConfigError, PolicyError
from core.io import atomic_write_json
from core.nn import QuantSpec, freeze_full_precision_quantizers, quantize_model
from core.policy import BitPolicy
from papers.llt.common import build_float_model, build_loaders, input_size
from papers.llt.config import LLTConfig
from papers.llt.search import search_from_config


def build_finetune_model(model: nn.Module, policy: BitPolicy, first_layer: str = "w8",
                         last_layer: str = "w8a8", lsq_gradient: str = "paper") -> list[str]:
    """Quantize ``model`` in place with LSQ at the policy's bits; returns the searchable layer names."""
    spec = QuantSpec(mode="fixed", w_quant="lsq", a_quant="lsq",
                     w_options={"init": "limpq", "gradient": lsq_gradient},
                     a_options={"gradient": lsq_gradient}, first=first_layer, last=last_layer)
    names = quantize_model(model, spec)
    missing = [n for n in names if n not in policy]
    extra = [n for n in policy.layers if n not in names]
    if missing or extra:
        raise PolicyError(f"the policy does not fit the model: missing {missing[:5]}, not searchable "
                          f"{extra[:5]}; search it with the same --model")
    policy.apply(model, strict=False)
    freeze_full_precision_quantizers(model)  # unused 32-bit quantizer parameters would break DDP
    return names


def rescale_fc_weight(fc: nn.Linear) -> Any:
    """The official fine-tuning's SAT-style fc (Jin et al., CVPR 2020): in training the layer computes
    ``x @ (c * Q(W)).T + b`` with ``c = 1 / (sqrt(out_features) * std(Q(W)))`` (no gradient through
    ``c``), in evaluation ``x @ Q(W).T + b / c`` (the training logits over ``c``: the same argmax).
    ``fc`` computes ``x @ Q(W).T + b`` (a :class:`core.nn.QLinear`, or a float ``nn.Linear`` with
    ``Q = id``); a forward hook rewrites its output. Returns the hook handle."""

    def hook(module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            weight = module.quantized_weight() if hasattr(module, "quantized_weight") else module.weight
            c = 1.0 / (math.sqrt(module.out_features) * weight.std())
        bias = module.bias if module.bias is not None else 0.0
        if module.training:
            return (out - bias) * c + bias
        return out - bias + bias / c

    return fc.register_forward_hook(hook)


@torch.no_grad()
def init_from_indicator_run(model: nn.Module, cfg: LLTConfig, policy: BitPolicy) -> Path:
    """Copy the stage-1 network into the (quantized, not yet trained) fine-tuning ``model``: conv/linear
    weights and biases, and for each switchable BN the BatchNorm of its layer's searched weight bits.
    LSQ steps are not copied (they are initialised from the data at the new bits)."""
    from core.engine import Checkpointer
    from core.nn import SwitchableBatchNorm2d, apply_bits
    from papers.llt.onetime import build_indicator_model

    ckpt = Checkpointer(cfg.indicators_path.parent / "checkpoints").latest()
    if ckpt is None:
        raise CheckpointError(f"finetune.init=indicators: no checkpoint under {cfg.indicators_path.parent}; "
                              "run `mpq llt indicators` with this config first")
    source = build_float_model(cfg.model, cfg.data)
    build_indicator_model(source, cfg.bits, cfg.lsq_gradient)
    source.load_state_dict(load_checkpoint(ckpt)["model"])
    apply_bits(source, dict(policy.layers))  # switchable BNs follow their layer's weight bits
    target = dict(model.named_modules())
    for name, mod in source.named_modules():
        dst = target.get(name)
        if isinstance(mod, SwitchableBatchNorm2d) and isinstance(dst, nn.BatchNorm2d):
            dst.load_state_dict(mod.bns[str(mod.bits)].state_dict())
        elif type(mod) is nn.BatchNorm2d and isinstance(dst, nn.BatchNorm2d):
            dst.load_state_dict(mod.state_dict())
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and isinstance(dst, (nn.Conv2d, nn.Linear)):
            dst.weight.copy_(mod.weight)
            if mod.bias is not None and dst.bias is not None:
                dst.bias.copy_(mod.bias)
    return ckpt


@torch.no_grad()
def reestimate_bn_statistics(model: nn.Module, loader: Any, num_images: int, device: torch.device) -> int:
    """Recompute every BatchNorm's running mean/var as the plain average over ``num_images`` training
    images (official: about 6000) with the final quantized weights; returns the images used (per rank).
    Under DDP the statistics are averaged over ranks so replicas stay identical."""
    module = unwrap(model)
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_images <= 0:
        return 0
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = plain mean over batches
    was_training = module.training
    module.train()
    seen, target = 0, max(1, num_images // get_info().world_size)
    try:
        for batch in loader:
            images = move_to(batch, device)[0]
            module(images[: target - seen])
            seen += min(len(images), target - seen)
            if seen >= target:
                break
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        module.train(was_training)
    for bn in bns:
        bn.running_mean.copy_(all_reduce_mean(bn.running_mean))
        bn.running_var.copy_(all_reduce_mean(bn.running_var))
    return seen


def run_finetune(cfg: LLTConfig) -> dict:
    """Search (unless ``finetune.policy`` is given), fine-tune, re-estimate BN, evaluate, and write
    ``<run.out_dir>/finetune/results.json``; returns its content."""
    t_start = time.perf_counter()
    stage = cfg.finetune
    info = init_distributed(cfg.run.device)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    t0 = time.perf_counter()
    policy = BitPolicy.load(stage.policy) if stage.policy else search_from_config(cfg)
    t_search = time.perf_counter() - t0
    model = build_float_model(cfg.model, cfg.data)
    names = build_finetune_model(model, policy, stage.first_layer, stage.last_layer, cfg.lsq_gradient)
    if stage.init == "indicators":
        log(f"fine-tuning starts from the indicator network {init_from_indicator_run(model, cfg, policy)}")
    if stage.fc_rescale:
        rescale_fc_weight(_last_linear(model))
    _, _, train_loader, val_loader = build_loaders(cfg.data, cfg.run.seed, stage.batch_size,
                                                   stage.per_device_batch)
    optimizer = build_optimizer(stage.optim, model)
    scheduler = build_scheduler(stage.schedule, optimizer, len(train_loader))
    out_dir = Path(cfg.run.out_dir) / "finetune"
    kw = trainer_kwargs(cfg.run, stage.optim)
    kw["run_dir"] = out_dir
    trainer = Trainer(model, optimizer, train_loader, val_loader, epochs=stage.schedule.epochs,
                      schedulers=scheduler, device=info.device, config=cfg, **kw)
    t0 = time.perf_counter()
    last = trainer.fit()
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    used = reestimate_bn_statistics(trainer.model, train_loader, stage.bn_calibration_images, info.device)
    t_bn = time.perf_counter() - t0
    t0 = time.perf_counter()
    final = evaluate(trainer.model, val_loader, info.device, desc="final eval")
    t_eval = time.perf_counter() - t0
    report = count(trainer.module, input_size(cfg.data), convention=cfg.search.macs)
    results = {
        "paper": "LLT (ECCV 2022)", "method": "llt", "table_row": cfg.table_row,
        "model": cfg.model.name, "dataset": cfg.data.name, "policy": policy.to_dict(),
        "searchable_layers": len(names),
        "params": report.params, "macs": report.macs_all, "bops_convention": report.convention,
        "bitops": report.bops, "size_mb": report.size_mb(), "fp_size_mb": report.size_mb(32),
        "compression_ratio": report.compression_ratio,
        "top1": final["top1"], "top5": final["top5"], "val_loss": final["loss"],
        "top1_before_bn_reestimation": last.get("val_top1"),
        "bn_calibration_images": used * info.world_size,
        "epochs": stage.schedule.epochs,
        "wall_time_s": {"search": t_search, "train": t_train, "bn_reestimation": t_bn, "eval": t_eval,
                        "total": time.perf_counter() - t_start},
        "device": str(info.device), "world_size": info.world_size, "seed": cfg.run.seed,
        "code_version": _code_version(), "python": platform.python_version(), "torch": torch.__version__,
        "config": config_to_dict(cfg),
    }
    if is_main():
        atomic_write_json(out_dir / "results.json", results)
        log(f"top-1 {final['top1']:.2f} top-5 {final['top5']:.2f} after BN re-estimation on "
            f"{used * info.world_size} images; "
            f"{report.bops / 1e9:.3f} G BitOPs ({report.convention}), {report.size_mb():.3f} MB")
    barrier()
    return results


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("finetune.fc_rescale=true needs a model with a final nn.Linear classifier")
    return linears[-1]


def _code_version() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"mpq {core.__version__}" + (f" ({rev})" if rev else "")
