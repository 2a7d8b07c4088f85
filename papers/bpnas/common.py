"""What every BP-NAS stage shares: run paths, process setup and data loaders (core's, with a per-epoch
step cap for smoke runs)."""

from __future__ import annotations

from pathlib import Path

from core.engine import DistInfo, num_classes_for, setup_process
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


def num_classes_of(cfg: BpnasConfig) -> int:
    """``model.num_classes``, or the dataset's when it is None."""
    return num_classes_for(cfg.model, cfg.data.name)
