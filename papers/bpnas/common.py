"""What every BP-NAS stage shares: run paths, process setup and data loaders (core's, with a per-epoch
step cap for smoke runs)."""

from __future__ import annotations

from pathlib import Path

from core.config import DataConfig
from core.data import CappedLoader
from core.engine import ClassificationData, DistInfo, classification_data, num_classes_for, setup_process
from papers.bpnas.config import BpnasConfig

SEARCH_DIR, TRAIN_DIR, FIGURES_DIR = "search", "train", "figures"
POLICY_FILE, RESULTS_FILE, ARCH_STATE_FILE = "policy.json", "results.json", "arch_state.json"


def run_paths(cfg: BpnasConfig) -> tuple[Path, Path, Path]:
    """(run root, search dir, train dir) of a config."""
    root = Path(cfg.run.out_dir)
    return root, root / SEARCH_DIR, root / TRAIN_DIR


def setup(cfg: BpnasConfig) -> DistInfo:
    """core.engine.setup_process: process group, seed (run.seed + rank), compiled path."""
    return setup_process(cfg.run)


def build_data(data: DataConfig, info: DistInfo, seed: int = 0, max_steps: int = 0) -> ClassificationData:
    """Train / val loaders of ``data`` (``data.batch_size`` is global: core.engine.classification_data), the
    train loader capped at ``max_steps`` batches per epoch (0: all)."""
    d = classification_data(data, seed, info=info)
    d.train = CappedLoader(d.train, max_steps)
    return d


def num_classes_of(cfg: BpnasConfig) -> int:
    """``model.num_classes``, or the dataset's when it is None."""
    return num_classes_for(cfg.model, cfg.data.name)
