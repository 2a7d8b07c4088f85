"""Pieces the three BASQ stages share: the supernet, data, stage identities, the trained supernet."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.engine import (
    Checkpointer,
    check_producer,
    config_identity,
    get_info,
    input_size_of,
    num_classes_for,
    per_rank_batch,
)
from core.errors import CheckpointError
from core.export.spec import ExportSpec
from core.nn import QuantSpec, quantize_model
from core.policy import BitPolicy
from papers.basq.config import BASQConfig
from papers.basq.models import basq_spec, build_network

#: The config sections each stage's output depends on (its run identity).
STAGE_SECTIONS = {
    "teacher": ["teacher", "data", "run", "model.num_classes"],
    "stage1": ["model", "data", "run", "quant", "teacher", "supernet.stage1", "supernet.temperature",
               "supernet.zero_grad"],
    "stage2": ["model", "data", "run", "quant", "teacher", "supernet"],
    "search": ["model", "data", "run", "quant", "teacher", "supernet", "search"],
}


def stage_identity(cfg: BASQConfig, stage: str) -> dict:
    if stage == "finetune":  # everything; which folds a call fine-tunes does not change a fold's run
        return config_identity(cfg, exclude=["finetune.folds"])
    return config_identity(cfg, sections=STAGE_SECTIONS[stage])


def num_classes(cfg: BASQConfig) -> int:
    return num_classes_for(cfg.model, cfg.data.name)


def input_size(cfg: BASQConfig) -> tuple[int, int, int]:
    return input_size_of(cfg.data)


def student_spec(cfg: BASQConfig) -> QuantSpec:
    """The ``QuantSpec`` of BASQ's quantizers under ``cfg.quant``."""
    q = cfg.quant
    return basq_spec(q.bits, lambdas=q.lambdas, clip_layers=q.clip_layers, clip_init=q.clip_init,
                     clip_step=q.clip_step, lsq_grad_scale=q.lsq_grad_scale,
                     binary_weight_scale=q.binary_weight_scale)


def build_supernet(cfg: BASQConfig) -> tuple[nn.Module, list[str]]:
    """The student network with BASQ's quantizers (``cfg.quant``); returns it and its quantized layers."""
    model = build_network(cfg.model.name, num_classes(cfg), pretrained=cfg.model.pretrained,
                          **cfg.model.kwargs)
    return model, quantize_model(model, student_spec(cfg))


def export_spec(cfg: BASQConfig, names: list[str], checkpoint: str, meta: dict) -> ExportSpec:
    """How ``mpq export`` rebuilds a fine-tuned fold's network (``core.export.spec``): the student at
    ``quant.bits`` everywhere; the checkpoint holds the weights, the clips and each block's selection."""
    bits = cfg.quant.bits
    return ExportSpec(model=cfg.model.name, num_classes=num_classes(cfg), input_size=input_size(cfg),
                      checkpoint=checkpoint, quant=asdict(student_spec(cfg)),
                      policy=BitPolicy.uniform(names, bits, bits).to_dict(),
                      model_kwargs={"name": cfg.model.name, **cfg.model.kwargs},
                      model_factory="papers.basq.models:build_network", meta=meta)


def train_loader(cfg: BASQConfig, dataset: Any, batch_size: int | None, key: str) -> Any:
    """The stage's global batch (``batch_size``, named ``key`` in errors, or ``data.batch_size``) split
    over the ranks; shuffled with ``run.seed``."""
    from core.data import build_loader

    world = get_info().world_size
    per_rank = per_rank_batch(batch_size or cfg.data.batch_size, world,
                              key if batch_size else "data.batch_size")
    return build_loader(dataset, per_rank, train=True, workers=cfg.data.workers, seed=cfg.run.seed)


def stage_model_state(cfg: BASQConfig, stage: str, run_dir: Path, fix: str) -> dict:
    """The model state of the newest intact checkpoint of a finished stage's ``run_dir``, after checking
    that the run there belongs to this config (``check_producer``)."""
    check_producer(run_dir, stage_identity(cfg, stage), what=f"{stage} run", fix=fix)
    found = Checkpointer(run_dir / "checkpoints").load_latest()
    if found is None:
        raise CheckpointError(f"no {stage} checkpoint under {run_dir}; {fix}")
    return found[1]["model"]


def load_supernet(cfg: BASQConfig, device: torch.device | str) -> nn.Module:
    """The trained supernet (stage 2's last checkpoint), weights quantized, on ``device``."""
    model, _ = build_supernet(cfg)
    model.load_state_dict(stage_model_state(cfg, "stage2", cfg.out / "supernet" / "stage2",
                                            "run `mpq basq supernet` with this config first"))
    return model.to(device)
