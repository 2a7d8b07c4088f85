"""Pieces the three BASQ stages share: the supernet, data, the teacher, stage identities, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.data import build_dataset_from_config, build_loader, dataset_info
from core.engine import Checkpointer, check_producer, config_identity, get_info
from core.errors import CheckpointError
from core.nn import quantize_model
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
    return config_identity(cfg, sections=STAGE_SECTIONS[stage])


def num_classes(cfg: BASQConfig) -> int:
    return cfg.model.num_classes or dataset_info(cfg.data.name).num_classes


def input_size(cfg: BASQConfig) -> tuple[int, int, int]:
    info = dataset_info(cfg.data.name)
    size = cfg.data.image_size or info.default_image_size
    return (info.in_channels, size, size)


def build_supernet(cfg: BASQConfig) -> tuple[nn.Module, list[str]]:
    """The student network with BASQ's quantizers (``cfg.quant``); returns it and its quantized layers."""
    model = build_network(cfg.model.name, num_classes(cfg), **cfg.model.kwargs)
    q = cfg.quant
    spec = basq_spec(q.bits, lambdas=q.lambdas, clip_layers=q.clip_layers, clip_init=q.clip_init,
                     clip_step=q.clip_step, lsq_grad_scale=q.lsq_grad_scale,
                     binary_weight_scale=q.binary_weight_scale)
    return model, quantize_model(model, spec)


def datasets(cfg: BASQConfig) -> tuple[Any, Any]:
    return build_dataset_from_config(cfg.data, "train"), build_dataset_from_config(cfg.data, "val")


def train_loader(cfg: BASQConfig, dataset: Any, batch_size: int | None) -> Any:
    """The global batch (``batch_size`` or ``data.batch_size``) split over the ranks."""
    per_rank = max(1, (batch_size or cfg.data.batch_size) // get_info().world_size)
    return build_loader(dataset, per_rank, train=True, workers=cfg.data.workers, seed=cfg.run.seed)


def val_loader(cfg: BASQConfig, dataset: Any) -> Any:
    per_rank = max(1, (cfg.data.val_batch_size or cfg.data.batch_size) // get_info().world_size)
    return build_loader(dataset, per_rank, train=False, workers=cfg.data.workers)


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
