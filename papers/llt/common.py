"""Pieces shared by LLT's two training stages (indicator training and fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from core.config import DataConfig
from core.data import build_dataset_from_config, build_loader, dataset_info
from core.engine import get_info
from core.models import build_model


@dataclass
class ModelConfig:
    """``name`` for ``core.models.build_model``; ``pretrained`` a local weights file (LLT starts both
    stages from a pre-trained float model); ``num_classes=None`` takes the dataset's."""

    name: str = "digits_resnet"
    num_classes: int | None = None
    pretrained: str | None = None


def build_float_model(model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    num_classes = model_cfg.num_classes or dataset_info(data_cfg.name).num_classes
    return build_model(model_cfg.name, num_classes=num_classes, pretrained=model_cfg.pretrained)


def input_size(data_cfg: DataConfig) -> tuple[int, int, int]:
    info = dataset_info(data_cfg.name)
    size = data_cfg.image_size or info.default_image_size
    return (info.in_channels, size, size)


def build_loaders(data_cfg: DataConfig, seed: int, batch_size: int | None = None, per_device: bool = False
                  ) -> tuple[Any, Any, Any, Any]:
    """``(train_set, val_set, train_loader, val_loader)``; the training batch size (``batch_size`` or
    ``data.batch_size``) is global, split across ranks, or with ``per_device`` each rank's (the official
    code's: its batch sizes are per GPU). The validation batch is global."""
    world = get_info().world_size
    batch = batch_size or data_cfg.batch_size
    per_rank = batch if per_device else max(1, batch // world)
    val_bs = max(1, (data_cfg.val_batch_size or data_cfg.batch_size) // world)
    train_set = build_dataset_from_config(data_cfg, "train")
    val_set = build_dataset_from_config(data_cfg, "val")
    train_loader = build_loader(train_set, per_rank, train=True, workers=data_cfg.workers, seed=seed)
    val_loader = build_loader(val_set, val_bs, train=False, workers=data_cfg.workers)
    return train_set, val_set, train_loader, val_loader
