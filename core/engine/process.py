"""What every paper's run does first, one way for all papers: process setup, the per-rank batch, the
model and the classification loaders from the shared config sections (:mod:`core.config`).

Seed policy (:func:`setup_process`): rank ``r`` seeds python, numpy and torch with ``run.seed + r``, so
ranks draw different augmentations and stochastic gates (as timm's recipes do). Whatever must agree
across ranks never depends on that global stream: DDP broadcasts rank 0's parameters and buffers when
it wraps the model; the distributed sampler shuffles with ``run.seed`` itself; a search that samples
policies per step seeds its own generator (e.g. from ``run.seed`` and the step). A one-process run
(rank 0) is seeded with ``run.seed``.

Global batch (:func:`per_rank_batch`): ``data.batch_size`` (and a stage's ``batch_size``) is the global
batch of one optimizer step; under DDP it must divide by the world size, else a ``ConfigError`` says
which sizes work (no silent rounding, which would change the recipe). Evaluation splits its batch as
evenly as it can: the metrics do not depend on the evaluation batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from core.config import DataConfig, ModelConfig, RunConfig
from core.engine.dist import DistInfo, get_info, init_distributed
from core.engine.seed import seed_everything
from core.errors import ConfigError

__all__ = ["setup_process", "per_rank_batch", "num_classes_for", "build_model_from_config", "input_size_of",
           "ClassificationData", "classification_data"]


def setup_process(run: RunConfig) -> DistInfo:
    """Join torchrun's process group (if any) on ``run.device``, seed with ``run.seed + rank`` (module
    docstring), and switch the quantizers to their compiled path when ``run.compile``."""
    from core.quant import set_compiled

    info = init_distributed(run.device, timeout_s=run.dist_timeout_s)
    seed_everything(run.seed + info.rank, run.deterministic)
    set_compiled(bool(run.compile))
    return info


def per_rank_batch(global_batch: int, world_size: int, key: str = "data.batch_size") -> int:
    """``global_batch / world_size``; a ``ConfigError`` when it does not divide (see the module docstring)."""
    if global_batch < 1:
        raise ConfigError(f"{key}={global_batch}: the batch size must be >= 1")
    if global_batch % world_size:
        near = sorted({max(world_size, global_batch // world_size * world_size),
                       -(-global_batch // world_size) * world_size})
        raise ConfigError(f"{key}={global_batch} is the global batch and does not divide by the "
                          f"{world_size} processes; use a multiple of {world_size} (e.g. "
                          f"{' or '.join(map(str, near))})")
    return global_batch // world_size


def num_classes_for(model: ModelConfig, dataset: str) -> int:
    """``model.num_classes``, or the dataset's number of classes when it is None."""
    from core.data import dataset_info

    return model.num_classes if model.num_classes is not None else dataset_info(dataset).num_classes


def build_model_from_config(model: ModelConfig, dataset: str, **kwargs: Any) -> nn.Module:
    """``core.models.build_model`` of ``model`` (``kwargs`` add to / override ``model.kwargs``)."""
    from core.models import build_model

    return build_model(model.name, num_classes=num_classes_for(model, dataset), pretrained=model.pretrained,
                       **{**model.kwargs, **kwargs})


def input_size_of(data: DataConfig) -> tuple[int, int, int]:
    """``(channels, size, size)`` of one input of ``data`` (``image_size=None``: the dataset's default)."""
    from core.data import dataset_info

    info = dataset_info(data.name)
    size = data.image_size or info.default_image_size
    return (info.in_channels, size, size)


@dataclass
class ClassificationData:
    train_set: Any
    val_set: Any
    train: Any  # loader with the per-rank batch, shuffled with the run's seed
    val: Any  # loader over this rank's shard of the validation split
    num_classes: int
    input_size: tuple[int, int, int]


def classification_data(data: DataConfig, seed: int, batch_size: int | None = None,
                        info: DistInfo | None = None, batch_key: str = "batch_size", per_device: bool = False,
                        max_steps: int = 0) -> ClassificationData:
    """Train / val datasets and loaders of ``data``. ``batch_size`` (a stage's own, named ``batch_key`` in
    errors; default ``data.batch_size``) is global and must divide by the world size, or with
    ``per_device`` each process's own (recipes whose batch sizes are per GPU, e.g. LLT's official code);
    the sampler shuffles with ``seed`` on every rank. ``max_steps > 0`` caps the train loader at that many
    batches per epoch (core.data.CappedLoader: CPU demo and benchmark schedules)."""
    from core.data import CappedLoader, build_dataset_from_config, build_loader, dataset_info

    world = (info or get_info()).world_size
    key = "data.batch_size" if batch_size is None else batch_key
    per_rank = per_rank_batch(batch_size or data.batch_size, 1 if per_device else world, key)
    val_batch = max(1, (data.val_batch_size or data.batch_size) // world)
    train_set = build_dataset_from_config(data, "train")
    val_set = build_dataset_from_config(data, "val", augment=False)
    train = build_loader(train_set, per_rank, train=True, workers=data.workers, seed=seed)
    if max_steps > 0:
        train = CappedLoader(train, max_steps)
    val = build_loader(val_set, val_batch, train=False, workers=data.workers)
    return ClassificationData(train_set, val_set, train, val, dataset_info(data.name).num_classes,
                              input_size_of(data))
