"""One-time training for importance derivation (supplementary Sec. 2, Algorithm 1).

Every searchable layer's weight and input quantizers are LSQ with one learnable step per candidate
bit-width, and the BatchNorm after each searchable conv is switchable (one per bit). Each training step
(:meth:`ImportanceTrainer.train_step`) runs the ``n`` key policies (every layer at the same bit ``b``),
then ``K`` uniformly sampled per-layer policies, accumulating all gradients, and takes one optimizer
step. The learned steps are the importance indicators (``indicators.py``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

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
    log,
    move_to,
    setup_process,
    trainer_kwargs,
)
from core.engine.trainer import accuracy
from core.errors import ConfigError
from core.nn import QuantSpec, apply_bits, bit_context, quantize_model, set_bits
from papers.llt.config import LLTConfig, stage_identity
from papers.llt.indicators import extract_indicators


def build_indicator_model(model: nn.Module, bits: list[int], lsq_gradient: str = "paper") -> list[str]:
    """Make ``model`` switchable in place (LSQ with per-bit steps, switchable BN); returns the searchable
    layer names. First conv and fc stay float, as in the official indicator training."""
    spec = QuantSpec(kind="switchable", w_quant="lsq", a_quant="lsq", w_bits=bits[0], a_bits=bits[0],
                     w_candidates=list(bits), a_candidates=list(bits),
                     w_options={"init": "limpq", "gradient": lsq_gradient},
                     a_options={"gradient": lsq_gradient}, options={"switchable_bn": True},
                     first="float", last="float")
    return quantize_model(model, spec)


class ImportanceTrainer(Trainer):
    """:class:`core.engine.Trainer` whose step is Algorithm 1 (one optimizer step per n + K passes)."""

    def __init__(self, *args: Any, bits: list[int], layer_names: list[str], random_policies: int = 1,
                 random_policy: str = "joint", drop_zero_grads: bool = True, seed: int = 0,
                 eval_bits: list[int] | None = None, bit_val_loader: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("find_unused_parameters", True)  # each pass uses one step / BN per layer
        super().__init__(*args, **kwargs)
        self.bit_val_loader = bit_val_loader  # evaluated per key policy (Trainer's own val_loader: None)
        if random_policy not in ("joint", "independent"):
            raise ConfigError(f"random_policy must be 'joint' or 'independent', got {random_policy!r}")
        if random_policies < 0:
            raise ConfigError(f"random_policies (K) must be >= 0, got {random_policies}")
        self.bits, self.layer_names = list(bits), list(layer_names)
        self.random_policies, self.random_policy = int(random_policies), random_policy
        self.drop_zero_grads, self.seed = drop_zero_grads, int(seed)
        self.eval_bits = (list(eval_bits) if eval_bits is not None
                          else sorted({max(bits), min(bits)}, reverse=True))

    def sample_policy(self, k: int = 0) -> dict[str, tuple[int, int]]:
        """Alg. 1 line 14: a bit-width drawn uniformly and independently for each layer (``joint``: one
        for its weights and activations, as the official code does; ``independent``: one each). Seeded
        by (seed, step, k), so a resumed run draws the same policies."""
        rng = random.Random((self.seed * 1_000_003 + self.step) * 31 + k)
        if self.random_policy == "joint":
            return {n: (b, b) for n in self.layer_names for b in [rng.choice(self.bits)]}
        return {n: (rng.choice(self.bits), rng.choice(self.bits)) for n in self.layer_names}

    def train_step(self, batch: Any) -> dict[str, Any]:
        images, targets = move_to(batch, self.device)[:2]
        self.zero_grad()  # line 4
        scalars: dict[str, torch.Tensor] = {}
        for b in self.bits:  # lines 6-13: the n key policies
            set_bits(self.module, b, b)
            loss, top1 = self._forward_backward(images, targets)
            scalars[f"loss_b{b}"], scalars[f"top1_b{b}"] = loss, top1
        for k in range(self.random_policies):  # lines 14-18: K uniformly sampled policies
            apply_bits(self.module, self.sample_policy(k))
            loss, top1 = self._forward_backward(images, targets)
            scalars[f"loss_rand{k}" if self.random_policies > 1 else "loss_rand"] = loss
        self.clip_gradients()  # official: gradient value clip 1
        if self.drop_zero_grads:  # one device sync for all parameters
            params = self.parameters_to_clip()
            nonzero = torch.stack([p.grad.ne(0).any() for p in params]).tolist() if params else []
            for p, keep in zip(params, nonzero):
                if not keep:
                    p.grad = None
        self.step_optimizers()  # lines 19-20: one update with the aggregated gradient
        scalars["loss"] = scalars[f"loss_b{self.bits[0]}"]
        return scalars

    def _forward_backward(self, images: torch.Tensor, targets: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        loss = self.criterion(logits, targets)
        loss.backward()  # gradients accumulate over the n + K passes
        return loss.detach(), accuracy(logits.detach(), targets)

    def on_epoch_end(self, epoch: int, record: dict) -> dict | None:
        if self.bit_val_loader is None:
            return None
        out = {}
        for b in self.eval_bits:
            with bit_context(self.module, b, b):
                res = evaluate(self.model, self.bit_val_loader, self.device, desc=f"val W{b}A{b}")
            out[f"val_top1_b{b}"] = res["top1"]
        return out


def run_indicators(cfg: LLTConfig) -> Path:
    """Train the indicators (resumable with ``run.resume=auto`` by the same run: the config without
    ``search`` and ``finetune``; runnable under torchrun) and write
    ``<run.out_dir>/indicators/indicators.json`` while holding that run directory; returns its path."""
    bad = [b for b in cfg.bits if not 2 <= b <= 8]
    if bad or len(set(cfg.bits)) != len(cfg.bits):
        raise ConfigError(f"bits must be distinct values in 2..8, got {cfg.bits}")
    if cfg.indicators.file:
        raise ConfigError(f"indicators.file={cfg.indicators.file} is set: this config uses existing "
                          "indicators; unset it (indicators.file=null) to train them")
    info = setup_process(cfg.run)
    identity = stage_identity(cfg, "indicators")
    with RunDir(cfg.indicators_path.parent) as run:  # held until indicators.json is written
        run.claim(identity, cfg.run.resume)  # lock + identity check; nothing written yet
        return _train_indicators(cfg, info, run, identity)


def _train_indicators(cfg: LLTConfig, info: DistInfo, run: RunDir, identity: dict) -> Path:
    stage = cfg.indicators
    model = build_model_from_config(cfg.model, cfg.data.name)
    names = build_indicator_model(model, cfg.bits, cfg.lsq_gradient)
    data = classification_data(cfg.data, cfg.run.seed, stage.batch_size, info, "indicators.batch_size",
                               per_device=stage.per_device_batch)
    train_loader, val_loader = data.train, data.val
    optimizer = build_optimizer(stage.optim, model)
    scheduler = build_scheduler(stage.schedule, optimizer, len(train_loader))
    kw = trainer_kwargs(cfg.run, stage.optim)
    kw["run_dir"] = run
    trainer = ImportanceTrainer(
        model, optimizer, train_loader, None, epochs=stage.schedule.epochs, schedulers=scheduler,
        device=info.device, config=cfg, identity=identity, bits=cfg.bits, layer_names=names,
        random_policies=stage.random_policies, random_policy=stage.random_policy,
        drop_zero_grads=stage.drop_zero_grads, seed=cfg.run.seed, eval_bits=stage.eval_bits,
        bit_val_loader=val_loader if stage.eval_bits != [] else None, **kw)
    trainer.fit()
    meta = {"source": f"mpq llt indicators ({cfg.model.name}, {cfg.data.name}, "
                      f"{stage.schedule.epochs} epochs)",
            "model": cfg.model.name, "dataset": cfg.data.name, "epochs": stage.schedule.epochs,
            "random_policy": stage.random_policy, "random_policies": stage.random_policies}
    indicators = extract_indicators(trainer.module, cfg.bits, names, meta=meta)
    path = cfg.indicators_path
    if is_main():
        indicators.save(path)
        log(f"indicators of {len(names)} layers x {len(cfg.bits)} bits written to {path}")
    barrier()
    return path
