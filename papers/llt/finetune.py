"""Fine-tuning the searched policy (supplementary Sec. 1 and the official recipe).

LSQ weights and activations at the policy's bits; first conv W8 with its input unquantized, fc W8A8;
SGD lr 0.04, momentum 0.9, wd 2.5e-5, cosine with 5 warm-up epochs, label smoothing 0.1, 90 epochs;
BatchNorm statistics re-estimated on about 6000 training images before the final evaluation
(``core.engine.reestimate_bn_statistics``). Writes ``results.json`` (a :class:`core.results.RunResult`;
``extra``: searchable layers, float size, compression ratio, BN calibration images, epochs, python and
torch versions) into ``<run.out_dir>/finetune``, with ``final.pt`` (the evaluated weights) and
``export.json`` for ``mpq export`` (``core.export.spec``).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from core.bops import count
from core.engine import (
    DistInfo,
    RunDir,
    Trainer,
    barrier,
    build_model_from_config,
    build_optimizer,
    build_scheduler,
    classification_data,
    evaluate,
    is_main,
    load_checkpoint,
    log,
    num_classes_for,
    reestimate_bn_statistics,
    setup_process,
    trainer_kwargs,
)
from core.errors import CheckpointError, ConfigError, PolicyError
from core.export.spec import ExportSpec, save_weights, write_export_spec
from core.nn import QuantSpec, freeze_full_precision_quantizers, quantize_model
from core.policy import BitPolicy
from core.results import RunResult, run_result, write_results
from papers.llt.config import LLTConfig, stage_identity
from papers.llt.search import search_from_config


def finetune_spec(first_layer: str = "w8", last_layer: str = "w8a8", lsq_gradient: str = "paper"
                  ) -> QuantSpec:
    """LSQ weights and activations (``lsq_gradient``: the LSQ quantizer's ``gradient``); the first / last
    layer as configured."""
    return QuantSpec(kind="fixed", w_quant="lsq", a_quant="lsq",
                     w_options={"init": "limpq", "gradient": lsq_gradient},
                     a_options={"gradient": lsq_gradient}, first=first_layer, last=last_layer)


def build_finetune_model(model: nn.Module, policy: BitPolicy, first_layer: str = "w8",
                         last_layer: str = "w8a8", lsq_gradient: str = "paper") -> list[str]:
    """Quantize ``model`` in place with LSQ at the policy's bits; returns the searchable layer names."""
    names = quantize_model(model, finetune_spec(first_layer, last_layer, lsq_gradient))
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
def fold_fc_rescale(fc: nn.Linear, handle: Any) -> None:
    """Remove :func:`rescale_fc_weight`'s hook and fold its evaluation form into the bias (``b / c``), so
    that the plain layer computes what the hooked one computes in evaluation (what ``mpq export`` rebuilds
    from ``final.pt``)."""
    handle.remove()
    if fc.bias is not None:
        weight = fc.quantized_weight() if hasattr(fc, "quantized_weight") else fc.weight
        fc.bias.mul_(math.sqrt(fc.out_features) * weight.std())


@torch.no_grad()
def init_from_indicator_run(model: nn.Module, cfg: LLTConfig, policy: BitPolicy) -> Path:
    """Copy the stage-1 network into the (quantized, not yet trained) fine-tuning ``model``: conv/linear
    weights and biases, and for each switchable BN the BatchNorm of its layer's searched weight bits.
    LSQ steps are not copied (they are initialised from the data at the new bits)."""
    from core.engine import Checkpointer, check_producer
    from core.nn import SwitchableBatchNorm2d, apply_bits
    from papers.llt.onetime import build_indicator_model

    ckpt = Checkpointer(cfg.indicators_path.parent / "checkpoints").latest()
    if ckpt is None:
        raise CheckpointError(f"finetune.init=indicators: no checkpoint under {cfg.indicators_path.parent}; "
                              "run `mpq llt indicators` with this config first")
    check_producer(cfg.indicators_path.parent, stage_identity(cfg, "indicators"),
                   what="LLT indicator network", fix="Re-run `mpq llt indicators` with this config.")
    source = build_model_from_config(cfg.model, cfg.data.name)
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


def run_finetune(cfg: LLTConfig) -> RunResult:
    """Search (unless ``finetune.policy`` is given) and check that the policy fits the model; then, holding
    ``<run.out_dir>/finetune`` (resumed only by the same run: :func:`papers.llt.config.stage_identity`,
    the policy's bits included), write its ``policy.json``, fine-tune, re-estimate BN, evaluate, and write
    its ``results.json``; returns that record."""
    stage = cfg.finetune
    info = setup_process(cfg.run)
    t0 = time.perf_counter()
    policy = BitPolicy.load(stage.policy) if stage.policy else search_from_config(cfg)
    t_search = time.perf_counter() - t0
    model = build_model_from_config(cfg.model, cfg.data.name)
    names = build_finetune_model(model, policy, stage.first_layer, stage.last_layer,  # validates the policy
                                 cfg.lsq_gradient)
    identity = stage_identity(cfg, "finetune", policy)
    with RunDir(cfg.finetune_dir) as run:  # held until results.json and final.pt are written
        run.claim(identity, cfg.run.resume)  # lock + identity check; nothing written yet
        return _finetune(cfg, info, run, identity, policy, model, names, t_search)


def _finetune(cfg: LLTConfig, info: DistInfo, run: RunDir, identity: dict, policy: BitPolicy,
              model: nn.Module, names: list[str], t_search: float) -> RunResult:
    stage = cfg.finetune
    if stage.init == "indicators":
        log(f"fine-tuning starts from the indicator network {init_from_indicator_run(model, cfg, policy)}")
    fc_hook = rescale_fc_weight(_last_linear(model)) if stage.fc_rescale else None
    data = classification_data(cfg.data, cfg.run.seed, stage.batch_size, info, "finetune.batch_size",
                               per_device=stage.per_device_batch)
    train_loader, val_loader = data.train, data.val
    optimizer = build_optimizer(stage.optim, model)
    scheduler = build_scheduler(stage.schedule, optimizer, len(train_loader))
    out_dir = run.path
    run.start(cfg)  # validated: the run's records, then the policy it trains
    if is_main():
        policy.save(out_dir / "policy.json")
    kw = trainer_kwargs(cfg.run, stage.optim)
    kw["run_dir"] = run
    trainer = Trainer(model, optimizer, train_loader, val_loader, epochs=stage.schedule.epochs,
                      schedulers=scheduler, device=info.device, config=cfg, identity=identity, **kw)
    last = trainer.fit()
    t0 = time.perf_counter()
    used = reestimate_bn_statistics(trainer.model, train_loader, stage.bn_calibration_images, info.device)
    t_bn = time.perf_counter() - t0
    t0 = time.perf_counter()
    final = evaluate(trainer.model, val_loader, info.device, desc="final eval")
    t_eval = time.perf_counter() - t0
    report = count(trainer.module, data.input_size, convention=cfg.search.macs)
    metrics = {"top1": final["top1"], "top5": final["top5"], "loss": final["loss"]}
    if last.get("val_top1") is not None:
        metrics["top1_before_bn_reestimation"] = last["val_top1"]
    result = run_result(
        cfg, info, paper="llt", method="llt", report=report, policy=policy, metrics=metrics,
        wall_time_s=_wall_times(policy, t_search, trainer.wall_time_s, t_bn, t_eval),
        extra={"searchable_layers": len(names), "fp_size_mb": report.size_mb(32),
               "compression_ratio": report.compression_ratio,
               "bn_calibration_images": used * info.world_size, "epochs": stage.schedule.epochs,
               "python": platform.python_version(), "torch": torch.__version__})
    write_results(out_dir / "results.json", result)
    log(f"top-1 {final['top1']:.2f} top-5 {final['top5']:.2f} after BN re-estimation on "
        f"{used * info.world_size} images; "
        f"{report.bops / 1e9:.3f} G BitOPs ({report.convention}), {report.size_mb():.3f} MB")
    if is_main():
        # `mpq export RUN_DIR`: the evaluated weights (after BN re-estimation) and how to rebuild the model
        if fc_hook is not None:
            fold_fc_rescale(_last_linear(trainer.module), fc_hook)
        save_weights(out_dir / "final.pt", trainer.module)
        write_export_spec(out_dir, ExportSpec(
            model=cfg.model.name, input_size=data.input_size, checkpoint="final.pt",
            num_classes=num_classes_for(cfg.model, cfg.data.name), model_kwargs=dict(cfg.model.kwargs),
            quant=asdict(finetune_spec(stage.first_layer, stage.last_layer, cfg.lsq_gradient)),
            policy=policy.to_dict(),
            meta={"paper": "llt", "table_row": cfg.table_row}))
    barrier()
    return result


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("finetune.fc_rescale=true needs a model with a final nn.Linear classifier")
    return linears[-1]


def _wall_times(policy: BitPolicy, search: float, train: float, bn: float, evaluation: float
                ) -> dict[str, float]:
    """Seconds per stage: the indicator training (from its run's record, accumulated over its resumes,
    when the policy was searched from trained indicators), the ILP, the fine-tuning (accumulated over
    resumes), BN re-estimation and the final evaluation; ``total`` is their sum."""
    times = {}
    record = policy.meta.get("indicators_run")
    progress = record.get("progress") if isinstance(record, dict) else None
    if isinstance(progress, dict) and progress.get("wall_time_s") is not None:
        times["indicators"] = float(progress["wall_time_s"])
    times.update(search=search, train=train, bn_reestimation=bn, eval=evaluation)
    return {**times, "total": sum(times.values())}
