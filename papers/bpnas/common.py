"""What every BP-NAS stage shares: run paths, process setup, data loaders, device names."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import DataConfig
from core.data import build_dataset_from_config, build_loader, dataset_info
from core.engine import DistInfo, init_distributed, seed_everything
from core.errors import ConfigError
from core.quant import set_compiled
from papers.bpnas.config import BpnasConfig

SEARCH_DIR, TRAIN_DIR, FIGURES_DIR = "search", "train", "figures"
POLICY_FILE, RESULTS_FILE, ARCH_STATE_FILE = "policy.json", "results.json", "arch_state.json"


def run_paths(cfg: BpnasConfig) -> tuple[Path, Path, Path]:
    """(run root, search dir, train dir) of a config."""
    root = Path(cfg.run.out_dir)
    return root, root / SEARCH_DIR, root / TRAIN_DIR


def setup(cfg: BpnasConfig) -> DistInfo:
    """Join torchrun's process group (if any), seed (per rank), pick the quantizers' eager/compiled path."""
    info = init_distributed(cfg.run.device, cfg.run.dist_timeout_s)
    seed_everything(cfg.run.seed + info.rank, cfg.run.deterministic)
    set_compiled(bool(cfg.run.compile))
    return info


class CappedLoader:
    """At most ``max_steps`` batches per epoch of ``loader`` (0: all); forwards ``set_epoch``."""

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


@dataclass
class Data:
    train: Any
    val: Any
    num_classes: int
    input_size: tuple[int, int, int]


def build_data(data: DataConfig, info: DistInfo, seed: int = 0, max_steps: int = 0) -> Data:
    """Train / val loaders with the per-process batch (``data.batch_size`` is the global batch)."""
    meta = dataset_info(data.name)
    size = data.image_size or meta.default_image_size
    if data.batch_size % info.world_size:
        raise ConfigError(f"data.batch_size={data.batch_size} is not divisible by the {info.world_size} "
                          "processes; it is the global batch size")
    per_rank = data.batch_size // info.world_size
    train = build_loader(build_dataset_from_config(data, "train"), per_rank, train=True, workers=data.workers,
                         seed=seed)
    val = build_loader(build_dataset_from_config(data, "val", augment=False),
                       max(1, (data.val_batch_size or data.batch_size) // info.world_size), train=False,
                       workers=data.workers)
    return Data(CappedLoader(train, max_steps), val, meta.num_classes, (meta.in_channels, size, size))


def num_classes_of(cfg: BpnasConfig, data: Data) -> int:
    return cfg.model.num_classes or data.num_classes


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)
