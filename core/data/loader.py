"""DataLoaders with per-epoch deterministic shuffling, DDP sharding and exact distributed evaluation."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from core.engine.dist import is_distributed
from core.errors import ConfigError

__all__ = ["build_loader", "CappedLoader", "EpochLoader", "ShardSampler"]


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r+w, ...`` in order, without padding: every sample is
    seen exactly once across ranks (exact distributed evaluation; shard sizes may differ by one)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return max(0, math.ceil((self.length - self.rank) / self.world_size))


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # DataLoader gives each worker base_seed + worker_id
    random.seed(seed)
    np.random.seed(seed)


class EpochLoader(DataLoader):
    """A DataLoader whose ``set_epoch(e)`` fixes the shuffle order and the workers' random seeds of
    epoch ``e`` (from ``seed``, ``e`` and the rank), so a resumed run sees the same data."""

    def __init__(self, *args, seed: int = 0, rank: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.rank = seed, rank

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed((self.seed * 1_000_003 + epoch * 7919 + self.rank) % 2**63)


def build_loader(dataset: Dataset, batch_size: int, train: bool, workers: int = 4,
                 distributed: bool | None = None, seed: int = 0, drop_last: bool | None = None,
                 pin_memory: bool | None = None) -> EpochLoader:
    """Train: shuffled (seeded, per-epoch via ``set_epoch``), ``drop_last`` by default. Val: in order.

    ``batch_size`` is per process. ``distributed=None`` means "if a process group is running": train
    then uses ``DistributedSampler`` (same permutation on every rank, each takes its share), val uses
    :class:`ShardSampler`. One process uses the same samplers with world size 1, so 1 process with
    batch B sees the same samples per step as N processes with batch B/N.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    distributed = is_distributed() if distributed is None else distributed
    if distributed:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if train:
        sampler: Sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                              drop_last=False)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    if drop_last is None:
        drop_last = train and len(sampler) >= batch_size
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    generator = torch.Generator()
    loader = EpochLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                         drop_last=drop_last, pin_memory=pin_memory, generator=generator,
                         worker_init_fn=_worker_init if workers > 0 else None,
                         persistent_workers=False, seed=seed, rank=rank)
    loader.set_epoch(0)
    return loader


class CappedLoader:
    """At most ``max_steps`` batches per epoch of ``loader`` (0: all); forwards ``set_epoch``. For CPU demo
    and benchmark schedules that train on a fixed number of steps per epoch."""

    def __init__(self, loader: Any, max_steps: int = 0):
        self.loader, self.max_steps = loader, int(max_steps)

    def __len__(self) -> int:
        n = len(self.loader)
        return min(n, self.max_steps) if self.max_steps > 0 else n

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(self.loader):
            if i >= len(self):
                break
            yield batch

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
